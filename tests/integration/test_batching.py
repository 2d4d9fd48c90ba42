"""Dynamic batching and adaptive lanes, counted from the stage stamps of real results."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.errors import Unavailable
from vigil.launch import Launcher, load
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.worker import LoneRequest
from vigil.schemas import InferResult
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import classifier_workers, signed_pair
from vigil.testing.pipeline import classifier_serving

FRAME = np.full((32, 32, 3), 90, dtype=np.uint8)
# Long enough that a batch never leaves for want of company while its burst is sent.
DELAY_US = 3_000_000


def _results(client: Client, count: int, first_ts: int) -> list[InferResult]:
    for i in range(count):
        client.submit(FRAME, stream_id=f"s{i}", frame_ts_us=first_ts, deadline_s=60)
    results = []
    while len(results) < count:
        reply = client.poll(60_000)
        assert reply is not None
        _, outcome = reply
        assert isinstance(outcome, InferResult), outcome
        results.append(outcome)
    return results


def _until_serving(client: Client) -> None:
    """Send pairs until both are served: until then the ingest may not know the model yet
    (refused at once, UNAVAILABLE). A pair, never a lone request, so the worker's choice for
    a lone request is left untouched."""
    for ts in range(1, 1000):
        seqs = [
            client.submit(FRAME, stream_id=f"w{i}", frame_ts_us=ts, deadline_s=60) for i in range(2)
        ]
        outcomes = []
        while len(outcomes) < len(seqs):
            reply = client.poll(60_000)
            assert reply is not None
            outcomes.append(reply[1])
        if all(isinstance(o, InferResult) for o in outcomes):
            return
        assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
    raise AssertionError("the pipeline never served")


def test_batches_form_under_load_and_a_lone_request_runs_wide(short_tmp: Path) -> None:
    """A burst of max_batch requests leaves as parallel batches larger than one on the narrow
    lanes; a lone request waits max_queue_delay for company, then runs on every thread.

    The worker is told to run a lone request wide: left to choose (`auto`), it would not
    while other processes keep the host's cores busy, as they may while tests run.
    """
    root, trusted, _ = signed_pair(short_tmp)
    serving = classifier_serving(root, trusted, workers=1)[:2]
    workers = classifier_workers(
        1,
        threads=2,
        lone_request=LoneRequest.WIDE,
        max_batch=4,
        max_queue_delay_us=DELAY_US,
    )
    launch = launch_file(
        "batching", *serving, workers, node("ingest", IngestConfig(default_deadline_ms=60_000))
    )
    run = RunDir(short_tmp / "run")
    with Launcher(load(write(launch, short_tmp), run.path), run) as launcher:
        launcher.start()
        with Client(run.ipc("ingest")) as client:
            _until_serving(client)
            burst = _results(client, 4, first_ts=1)
            lone = _results(client, 1, first_ts=2)

    # Each batch's requests all say how many they were: the stamps count the batch.
    members = Counter(r.batch_id for r in burst)
    assert all(members[r.batch_id] == r.batch_size for r in burst)
    assert sorted(members.values()) == [2, 2]  # four requests, two lanes side by side
    assert {r.threads for r in burst} == {1}  # each lane on its share of the cores

    (alone,) = lone
    assert (alone.batch_size, alone.threads) == (1, 2)  # the whole budget for one request
    assert alone.queue_us >= DELAY_US  # it waited for company, and left without it
