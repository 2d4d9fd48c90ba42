"""The loader node's loop: verify models, announce them, drive the switch across workers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec

from vigil.bus.deadline import Deadline
from vigil.bus.pubsub import Received
from vigil.models.keys import KeyFileError, TrustedKeys, load_trusted_keys
from vigil.models.repository import (
    RepositoryConfig,
    RepositoryError,
    VerifiedModel,
    model_file_path,
    resolve_version,
)
from vigil.models.repository import load_active as load_active_version
from vigil.models.signing import ModelRefused
from vigil.nodes._runtime import Node
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.loader._contract import KIND, LoaderConfig, PinnedModel
from vigil.nodes.loader._switch import Rollout, RolloutOutcome, Switch, SwitchOutcome
from vigil.nodes.loader._watch import RepositoryWatch
from vigil.schemas import (
    AuditId,
    DiagCode,
    Heartbeat,
    ModelAction,
    ModelAnnouncement,
    ModelCommand,
    ModelEvent,
    ModelStep,
    Severity,
    Topic,
)

__all__ = ["run"]

_AUDIT = {
    ModelStep.SEEN: AuditId.MODEL_SEEN,
    ModelStep.VERIFIED: AuditId.MODEL_VERIFIED,
    ModelStep.REFUSED: AuditId.MODEL_REFUSED,
    ModelStep.LOADING: AuditId.MODEL_LOADING,
    ModelStep.READY: AuditId.MODEL_READY,
    ModelStep.SWITCHED: AuditId.MODEL_SWITCHED,
    ModelStep.COMMITTED: AuditId.MODEL_COMMITTED,
    ModelStep.ROLLED_BACK: AuditId.MODEL_ROLLED_BACK,
}


class _Loader:
    def __init__(self, node: Node, config: LoaderConfig) -> None:
        self.node = node
        self.config = config
        # The latched topic first: the proxy sends its kept value when that subscription
        # arrives, so it comes before anything the later subscriptions let through.
        self.sub = node.subscriber(
            [Topic.MODEL_ACTIVE, Topic.MODEL_EVENT],
            skip_replayed=not config.accept_replay,
        )
        # Every node beats several times a second and only the workers' beats matter here:
        # they are read on the loop's own turns (a tick while a switch or rollout runs), so
        # they cost no wake-up of their own.
        self.beats = node.subscriber(
            [Topic.HEARTBEAT], wake=False, skip_replayed=not config.accept_replay
        )
        self.serving: ModelAnnouncement | None = None
        self.serving_dir = ""
        self.generation = 0
        self.switch: Switch | None = None
        self.rollout: Rollout | None = None
        self.last_switch = ""
        self.workers: dict[str, int] = {}
        self.worker_pids: dict[str, int] = {}
        self.dirty_at: int | None = node.clock()
        self.refused_key: tuple[str, str] | None = None
        self.trusted: TrustedKeys | None = None
        self.repo: RepositoryConfig | None = None
        self.switches = 0
        self.pending_dir = ""
        if config.repository is not None:
            root = str(_launch_path(node, config.repository.root))
            keys = str(_launch_path(node, config.repository.trusted_keys))
            self.repo = msgspec.structs.replace(config.repository, root=root, trusted_keys=keys)

    # -- events ----------------------------------------------------------------------------

    def event(self, step: ModelStep, name: str, version: str, detail: str = "") -> None:
        self.node.publisher.publish(
            Topic.MODEL_EVENT,
            ModelEvent(
                step=step,
                name=name,
                version=version,
                node=self.node.args.label,
                detail=detail[:512],
                generation=self.generation,
            ),
        )
        audit = _AUDIT.get(step)
        if audit is not None:
            self.node.audit(audit, f"{name} {version} gen {self.generation}: {detail}"[:1024])

    def refuse(self, name: str, version: str, why: str) -> None:
        self.event(ModelStep.REFUSED, name, version, why)
        self.node.diag(
            DiagCode.MODEL_INTEGRITY,
            f"{name} {version} refused: {why}; serving version unchanged",
            severity=Severity.CRITICAL,
        )

    # -- start-up: resume from the latched model ---------------------------------------------

    # implements: SR-STA-001
    def resume(self) -> None:
        """Take over the committed model and its generation (a restarted loader must neither
        count generations from 1 again nor switch the workers to what they already serve).

        The proxy keeps the last committed `ModelAnnouncement` (on disk too, so it outlives
        a proxy restart) and sends it to this new subscriber at once; workers' heartbeats
        name the generation they serve, which also only ever moves the count forward. The
        wait ends with the first message of any other topic: the latched one, if any, comes
        before it. On a fresh bus (`NodeArgs.fresh_bus`: the first loader of a new launch)
        nothing can be latched yet, and there is no wait.
        """
        if self.node.args.fresh_bus:
            return
        deadline = self.node.clock() + self.config.resume_wait_ms * 1_000_000
        while not self.node.stopping and self.serving is None:
            left_ms = (deadline - self.node.clock()) / 1e6
            if left_ms <= 0:
                break
            received = self.sub.recv(int(left_ms) + 1)
            if received is None:
                continue
            self._on_message(received, self.node.clock())
            if received.topic != Topic.MODEL_ACTIVE:
                break
        if self.serving is not None:
            self.node.record(
                "info",
                "loader.resumed",
                model=self.serving.name,
                version=self.serving.version,
                generation=self.generation,
            )

    def _adopt(self, model: ModelAnnouncement) -> None:
        """The committed model as the proxy kept it: serving it, at its generation."""
        if self.serving is not None or not self._ours(model):
            return
        self.serving = model
        self.generation = max(self.generation, model.generation)
        path = Path(model.path)
        self.serving_dir = str(path if self.config.pinned is not None else path.parent)
        self.node.heartbeat_detail = {
            "model": model.name,
            "version": model.version,
            "generation": str(model.generation),
        }

    def _ours(self, model: ModelAnnouncement) -> bool:
        """Whether a latched model is the one this loader serves (a run directory used again
        by another launch file may hold another)."""
        pinned = self.config.pinned
        if pinned is not None:
            return (model.name, model.sha256) == (pinned.name, pinned.sha256)
        return self.repo is not None and model.name == self.repo.model

    # -- the bus ---------------------------------------------------------------------------

    def on_bus(self) -> None:
        now = self.node.clock()
        for sub in (self.beats, self.sub):
            while (received := sub.recv(0)) is not None:
                self._on_message(received, now)

    def _on_message(self, received: Received, now: int) -> None:
        body = received.body
        if isinstance(body, ModelAnnouncement):
            self._adopt(body)
            return
        if isinstance(body, Heartbeat) and body.kind == "worker":
            served = body.detail.get("generation", "")
            if served.isdigit():  # the count only moves forward, whoever restarted
                self.generation = max(self.generation, int(served))
            if body.detail.get("lifecycle") == "stopping":
                self.workers.pop(body.node, None)
                if self.switch is not None:
                    self.switch.on_worker_gone(body.node)
                if self.rollout is not None:
                    self.rollout.on_worker_gone(body.node)
            else:
                self.workers[body.node] = now
                self.worker_pids[body.node] = body.pid
                if self.rollout is not None:
                    self.rollout.on_heartbeat(body.node, body.pid)
        elif isinstance(body, ModelEvent) and body.node != self.node.args.label:
            self._on_worker_event(body)

    def _on_worker_event(self, body: ModelEvent) -> None:
        switch, rollout = self.switch, self.rollout
        if switch is not None and body.generation == switch.generation:
            if body.step is ModelStep.READY:
                switch.on_ready(body.node)
            elif body.step is ModelStep.DEFERRED:
                switch.on_deferred(body.node)
            elif body.step is ModelStep.REFUSED:
                switch.on_refused(body.node, body.detail)
        elif rollout is not None:
            if body.step is ModelStep.SWITCHED:
                rollout.on_switched(body.node, body.generation)
                self.event(
                    ModelStep.SWITCHED, body.name, body.version, f"{body.node}: {body.detail}"
                )
            elif body.step is ModelStep.REFUSED:
                rollout.on_refused(body.node, body.generation, body.detail)

    def alive_workers(self, now: int) -> set[str]:
        horizon = self.config.worker_timeout_ms * 1_000_000
        return {w for w, seen in self.workers.items() if now - seen <= horizon}

    # -- verification ----------------------------------------------------------------------

    def check(self) -> None:
        """Re-resolve the active version; verify and switch to it when it changed."""
        self.dirty_at = None
        if self.config.pinned is not None:
            if self.serving is None:
                self._check_pinned(self.config.pinned)
            return
        repo = self.repo
        assert repo is not None
        try:
            if self.trusted is None:
                self.trusted = load_trusted_keys(repo.trusted_keys)
            directory = str(resolve_version(repo.root, repo.model, repo.version))
        except (ModelRefused, RepositoryError, KeyFileError) as exc:
            self.refuse(repo.model, repo.version or "latest", str(exc))
            return
        try:
            stamp = str(Path(directory, "model.sig").stat().st_mtime_ns)
        except OSError:
            stamp = "unsigned"
        if directory == self.serving_dir and self.refused_key is None:
            return
        if (directory, stamp) == self.refused_key:
            return  # refused already; wait for the folder to change
        version = Path(directory).name
        self.event(ModelStep.SEEN, repo.model, version, directory)
        try:
            model = load_active_version(repo.root, repo.model, self.trusted, repo.version)
        except (ModelRefused, RepositoryError) as exc:
            self.refused_key = (directory, stamp)
            self.refuse(repo.model, version, str(exc))
            return
        self.refused_key = None
        if model.directory == self.serving_dir:
            return
        self.event(ModelStep.VERIFIED, model.name, model.version, f"signer {model.signer}")
        self.begin(_announcement(model), model.directory)

    def _check_pinned(self, pinned: PinnedModel) -> None:
        try:
            path = _model_path(self.node, pinned.path)
            self.event(ModelStep.SEEN, pinned.name, pinned.version, path.name)
            data = path.read_bytes()
        except OSError as exc:
            self.refuse(pinned.name, pinned.version, f"unreadable: {exc.strerror or exc}")
            return
        digest = hashlib.sha256(data).hexdigest()
        if digest != pinned.sha256:
            self.refuse(pinned.name, pinned.version, f"sha256 {digest} != pinned {pinned.sha256}")
            return
        self.event(ModelStep.VERIFIED, pinned.name, pinned.version, f"sha256 {digest}")
        model = ModelAnnouncement(
            name=pinned.name,
            version=pinned.version,
            path=str(path.resolve()),
            sha256=digest,
            size=len(data),
        )
        self.begin(model, str(path.resolve()))

    # -- switching -------------------------------------------------------------------------

    def begin(self, model: ModelAnnouncement, directory: str) -> None:
        """Switch to a verified version: at once when no worker serves, else two-phase."""
        now = self.node.clock()
        self.generation += 1
        model = msgspec.structs.replace(model, generation=self.generation)
        expected = self.alive_workers(now)
        if self.serving is None or not expected:
            self.commit(model, directory)
            return
        self.switch = Switch(
            generation=self.generation,
            model=model,
            expected=expected,
            deadline=Deadline.after(self.config.switch_timeout_ms * 1_000_000, now),
            started_ns=now,
        )
        self.pending_dir = directory
        self.event(ModelStep.LOADING, model.name, model.version, f"prepare on {len(expected)}")
        self.node.publisher.publish(
            Topic.MODEL_COMMAND,
            ModelCommand(action=ModelAction.PREPARE, generation=self.generation, model=model),
        )

    # implements: SR-MDL-003
    def advance(self) -> None:
        """Commit, roll out or roll back the switch in progress as its outcome is known."""
        if self.rollout is not None:
            self._roll()
            return
        switch = self.switch
        if switch is None:
            return
        now = self.node.clock()
        outcome = switch.outcome(now)
        if outcome is SwitchOutcome.PENDING:
            return
        self.switch = None
        if outcome is SwitchOutcome.COMMIT:
            self.event(
                ModelStep.READY,
                switch.model.name,
                switch.model.version,
                f"prepared beside the serving version on {len(switch.ready)} workers",
            )
            self.commit(switch.model, self.pending_dir)
            return
        if outcome is SwitchOutcome.ROLL and self.serving is not None:
            self.rollout = Rollout(
                generation=switch.generation,
                model=switch.model,
                previous=self.serving,
                order=sorted(switch.expected),
                pids={w: self.worker_pids.get(w, 0) for w in switch.expected},
                step_timeout_ns=self.config.switch_timeout_ms * 1_000_000,
            )
            self.event(
                ModelStep.LOADING,
                switch.model.name,
                switch.model.version,
                f"rolling out one worker at a time: {', '.join(sorted(switch.deferred))} "
                "cannot hold two versions within the memory budget",
            )
            self._roll()
            return
        self._abort(switch.generation, switch.model, switch.why_aborted())

    def _roll(self) -> None:
        """Command the next step of the rollout, or end it."""
        rollout = self.rollout
        assert rollout is not None
        now = self.node.clock()
        outcome = rollout.outcome(now)
        if outcome is RolloutOutcome.DONE:
            self.rollout = None
            self.commit(rollout.model, self.pending_dir, how="rolled out one worker at a time")
            return
        if outcome is RolloutOutcome.ROLLED_BACK:
            self.rollout = None
            self.generation = max(self.generation, rollout.back_generation)
            self._abort(rollout.generation, rollout.model, rollout.why)
            return
        step = rollout.next_step(now)
        if step is not None:
            worker, target, generation = step
            self.node.publisher.publish(
                Topic.MODEL_COMMAND,
                ModelCommand(
                    action=ModelAction.SWITCH, generation=generation, model=target, worker=worker
                ),
            )
        self._show(rollout.describe())

    def _abort(self, generation: int, model: ModelAnnouncement, why: str) -> None:
        """Every worker serves the old version again: drop what was prepared, seal why."""
        self.node.publisher.publish(
            Topic.MODEL_COMMAND,
            ModelCommand(action=ModelAction.ABORT, generation=generation, model=model),
        )
        self.refused_key = (self.pending_dir, "switch")
        self.event(ModelStep.ROLLED_BACK, model.name, model.version, why)
        self.node.diag(
            DiagCode.MODEL_LOAD_FAILED,
            f"{model.name} {model.version} rolled back on every worker: {why}",
            severity=Severity.ERROR,
        )
        self.last_switch = f"{model.version} rolled back: {why}"
        self._show()

    def _show(self, rollout: str = "") -> None:
        """The serving version, a rollout in progress and how the last switch ended, in the
        heartbeat (`vigil model status` prints them)."""
        detail = {}
        if self.serving is not None:
            detail = {
                "model": self.serving.name,
                "version": self.serving.version,
                "generation": str(self.serving.generation),
            }
        if rollout:
            detail["rollout"] = rollout
        if self.last_switch:
            detail["last_switch"] = self.last_switch
        self.node.heartbeat_detail = detail

    def commit(self, model: ModelAnnouncement, directory: str, how: str = "") -> None:
        self.node.publisher.publish(
            Topic.MODEL_COMMAND,
            ModelCommand(action=ModelAction.COMMIT, generation=model.generation, model=model),
        )
        # Latched: a worker that starts (or restarts) later loads what is committed now.
        self.node.publisher.publish(Topic.MODEL_ACTIVE, model)
        self.serving = model
        self.serving_dir = directory
        self.switches += 1
        self.event(
            ModelStep.COMMITTED,
            model.name,
            model.version,
            f"sha256 {model.sha256}" + (f"; {how}" if how else ""),
        )
        self.last_switch = f"{model.version} committed" + (f", {how}" if how else "")
        self._show()

    def timeout_ms(self) -> float | None:
        """A 100 ms tick while a switch or a rollout is under way, until a change settles,
        else None."""
        now = self.node.clock()
        waits = [100.0] if self.switch is not None or self.rollout is not None else []
        if self.dirty_at is not None:
            waits.append(max(0.0, (self.dirty_at - now) / 1e6))
        return min(waits, default=None)


def _announcement(model: VerifiedModel) -> ModelAnnouncement:
    directory = Path(model.directory)
    kat = model.metadata.known_answer
    digest = hashlib.sha256
    return ModelAnnouncement(
        name=model.name,
        version=model.version,
        path=str(directory / model.metadata.model_file),
        sha256=model.model_sha256,
        size=len(model.model_bytes),
        input_name=model.metadata.inputs[0].name,
        signer=model.signer,
        kat_inputs=str(directory / kat.inputs) if kat else "",
        kat_inputs_sha256=digest(model.files[kat.inputs]).hexdigest() if kat else "",
        kat_expected=str(directory / kat.expected) if kat else "",
        kat_expected_sha256=digest(model.files[kat.expected]).hexdigest() if kat else "",
        kat_rtol=kat.rtol if kat else 1e-5,
        kat_atol=kat.atol if kat else 1e-6,
    )


def _launch_path(node: Node, path: str) -> Path:
    """A configured repository path: absolute, or relative to the launch file's folder."""
    p = Path(path)
    return p if p.is_absolute() else Path(node.args.launch_dir) / p


def _model_path(node: Node, path: str) -> Path:
    return model_file_path(path, node.args.launch_dir)


def run(config: LoaderConfig, args: NodeArgs) -> ExitCode:
    """Verify and announce the active model; follow the repository until SIGTERM/SIGINT."""
    if config.repository is not None:
        # Verification reads the graph with onnx, whose first import holds the interpreter
        # for seconds: done before the node beats, it cannot silence the heartbeat (a
        # loader seen hung right after each start, then killed, then hung again).
        import onnx  # noqa: F401, PLC0415
    with Node(args) as node:
        loader = _Loader(node, config)
        watch: RepositoryWatch | None = None
        if loader.repo is not None:
            folder = Path(loader.repo.root) / loader.repo.model
            folder.mkdir(parents=True, exist_ok=True)
            watch = node.enter(RepositoryWatch(folder))
            node.poller.register(watch.fileno(), 1)
        loader.resume()
        node.ready(KIND.contract(config))
        while not node.stopping:
            events = node.poll(loader.timeout_ms())
            loader.on_bus()  # on every turn: the beats never wake the loop themselves
            if watch is not None and events.get(watch.fileno()):
                watch.drain()
                loader.dirty_at = node.clock() + config.settle_ms * 1_000_000
            if loader.switch is not None or loader.rollout is not None:
                loader.advance()
            elif loader.dirty_at is not None and node.clock() >= loader.dirty_at:
                loader.check()
        node.log.info("node.stopping", reason=node.stop_reason, switches=loader.switches)
    return ExitCode.OK
