"""The single-machine engine: the benchmark DAG of `main.nf`, run with a pool of workers.

Stages (each a component type, discovered under `src/`):
  dataset  loader           -> datasets/<dataset>/dataset.h5ad
  split    task x seed x fold -> tasks/<dataset>/<task>/seed_<s>/fold_<f>/{train,test,solution}.h5ad
  predict  method/control     -> predictions/<dataset>/<task>/seed_<s>/fold_<f>/<method>/prediction.h5ad
  score    metric             -> scores/<dataset>/<task>/seed_<s>/fold_<f>/<method>/<metric>/score.h5ad

A seed is one K-fold partition of the held-out units; every fold of it is run, so the folds together test
every eligible perturbation once.

Every step runs through the viash-compatible runner in its own process; every split is checked
for leakage (perturbcast.leakage) before methods see it. A finished step leaves
`step.json` (status, cache key, wall time, peak memory) so a re-run skips it; a failing step is
recorded and only its own downstream steps are skipped.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from . import engine_guard as guard
from . import config as _config
from .config import ComponentConfig
from .leakage import check_partition, check_split
from .runner import run_component
from .engine_guard import Progress, last_error as _last_error
from .spawner import Spawner

NOT_APPLICABLE_EXIT_CODE = 99
# A component whose optional packages (an extra, its own environment) are absent: its own status, not a failure
# (the code is defined with the environments that produce it).
from .envs import NOT_INSTALLED_EXIT_CODE  # noqa: E402
# Controls every method selection runs with: the baseline and ceiling of the calibration, the perfect and
# the uninformative predictions that frame the scale (skipped silently where a control is absent).
SCALE_CONTROLS = ("train_mean", "replicate_ceiling", "ground_truth", "no_change", "random_perturbation")
STAGES = ("dataset", "split", "predict", "score")
STAGE_OF_TYPE = {"dataset_loader": "dataset", "task": "split", "method": "predict",
                 "control_method": "predict", "metric": "score"}


@dataclass
class Step:
    id: str
    stage: str
    component: ComponentConfig
    directory: Path
    inputs: dict          # argument -> path (outputs of upstream steps)
    outputs: dict         # argument -> path
    arguments: dict       # other arguments (name -> value)
    depends: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)

    def argv(self) -> list[str]:
        argv = []
        for name, value in {**self.inputs, **self.outputs, **self.arguments}.items():
            argv += [f"--{name}", str(value)]
        return argv


@dataclass
class StepRecord:
    id: str
    stage: str
    component: str
    status: str               # ok | failed | not_applicable | skipped | interrupted
    cache_key: str = ""
    exit_code: int | None = None
    wall_seconds: float = 0.0
    peak_rss_bytes: int = 0
    cached: bool = False
    reason: str = ""
    labels: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    output_digests: dict = field(default_factory=dict)  # name -> {size, sha256}: checked before reuse
    limits: dict = field(default_factory=dict)          # timeout_seconds, memory_bytes the step ran under


@dataclass
class Selection:
    datasets: list[str] | None = None
    tasks: list[str] | None = None
    methods: list[str] | None = None
    metrics: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    n_folds: int = 5
    folds: list[int] | None = None   # None: every fold of each partition
    # a user's own datasets ({"id", "loader", "arguments"}, from --dataset-file or a spec's `file:` entries) and
    # argument overrides of known dataset ids (a spec's `{id, arguments}` entries)
    extra_datasets: list[dict] = field(default_factory=list)
    dataset_arguments: dict = field(default_factory=dict)

    def fold_list(self) -> list[int]:
        return list(range(self.n_folds)) if self.folds is None else list(self.folds)


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


_broken_configs: list = []


def discover_components(package_root: Path) -> list[ComponentConfig]:
    """The components plan() sees: a config that cannot be loaded is left out (broken_configs() has it),
    so that only its own steps are missing, not the whole benchmark."""
    errors = []
    components = _config.discover_components(package_root, errors=errors)
    _broken_configs[:] = errors
    return components


def broken_configs() -> list[StepRecord]:
    """The configs the last plan() could not load, as failed records (one per config file)."""
    records = []
    for error in _broken_configs:
        text = str(error)
        where = Path(getattr(error, "config_path", text.split(": ", 1)[0]))
        records.append(StepRecord(id=f"config/{where.parent.parent.name}/{where.parent.name}", stage="config",
                                  component=where.parent.name, status="failed", reason=f"[error] {text}"))
    return records


def dataset_instances(loader: ComponentConfig) -> list[dict]:
    """`info.datasets` of a loader: the dataset ids it makes and the arguments of each."""
    instances = loader.info.get("datasets") or [{"id": loader.name, "arguments": {}, "default": True}]
    return [{"id": d["id"], "arguments": d.get("arguments") or {}, "default": bool(d.get("default", False))}
            for d in instances]


def supports_task(method: ComponentConfig, task_id: str) -> bool:
    supported = method.info.get("supported_tasks")
    return supported is None or task_id in supported


def declared(component: ComponentConfig, files: dict) -> dict:
    """The optional files (argument -> path) that `component` declares and upstream made (cells files)."""
    return {name: path for name, path in files.items() if path is not None and component.argument(name)}


def plan(package_root: Path, output_dir: Path, selection: Selection) -> tuple[list[Step], list[StepRecord]]:
    """All steps of the benchmark for `selection`, in dependency order, and the pairs not applicable by declaration."""
    components = discover_components(package_root)
    by_type: dict[str, list[ComponentConfig]] = {}
    for component in components:
        by_type.setdefault(component.component_type, []).append(component)

    def chosen(configs, wanted):
        configs = configs or []
        if wanted is None:
            return configs
        unknown = set(wanted) - {c.name for c in configs}
        if unknown:
            raise ValueError(f"unknown component(s) {sorted(unknown)}; known: {sorted(c.name for c in configs)}")
        return [c for c in configs if c.name in wanted]

    steps: list[Step] = []
    skipped: list[StepRecord] = []
    datasets = []
    known_datasets = {d["id"]: (loader, d) for loader in by_type.get("dataset_loader", []) for d in dataset_instances(loader)}
    for dataset_id, overrides in selection.dataset_arguments.items():
        if dataset_id in known_datasets:
            loader, instance = known_datasets[dataset_id]
            known_datasets[dataset_id] = (loader, {**instance, "arguments": {**instance["arguments"], **overrides}})
    loaders = {loader.name: loader for loader in by_type.get("dataset_loader", [])}
    for extra in selection.extra_datasets:
        if extra["loader"] not in loaders:
            raise ValueError(f"dataset '{extra['id']}' needs the loader {extra['loader']}, which is not in src/datasets")
        if extra["id"] in known_datasets:
            raise ValueError(f"dataset id '{extra['id']}' is already a dataset of the loaders; give your file another id")
        known_datasets[extra["id"]] = (loaders[extra["loader"]], {"id": extra["id"], "arguments": dict(extra["arguments"]),
                                                                   "default": False})
    if selection.datasets is None:
        datasets = [v for v in known_datasets.values() if v[1]["default"]]
    else:
        unknown = set(selection.datasets) - set(known_datasets)
        if unknown:
            raise ValueError(f"unknown dataset(s) {sorted(unknown)}; known: {sorted(known_datasets)}")
        datasets = [known_datasets[d] for d in selection.datasets]
    tasks = chosen(by_type.get("task"), selection.tasks)
    predictors = chosen(by_type.get("control_method", []) + by_type.get("method", []), selection.methods)
    if selection.methods is None:  # deep models opt out of the default run and run when named
        predictors = [p for p in predictors if p.info.get("default", True) is not False]
    metrics = chosen(by_type.get("metric"), selection.metrics)
    if selection.metrics is None:  # components that opt out of the default run only when named
        metrics = [m for m in metrics if m.info.get("default", True) is not False]

    # cells are made only when a selected component reads them (every loader can write millions of them)
    cell_inputs = ("input_train_cells", "input_solution_cells", "input_prediction_cells")
    # (controls declare cell inputs only to write cells for cell-level metrics, so they alone do not count)
    cells_wanted = any(c.argument(a) for c in metrics + [p for p in predictors if p.component_type == "method"]
                       for a in cell_inputs)
    prediction_cells_wanted = any(m.argument("input_prediction_cells") for m in metrics)

    def wanted(files: dict, flag: bool) -> dict:
        return files if flag else {}

    for loader, instance in datasets:
        dataset_id = instance["id"]
        dataset_dir = output_dir / "datasets" / dataset_id
        dataset_step = Step(
            id=f"dataset/{dataset_id}", stage="dataset", component=loader, directory=dataset_dir,
            inputs={}, outputs={"output": dataset_dir / "dataset.h5ad",
                                **declared(loader, wanted({"output_cells": dataset_dir / "dataset_cells.h5ad"},
                                                          cells_wanted))},
            arguments=dict(instance["arguments"]),
            labels={"dataset_id": dataset_id})
        steps.append(dataset_step)
        for task in tasks:
            # tasks that partition take --n_folds/--fold; one without them is run once per seed
            folds = selection.fold_list() if task.argument("fold") else [None]
            for seed, fold in ((seed, fold) for seed in selection.seeds for fold in folds):
                split = f"{dataset_id}/{task.name}/seed_{seed}" + (f"/fold_{fold}" if fold is not None else "")
                split_dir = output_dir / "tasks" / split
                split_arguments = {"seed": seed} if fold is None else {"seed": seed, "n_folds": selection.n_folds,
                                                                        "fold": fold}
                split_labels = {"dataset_id": dataset_id, "task_id": task.name, "seed": seed,
                                **({"fold": fold} if fold is not None else {})}
                cells = declared(task, {"input_cells": dataset_step.outputs.get("output_cells")})
                split_step = Step(
                    id=f"split/{split}", stage="split", component=task, directory=split_dir,
                    inputs={"input": dataset_step.outputs["output"], **cells},
                    outputs={"output_train": split_dir / "train.h5ad", "output_test": split_dir / "test.h5ad",
                             "output_solution": split_dir / "solution.h5ad",
                             **(declared(task, {"output_train_cells": split_dir / "train_cells.h5ad",
                                                "output_solution_cells": split_dir / "solution_cells.h5ad"})
                                if cells else {})},
                    arguments=split_arguments, depends=[dataset_step.id], labels=split_labels)
                steps.append(split_step)
                for method in predictors:
                    labels = {**split_step.labels, "method_id": method.name, "method_type": method.component_type}
                    if not supports_task(method, task.name):
                        skipped.append(StepRecord(
                            id=f"predict/{split}/{method.name}", stage="predict", component=method.name,
                            status="not_applicable", reason=f"{method.name} does not support task {task.name}",
                            labels=labels))
                        continue
                    predict_dir = output_dir / "predictions" / split / method.name
                    inputs = {"input_train": split_step.outputs["output_train"],
                              "input_test": split_step.outputs["output_test"]}
                    if method.argument("input_solution"):
                        inputs["input_solution"] = split_step.outputs["output_solution"]
                    split_cells = {"input_train_cells": split_step.outputs.get("output_train_cells"),
                                   "input_solution_cells": split_step.outputs.get("output_solution_cells")}
                    inputs.update(declared(method, split_cells))
                    predict_step = Step(
                        id=f"predict/{split}/{method.name}", stage="predict", component=method, directory=predict_dir,
                        inputs=inputs, outputs={"output": predict_dir / "prediction.h5ad",
                                                **declared(method, wanted({"output_cells": predict_dir / "prediction_cells.h5ad"},
                                                                          prediction_cells_wanted))},
                        arguments={},
                        depends=[split_step.id], labels=labels)
                    steps.append(predict_step)
                    for metric in metrics:
                        score_dir = output_dir / "scores" / split / method.name / metric.name
                        steps.append(Step(
                            id=f"score/{split}/{method.name}/{metric.name}", stage="score", component=metric,
                            directory=score_dir,
                            inputs={"input_solution": split_step.outputs["output_solution"],
                                    "input_prediction": predict_step.outputs["output"],
                                    **declared(metric, {**split_cells,
                                                        "input_prediction_cells": predict_step.outputs.get("output_cells")})},
                            outputs={"output": score_dir / "score.h5ad"}, arguments={},
                            depends=[predict_step.id], labels={**labels, "metric_component": metric.name}))
    return steps, skipped


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
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _write_json_atomic(path: Path, payload: dict):
    tmp = path.with_suffix(".json.partial")
    with open(tmp, "w") as handle:
        handle.write(json.dumps(payload, indent=2, default=str))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


ResultsLocked, results_lock = guard.ResultsLocked, guard.results_lock
_worker = threading.local()
STOP_GRACE_SECONDS = 3.0  # after an interrupt, how long running steps get to be recorded
INTERRUPT = guard.Interrupt()


# imported by every component; loaded once per worker instead of once per step (~0.6 s each)
PRELOADED_MODULES = ("numpy", "scipy.sparse", "pandas", "h5py", "anndata")


def _spawner() -> Spawner:
    """This worker thread's fork server (so each step's peak memory is its own, not the engine's)."""
    spawner = getattr(_worker, "spawner", None)
    if spawner is None or spawner.process.poll() is not None:  # none yet, or it died (killed, out of memory)
        _worker.spawner = Spawner(preload=PRELOADED_MODULES)
        INTERRUPT.register(_worker.spawner)
    return _worker.spawner


def _failure_reason(log_path: Path, exit_code: int, reply: dict, limits: guard.Limits) -> str:
    if reply.get("timed_out"):
        return f"timeout after {limits.timeout:g} s"
    if limits.memory and guard.ran_out_of_memory(log_path):
        return f"out of memory (limit {guard.format_bytes(limits.memory)})"
    error = _last_error(log_path)
    if reply.get("signal"):
        name = signal.Signals(reply["signal"]).name if reply["signal"] in signal.Signals._value2member_map_ else reply["signal"]
        return f"killed by {name} (exit code {exit_code})" + (f": {error}" if error.startswith("[error]") else "")
    return error or f"exit code {exit_code}"


def _not_started(step: Step, reason: str) -> StepRecord:
    return StepRecord(id=step.id, stage=step.stage, component=step.component.name, status="skipped",
                      reason=reason, labels=step.labels)


def run_step(step: Step, cache_key: str, limits: guard.Limits | None = None, session: str | None = None) -> StepRecord:
    """Run one step in its own process (group); its outputs and log stay in the step's directory.

    `session`: steps with the same session key run one after another in one worker process (the
    metric steps of one prediction); each still has its own record, log and limits."""
    limits = limits or guard.Limits()
    if INTERRUPT.stopped:
        return _not_started(step, f"not started: {INTERRUPT.name}")
    record_path = step.directory / "step.json"
    if step.directory.exists():
        shutil.rmtree(step.directory)  # stale outputs of an older or failed attempt
    step.directory.mkdir(parents=True)
    log_path = step.directory / "log.txt"
    reply = {}
    with open(log_path, "w") as log, guard.routed_stderr() as stderr, stderr.to(log):
        log.write(f"$ perturbcast run {step.component.directory} -- {' '.join(step.argv())}\n")
        log.flush()
        try:
            # R and Bash steps are handed by this server to a small sibling with the same limits
            # (Spawner.run), so their peak memory is their own
            spawner = _spawner()
            spawner.options = {"timeout": limits.timeout, "memory": limits.memory, "session": session}
            spawner.last_reply = {}
            result = run_component(step.component.path, step.argv(), stdout=log, stderr=log, spawner=spawner)
            exit_code, wall, peak = result.exit_code, result.wall_seconds, result.peak_rss_bytes
            reply = spawner.last_reply
        except Exception as error:  # a broken config or resource must not stop the other steps
            log.write(f"[error] {type(error).__name__}: {error}\n")
            exit_code, wall, peak = 1, 0.0, 0
        status = ("ok" if exit_code == 0 else "not_applicable" if exit_code == NOT_APPLICABLE_EXIT_CODE
                  else "not_installed" if exit_code == NOT_INSTALLED_EXIT_CODE else "failed")
        reason = "" if status == "ok" else _failure_reason(log_path, exit_code, reply, limits)
        if status == "failed" and INTERRUPT.stopped:
            status, reason = "interrupted", f"interrupted by {INTERRUPT.name}: its process group was killed"
            log.write(f"[error] {reason}\n")
        sealed = {}
        try:
            if status == "ok" and step.stage == "split":
                # every split is checked for leakage before any method sees it
                problems = check_split(step.outputs["output_train"], step.outputs["output_test"],
                                       step.outputs["output_solution"], common_path=step.inputs["input"],
                                       train_cells_path=step.outputs.get("output_train_cells"),
                                       solution_cells_path=step.outputs.get("output_solution_cells"),
                                       cells_path=step.inputs.get("input_cells"))
                if problems:
                    status, reason = "failed", "leakage: " + "; ".join(problems[:3])
                    log.writelines(f"[error] leakage: {problem}\n" for problem in problems)
            if status == "ok":
                sealed = guard.seal_outputs(step.outputs, step.directory)
        except Exception as error:  # a check that cannot read an output fails this step only
            status, reason = "failed", f"[error] {type(error).__name__}: {error}"
            log.write(reason + "\n")
    record = StepRecord(
        id=step.id, stage=step.stage, component=step.component.name, status=status, cache_key=cache_key,
        exit_code=exit_code, wall_seconds=round(wall, 3), peak_rss_bytes=peak,
        reason=reason, labels=step.labels, outputs={k: str(v) for k, v in step.outputs.items()},
        output_digests=sealed, limits={"timeout_seconds": limits.timeout, "memory_bytes": limits.memory})
    _write_json_atomic(record_path, asdict(record))
    return record


def _cached_record(step: Step, cache_key: str) -> StepRecord | None:
    record_path = step.directory / "step.json"
    if not record_path.exists():
        return None
    try:
        stored = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("cache_key") != cache_key or stored.get("status") not in ("ok", "not_applicable"):
        return None
    if stored["status"] == "ok" and not guard.outputs_intact(step.outputs, stored.get("output_digests")):
        return None  # missing, truncated or changed since the step finished
    record = StepRecord(**{k: v for k, v in stored.items() if k in StepRecord.__dataclass_fields__})
    record.outputs = {k: str(v) for k, v in step.outputs.items()}  # where they are now (the folder may have moved)
    record.cached = True
    return record


def _run_unit(unit: list, limits_of, finished: queue.Queue):
    """A worker's job: one step, or the metric steps of one prediction in one session."""
    session = f"scores of {unit[0][0].depends[0]}" if len(unit) > 1 else None
    try:
        for step, key in unit:
            try:
                record = run_step(step, key, limits_of(step), session=session)
            except Exception as error:  # e.g. a full disk while writing step.json
                record = StepRecord(id=step.id, stage=step.stage, component=step.component.name, status="failed",
                                    cache_key=key, reason=f"[error] {type(error).__name__}: {error}", labels=step.labels)
            finished.put(record)
    finally:
        spawner = getattr(_worker, "spawner", None)
        if session and spawner is not None:
            spawner.options = {}
            try:
                spawner.end_session()
            except Exception:
                pass


def _worker_loop(units: queue.Queue, limits_of, finished: queue.Queue):
    while True:
        unit = units.get()
        if unit is None:
            break
        _run_unit(unit, limits_of, finished)
    spawner = getattr(_worker, "spawner", None)
    if spawner is not None:
        spawner.close()


def execute(steps: list[Step], jobs: int = 1, progress: Progress | None = None,
            limits: guard.Limits | None = None, group_scores: bool = True) -> list[StepRecord]:
    """Run `steps` respecting dependencies with up to `jobs` at once; never stops on a failing step.

    `limits` override the components' own (labels). The metric steps of one prediction run in one
    worker process one after another (`group_scores`). On SIGINT/SIGTERM (or INTERRUPT.stop()) no
    step starts any more, running ones are killed and recorded `interrupted`; the records so far are
    returned (INTERRUPT.stopped tells the caller)."""
    overrides = limits or guard.Limits()
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
    units, finished = queue.Queue(), queue.Queue()

    def finish(record: StepRecord):
        records[record.id] = record
        progress.update(record)

    INTERRUPT.reset()
    stop_deadline = None
    workers = [threading.Thread(target=_worker_loop, args=(units, limits_of, finished), daemon=True,
                                name=f"perturbcast-worker-{i}") for i in range(max(1, jobs))]
    with INTERRUPT.handling_signals(), guard.routed_stderr():
        for worker in workers:
            worker.start()
        INTERRUPT.executing = True
        try:
            while (pending and not INTERRUPT.stopped) or in_flight:
                still_pending, ready = [], []
                for step in pending if not INTERRUPT.stopped else []:
                    upstream = [records.get(d) for d in step.depends]
                    if any(r is None for r in upstream):
                        still_pending.append(step)
                        continue
                    blocked = [r for r in upstream if r.status != "ok"]
                    if blocked:
                        finish(StepRecord(id=step.id, stage=step.stage, component=step.component.name,
                                          status="not_applicable" if all(r.status in ("not_applicable", "not_installed") for r in blocked) else "skipped",
                                          reason=f"upstream {blocked[0].id} {blocked[0].status.replace('_', ' ')}",
                                          labels=step.labels))
                        continue
                    keys[step.id] = _cache_key(step, [keys[d] for d in step.depends], digests, root)
                    cached = _cached_record(step, keys[step.id])
                    if cached is not None:
                        finish(cached)
                        continue
                    ready.append(step)
                if not INTERRUPT.stopped:
                    pending = still_pending
                for unit in _units(ready, group_scores):
                    in_flight.update(step.id for step in unit)
                    units.put([(step, keys[step.id]) for step in unit])
                if not in_flight:
                    if pending and not INTERRUPT.stopped:  # dependencies that are not part of the plan
                        for step in pending:
                            missing = [d for d in step.depends if d not in by_id]
                            finish(StepRecord(id=step.id, stage=step.stage, component=step.component.name,
                                              status="skipped", reason=f"depends on unplanned {missing}", labels=step.labels))
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
                                              status="interrupted", reason=f"interrupted by {INTERRUPT.name}",
                                              labels=step.labels)
            elif step.id not in records:
                records[step.id] = _not_started(step, f"not started: {INTERRUPT.name}")
    return [records[step.id] for step in steps]


def check_partitions(steps: list[Step], records: list[StepRecord], n_folds: int) -> list[StepRecord]:
    """One record per partition (dataset x task x seed) whose every fold was split: `perturbcast.leakage.
    check_partition` on their test files, so a task that tests a perturbation twice or never is caught
    as the single folds cannot show. Partitions with a fold not run or not applicable are not checked."""
    by_id = {record.id: record for record in records}
    partitions: dict[tuple, list[Step]] = {}
    for step in steps:
        if step.stage == "split" and "fold" in step.labels:
            key = (step.labels["dataset_id"], step.labels["task_id"], step.labels["seed"])
            partitions.setdefault(key, []).append(step)
    checked = []
    for (dataset_id, task_id, seed), members in sorted(partitions.items()):
        folds = {step.labels["fold"] for step in members}
        if folds != set(range(n_folds)) or any(by_id.get(step.id) is None or by_id[step.id].status != "ok"
                                              for step in members):
            continue
        problems = check_partition([step.outputs["output_test"] for step in members],
                                   common_path=members[0].inputs["input"])
        checked.append(StepRecord(
            id=f"partition/{dataset_id}/{task_id}/seed_{seed}", stage="split", component=task_id,
            status="failed" if problems else "ok", reason="partition: " + "; ".join(problems[:3]) if problems else "",
            labels={"dataset_id": dataset_id, "task_id": task_id, "seed": seed}))
    return checked


def _units(ready: list[Step], group_scores: bool) -> list[list[Step]]:
    """Ready steps as worker jobs: the score steps of one prediction together, every other step alone."""
    units, scores = [], {}
    for step in ready:
        if group_scores and step.stage == "score" and step.depends:
            scores.setdefault(tuple(step.depends), []).append(step)
        else:
            units.append([step])
    return units + list(scores.values())


def trace_rows(records: list[StepRecord]) -> list[dict]:
    return [{"step": r.id, "stage": r.stage, "component": r.component, "status": r.status,
             "cached": r.cached, "exit_code": r.exit_code, "wall_seconds": r.wall_seconds,
             "peak_rss_mib": round(r.peak_rss_bytes / 2**20, 1), "reason": r.reason} for r in records]


def write_trace(records: list[StepRecord], path: Path):
    import pandas as pd

    pd.DataFrame(trace_rows(records)).to_csv(path, sep="\t", index=False)
