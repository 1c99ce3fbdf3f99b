"""Running a plan: each step in its own process through a worker's fork server, cached, guarded, recorded.

`execute` runs the steps of perturbcast.engine.plan respecting their dependencies with a pool of worker
threads; `run_step` runs one and writes its `step.json` (status, cache key, wall time, peak memory) so a
re-run reuses it; a step whose upstream did not finish is recorded with a structured `blocked_by`.
Statuses, exit codes, file names and the trace schema come from perturbcast.layout.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from . import __version__
from . import disk_space
from . import engine_guard as guard
from . import layout
from .config import ComponentConfig
from .engine_guard import Progress, last_error as _last_error
from .layout import Status
from .leakage import check_split
from .runner import run_component
from .spawner import Spawner
from .steps import Step, StepRecord, score_units


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(child.relative_to(path)).encode())
            digest.update(_file_digest(child).encode())
        return digest.hexdigest()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def component_digest(config: ComponentConfig) -> str:
    """Changes whenever the config (with its merged API), the script or a resource changes."""
    payload = {"config": config.raw, "resources": {
        r.get("path", r.get("dest", "")): _file_digest(config.resolve_resource(r)) if "path" in r else r.get("text")
        for r in config.resources()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _relative_argv(step: Step, root: Path | None) -> list[str]:
    """The step's arguments with paths inside the results folder `root` relative to the step's own folder
    (fixed by the layout, whatever the selection): a moved folder keeps its cache."""
    argv = []
    for name, value in {**step.inputs, **step.outputs, **step.arguments}.items():
        if isinstance(value, Path) and root is not None and value.is_relative_to(root):
            value = os.path.relpath(value, step.directory)
        argv += [f"--{name}", str(value)]
    return argv


def _cache_key(step: Step, upstream_keys: list[str], digests: dict, root: Path | None = None) -> str:
    payload = {"component": digests[step.component.path], "argv": _relative_argv(step, root), "upstream": upstream_keys,
               "perturbcast": __version__}
    settings = layout.settings_from_environment(step.component.name, os.environ)
    if settings:  # only when set, so that every existing cache key stays valid
        payload["environment"] = settings
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _write_json_atomic(path: Path, payload: dict):
    with disk_space.replaced_atomically(path) as tmp, open(tmp, "w") as handle:
        handle.write(json.dumps(payload, indent=2, default=str))
        handle.flush()
        os.fsync(handle.fileno())


ResultsLocked, results_lock = guard.ResultsLocked, guard.results_lock
_worker = threading.local()
STOP_GRACE_SECONDS = 3.0  # after an interrupt, how long running steps get to be recorded
INTERRUPT = guard.Interrupt()
DISK = disk_space.DiskSpace()  # a full disk stops the run like an interrupt, but lets running steps finish


# imported by every component; loaded once per worker instead of once per step (~0.6 s each)
# scipy.spatial (cdist, in every metric session; ~0.25 s to import, +15 MB per process) too
PRELOADED_MODULES = ("numpy", "scipy.sparse", "pandas", "h5py", "anndata", "scipy.spatial.distance")


def _spawner(cpus: int | None = None) -> Spawner:
    """This worker thread's fork server (so each step's peak memory is its own, not the engine's), whose
    steps' numerical libraries use `cpus` threads (the step's share, CPUs // --jobs, unless the user set
    OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS): with a thread per core in each of the steps
    running at once, their threads compete for the cores and spin waiting for each other."""
    spawner = getattr(_worker, "spawner", None)
    if spawner is None or spawner.process.poll() is not None:  # none yet, or it died (killed, out of memory)
        _worker.spawner = Spawner(preload=PRELOADED_MODULES, threads=cpus)
        INTERRUPT.register(_worker.spawner)
    return _worker.spawner


def _failure_reason(log_path: Path, exit_code: int, reply: dict, limits: guard.Limits) -> str:
    if reply.get("timed_out"):
        return f"timeout after {limits.timeout:g} s"
    if limits.memory and guard.ran_out_of_memory(log_path):
        shared = (f"; each of the {limits.shared_by} steps that run at once (--jobs) gets that share of the machine's "
                  f"memory: --jobs 1 gives one step all of it") if limits.shared_by > 1 else ""
        return f"out of memory (limit {guard.format_bytes(limits.memory)}{shared})"
    error = _last_error(log_path)
    if reply.get("signal"):
        name = signal.Signals(reply["signal"]).name if reply["signal"] in signal.Signals._value2member_map_ else reply["signal"]
        return f"killed by {name} (exit code {exit_code})" + (f": {error}" if error.startswith(layout.ERROR_TAG) else "")
    return error or f"exit code {exit_code}"


def _not_started(step: Step, reason: str) -> StepRecord:
    return StepRecord(id=step.id, stage=step.stage, component=step.component.name, status=Status.SKIPPED,
                      reason=reason, labels=step.labels)


def _clear_step_folder(step: Step):
    """Remove what an older or failed attempt of `step` made; anything else in its folder is not ours and stays."""
    if not step.directory.is_dir():
        return
    made = layout.step_made_files(step.stage) | {Path(p).name for p in step.outputs.values()}
    for entry in step.directory.iterdir():
        if entry.name in made or entry.name.startswith(layout.PARTIAL_PREFIX) or (
                entry.name.startswith(f".{layout.STEP_RECORD}.") and entry.name.endswith(".partial")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def run_step(step: Step, cache_key: str, limits: guard.Limits | None = None, session: str | None = None) -> StepRecord:
    """Run one step in its own process (group); its outputs and log stay in the step's directory.

    `session`: steps with the same session key run one after another in one worker process (the
    metric steps of one prediction); each still has its own record, log and limits."""
    limits = limits or guard.Limits()
    if INTERRUPT.stopped:
        return _not_started(step, f"not started: {INTERRUPT.name}")
    if DISK.problem:  # queued before the disk filled up
        return _not_started(step, f"not started: {disk_space.NO_SPACE}")
    record_path = step.directory / layout.STEP_RECORD
    _clear_step_folder(step)
    workdir = step.directory / layout.STEP_WORKDIR
    workdir.mkdir(parents=True)
    log_path = step.directory / layout.STEP_LOG
    reply = {}
    inputs_before = guard.input_states(step.inputs)
    with open(log_path, "w") as log, guard.routed_stderr() as stderr, stderr.to(log):
        log.write(f"$ perturbcast run {step.component.directory} -- {' '.join(step.argv())}\n")
        log.flush()
        try:
            # R and Bash steps are handed by this server to a small sibling with the same limits
            # (Spawner.run), so their peak memory is their own
            spawner = _spawner(limits.cpus)
            spawner.options = {"timeout": limits.timeout, "memory": limits.memory, "session": session}
            spawner.last_reply = {}
            result = run_component(step.component.path, step.argv(), stdout=log, stderr=log, spawner=spawner,
                                   cpus=limits.cpus, cwd=str(workdir))
            exit_code, wall, peak = result.exit_code, result.wall_seconds, result.peak_rss_bytes
            reply = spawner.last_reply
        except Exception as error:  # a broken config or resource must not stop the other steps
            log.write(f"{layout.ERROR_TAG} {type(error).__name__}: {error}\n")
            exit_code, wall, peak = 1, 0.0, 0
        log.flush()
        guard.cap_log(log_path)
        log.seek(0, os.SEEK_END)
        status = Status.of_exit_code(exit_code)
        reason = "" if status == Status.OK else _failure_reason(log_path, exit_code, reply, limits)
        changed = guard.changed_inputs(step.inputs, inputs_before)
        if changed:  # the inputs are shared with its siblings: this step's result (and theirs) cannot be trusted
            status, reason = Status.FAILED, (f"{layout.ERROR_TAG} its input {', '.join(changed)} changed while "
                                             f"{step.component.name} ran (it or a step beside it wrote there; a step "
                                             "must only read its inputs)")
            log.write(reason + "\n")
        if status == Status.FAILED and INTERRUPT.stopped:
            status, reason = Status.INTERRUPTED, f"interrupted by {INTERRUPT.name}: its process group was killed"
            log.write(f"{layout.ERROR_TAG} {reason}\n")
        sealed = {}
        try:
            if status == Status.OK and step.stage == layout.SPLIT:
                # every split is checked for leakage before any method sees it
                problems = check_split(step.outputs["output_train"], step.outputs["output_test"],
                                       step.outputs["output_solution"], common_path=step.inputs["input"],
                                       train_cells_path=step.outputs.get("output_train_cells"),
                                       solution_cells_path=step.outputs.get("output_solution_cells"),
                                       cells_path=step.inputs.get("input_cells"))
                if problems:
                    status, reason = Status.FAILED, "leakage: " + "; ".join(problems[:3])
                    log.writelines(f"{layout.ERROR_TAG} leakage: {problem}\n" for problem in problems)
            if status == Status.OK:
                sealed = guard.seal_outputs(step.outputs, step.directory)
        except Exception as error:  # a check that cannot read an output fails this step only
            status, reason = Status.FAILED, f"{layout.ERROR_TAG} {type(error).__name__}: {error}"
            log.write(reason + "\n")
    try:
        workdir.rmdir()  # only when the step left nothing in it
    except OSError:
        pass
    record = StepRecord(
        id=step.id, stage=step.stage, component=step.component.name, status=status, cache_key=cache_key,
        exit_code=exit_code, wall_seconds=round(wall, 3), peak_rss_bytes=peak,
        reason=reason, labels=step.labels, outputs={k: str(v) for k, v in step.outputs.items()},
        output_digests=sealed, limits={"timeout_seconds": limits.timeout, "memory_bytes": limits.memory})
    _write_json_atomic(record_path, asdict(record))
    return record


def _cached_record(step: Step, cache_key: str) -> StepRecord | None:
    record_path = step.directory / layout.STEP_RECORD
    if not record_path.exists():
        return None
    try:
        stored = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (stored.get("cache_key") != cache_key or stored.get("status") not in {s.value for s in Status}
            or not Status(stored["status"]).reusable):
        return None
    if stored["status"] == Status.OK and not guard.outputs_intact(step.outputs, stored.get("output_digests")):
        return None  # missing, truncated or changed since the step finished
    record = StepRecord(**{k: v for k, v in stored.items() if k in StepRecord.__dataclass_fields__})
    record.outputs = {k: str(v) for k, v in step.outputs.items()}  # where they are now (the folder may have moved)
    record.cached = True
    return record


def _session_key(unit: list) -> str | None:
    """The metric steps of one prediction share a session, and so do those of every prediction scored
    against the same solution (one fold) that this worker takes in turn: the solution is read once."""
    step = unit[0][0]
    if len(unit) < 2 or step.stage != layout.SCORE:
        return None
    return f"scores against {step.inputs.get('input_solution') or step.depends[0]}"


class UnitQueue:
    """The workers' jobs, each worker taking first the units of the score session it has open.

    A session holds what its fold's metrics memoise (at genome scale the PCA of the training cells: the larger
    part of scoring the fold's first prediction with cells). Taken in plain order, a fold's predictions went to
    both workers and each fitted it (measured: two fits in each of 5 folds). So a worker takes, in order of
    preference: a unit of its own open session; a unit that opens no session another worker holds; and only
    when nothing else waits, any unit (an idle core is dearer than a second fit)."""

    def __init__(self):
        self._units: list = []
        self._ready = threading.Condition()
        self._open: dict = {}  # worker -> the session key of its last score unit

    def put(self, unit):
        with self._ready:
            self._units.append(unit)
            self._ready.notify()

    def get(self, worker: str):
        with self._ready:
            while not self._units:
                self._ready.wait()
            index = self._choose(worker)
            unit = self._units.pop(index)
            key = _session_key(unit) if unit is not None else None
            if key is not None:
                self._open[worker] = key
            return unit

    def _choose(self, worker: str) -> int:
        mine = self._open.get(worker)
        held = {key for other, key in self._open.items() if other != worker}
        free = None
        for index, unit in enumerate(self._units):
            if unit is None:  # the end: what was put before it runs first
                break
            key = _session_key(unit)
            if key is not None and key == mine:
                return index
            if free is None and (key is None or key not in held):
                free = index
        return 0 if free is None else free


def _run_unit(unit: list, limits_of, finished: queue.Queue):
    """A worker's job: one step, or the metric steps of one prediction in a session (left open for the
    next prediction of the same fold; the worker's fork server ends it when it exits)."""
    session = _session_key(unit)
    try:
        for step, key in unit:
            try:
                record = run_step(step, key, limits_of(step), session=session)
            except Exception as error:  # e.g. a full disk while writing step.json
                record = StepRecord(id=step.id, stage=step.stage, component=step.component.name, status=Status.FAILED,
                                    cache_key=key, reason=f"{layout.ERROR_TAG} {type(error).__name__}: {error}",
                                    labels=step.labels)
            finished.put(record)
    finally:
        spawner = getattr(_worker, "spawner", None)
        if session and spawner is not None:
            spawner.options = {}


def _worker_loop(units: UnitQueue, limits_of, finished: queue.Queue):
    while True:
        unit = units.get(threading.current_thread().name)
        if unit is None:
            break
        _run_unit(unit, limits_of, finished)
    spawner = getattr(_worker, "spawner", None)
    if spawner is not None:
        spawner.close()


def execute(steps: list[Step], jobs: int = 1, progress: Progress | None = None,
            limits: guard.Limits | None = None, group_scores: bool = True, reuse=None) -> list[StepRecord]:
    """Run `steps` respecting dependencies with up to `jobs` at once; never stops on a failing step.

    `limits` override the components' own (labels). The metric steps of one prediction run in one
    worker process one after another (`group_scores`). On SIGINT/SIGTERM (or INTERRUPT.stop()) no
    step starts any more, running ones are killed and recorded `interrupted`; the records so far are
    returned (INTERRUPT.stopped tells the caller). `reuse(step, cache_key)`: a finished record of the step taken
    from elsewhere (another results folder, perturbcast.compare) or None, asked when the step's own cache misses."""
    overrides = limits or guard.Limits()
    if overrides.cpus is None:  # the machine's CPUs (and memory) shared by the steps that run at once
        overrides = replace(overrides, cpus=guard.cpu_share(jobs), shared_by=max(1, jobs))
    digests, component_limits = {}, {}
    table = guard.label_values(steps[0].component.package_root) if steps else {}
    for step in steps:
        if step.component.path not in digests:
            digests[step.component.path] = component_digest(step.component)
            component_limits[step.component.path] = guard.step_limits(step.component, overrides, table)
    limits_of = lambda step: component_limits[step.component.path]  # noqa: E731
    root = Path(os.path.commonpath([str(step.directory) for step in steps])) if steps else None
    by_id = {step.id: step for step in steps}
    records: dict[str, StepRecord] = {}
    keys: dict[str, str] = {}
    pending = list(steps)
    in_flight: set[str] = set()
    progress = progress or Progress(len(steps))
    units, finished = UnitQueue(), queue.Queue()

    def finish(record: StepRecord):
        records[record.id] = record
        progress.update(record)
        if root is not None:
            DISK.notice(record, root)

    def stopping() -> bool:
        return INTERRUPT.stopped or DISK.problem is not None

    INTERRUPT.reset()
    DISK.reset()
    stop_deadline = None
    workers = [threading.Thread(target=_worker_loop, args=(units, limits_of, finished), daemon=True,
                                name=f"perturbcast-worker-{i}") for i in range(max(1, jobs))]
    with INTERRUPT.handling_signals(), guard.routed_stderr():
        for worker in workers:
            worker.start()
        INTERRUPT.executing = True
        try:
            while (pending and not stopping()) or in_flight:
                still_pending, ready = [], []
                for step in pending if not stopping() else []:
                    upstream = [records.get(d) for d in step.depends]
                    if any(r is None for r in upstream):
                        still_pending.append(step)
                        continue
                    blocked = [r for r in upstream if r.status != Status.OK]
                    if blocked:
                        cause = layout.blocked_by(blocked[0].id, blocked[0].status)
                        finish(StepRecord(id=step.id, stage=step.stage, component=step.component.name,
                                          status=layout.blocked_status(r.status for r in blocked),
                                          reason=layout.blocked_reason(cause), blocked_by=cause, labels=step.labels))
                        continue
                    keys[step.id] = _cache_key(step, [keys[d] for d in step.depends], digests, root)
                    cached = _cached_record(step, keys[step.id])
                    if cached is None and reuse is not None:
                        cached = reuse(step, keys[step.id])
                    if cached is not None:
                        finish(cached)
                        continue
                    if not DISK.check(step.directory, disk_space.space_needed(step), step.id):
                        break  # this step and every later one stay unstarted
                    ready.append(step)
                if not stopping():
                    pending = still_pending
                for unit in _units(ready, group_scores):
                    in_flight.update(step.id for step in unit)
                    units.put([(step, keys[step.id]) for step in unit])
                if not in_flight:
                    if pending and not stopping():  # dependencies that are not part of the plan
                        for step in pending:
                            missing = [d for d in step.depends if d not in by_id]
                            finish(StepRecord(id=step.id, stage=step.stage, component=step.component.name,
                                              status=Status.SKIPPED, reason=f"depends on unplanned {missing}", labels=step.labels))
                        pending = []
                    continue
                if INTERRUPT.stopped:
                    stop_deadline = stop_deadline or time.monotonic() + STOP_GRACE_SECONDS
                    if time.monotonic() > stop_deadline:  # a step outside the fork servers that did not stop
                        break
                try:
                    record = finished.get(timeout=0.2)
                except queue.Empty:
                    continue
                while True:
                    in_flight.discard(record.id)
                    finish(record)
                    try:
                        record = finished.get_nowait()
                    except queue.Empty:
                        break
        finally:
            INTERRUPT.executing = False
            for _ in workers:
                units.put(None)
    if INTERRUPT.stopped:
        for step in steps:
            if step.id in in_flight:
                records[step.id] = StepRecord(id=step.id, stage=step.stage, component=step.component.name,
                                              status=Status.INTERRUPTED, reason=f"interrupted by {INTERRUPT.name}",
                                              labels=step.labels)
            elif step.id not in records:
                records[step.id] = _not_started(step, f"not started: {INTERRUPT.name}")
    elif DISK.problem:
        for step in steps:
            if step.id not in records:
                records[step.id] = _not_started(step, f"not started: {disk_space.NO_SPACE}")
    return [records[step.id] for step in steps]



def _units(ready: list[Step], group_scores: bool) -> list[list[Step]]:
    """Ready steps as worker jobs: the score steps of one prediction together, every other step alone."""
    scores = score_units(ready) if group_scores else {}
    grouped = {id(step) for unit in scores.values() for step in unit}
    return [[step] for step in ready if id(step) not in grouped] + list(scores.values())


def trace_rows(records: list[StepRecord]) -> list[dict]:
    return [layout.trace_row(record) for record in records]


def write_trace(records: list[StepRecord], path: Path):
    """trace.tsv, replaced atomically: a failure (a full disk) leaves the previous trace, never a cut one."""
    import pandas as pd

    with disk_space.replaced_atomically(path) as temporary:
        pd.DataFrame(trace_rows(records), columns=layout.TRACE_COLUMNS).to_csv(temporary, sep="\t", index=False)
