"""The fuzz corpus of the request decoder, replayed: each input ends in a typed outcome."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.property.request_decoder import CORPUS, Decoder, check

pytestmark = pytest.mark.verifies("SR-ING-001", "SR-ING-003")

INPUTS = sorted(p for p in CORPUS.iterdir() if p.is_file())


@pytest.fixture(scope="module")
def decoder() -> Iterator[Decoder]:
    """The ingest's decode path, built once for the corpus."""
    built = Decoder()
    yield built
    built.close()


def test_the_corpus_is_there() -> None:
    """The corpus holds the seeds and what fuzzing found (it is never silently empty)."""
    assert len(INPUTS) >= 20


@pytest.mark.parametrize("path", INPUTS, ids=[p.name[:16] for p in INPUTS])
def test_every_corpus_input_ends_typed(decoder: Decoder, path: Path) -> None:
    """A corpus input decodes to a request or to a refusal with its codes, nothing else."""
    check(decoder, path.read_bytes())
