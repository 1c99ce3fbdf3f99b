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
import shutil
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .config import ComponentConfig, discover_components
from .leakage import check_partition, check_split
from .runner import run_component
from .spawner import Spawner

NOT_APPLICABLE_EXIT_CODE = 99
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
    status: str               # ok | failed | not_applicable | skipped
    cache_key: str = ""
    exit_code: int | None = None
    wall_seconds: float = 0.0
    peak_rss_bytes: int = 0
    cached: bool = False
    reason: str = ""
    labels: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)


@dataclass
class Selection:
    datasets: list[str] | None = None
    tasks: list[str] | None = None
    methods: list[str] | None = None
    metrics: list[str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    n_folds: int = 5
    folds: list[int] | None = None   # None: every fold of each partition

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


def dataset_instances(loader: ComponentConfig) -> list[dict]:
    """`info.datasets` of a loader: the dataset ids it makes and the arguments of each."""
    instances = loader.info.get("datasets") or [{"id": loader.name, "arguments": {}, "default": True}]
    return [{"id": d["id"], "arguments": d.get("arguments") or {}, "default": bool(d.get("default", False))}
            for d in instances]


def supports_task(method: ComponentConfig, task_id: str) -> bool:
    supported = method.info.get("supported_tasks")
    return supported is None or task_id in supported


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
    if selection.datasets is None:
        datasets = [v for v in known_datasets.values() if v[1]["default"]]
    else:
        unknown = set(selection.datasets) - set(known_datasets)
        if unknown:
            raise ValueError(f"unknown dataset(s) {sorted(unknown)}; known: {sorted(known_datasets)}")
        datasets = [known_datasets[d] for d in selection.datasets]
    tasks = chosen(by_type.get("task"), selection.tasks)
    predictors = chosen(by_type.get("control_method", []) + by_type.get("method", []), selection.methods)
    metrics = chosen(by_type.get("metric"), selection.metrics)
    if selection.metrics is None:  # components that opt out of the default run only when named
        metrics = [m for m in metrics if m.info.get("default", True) is not False]

    for loader, instance in datasets:
        dataset_id = instance["id"]
        dataset_dir = output_dir / "datasets" / dataset_id
        dataset_step = Step(
            id=f"dataset/{dataset_id}", stage="dataset", component=loader, directory=dataset_dir,
            inputs={}, outputs={"output": dataset_dir / "dataset.h5ad"}, arguments=dict(instance["arguments"]),
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
                split_step = Step(
                    id=f"split/{split}", stage="split", component=task, directory=split_dir,
                    inputs={"input": dataset_step.outputs["output"]},
                    outputs={"output_train": split_dir / "train.h5ad", "output_test": split_dir / "test.h5ad",
                             "output_solution": split_dir / "solution.h5ad"},
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
                    predict_step = Step(
                        id=f"predict/{split}/{method.name}", stage="predict", component=method, directory=predict_dir,
                        inputs=inputs, outputs={"output": predict_dir / "prediction.h5ad"}, arguments={},
                        depends=[split_step.id], labels=labels)
                    steps.append(predict_step)
                    for metric in metrics:
                        score_dir = output_dir / "scores" / split / method.name / metric.name
                        steps.append(Step(
                            id=f"score/{split}/{method.name}/{metric.name}", stage="score", component=metric,
                            directory=score_dir,
                            inputs={"input_solution": split_step.outputs["output_solution"],
                                    "input_prediction": predict_step.outputs["output"]},
                            outputs={"output": score_dir / "score.h5ad"}, arguments={},
                            depends=[predict_step.id], labels={**labels, "metric_component": metric.name}))
    return steps, skipped


def _cache_key(step: Step, upstream_keys: list[str], digests: dict) -> str:
    payload = {"component": digests[step.component.path], "argv": step.argv(), "upstream": upstream_keys,
               "perturbcast": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _write_json_atomic(path: Path, payload: dict):
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def _last_error(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith(("[error]", "[not applicable]"))]
    return (errors[-1] if errors else (lines[-1] if lines else "")).strip()[:500]


_worker = threading.local()


# imported by every component; loaded once per worker instead of once per step (~0.6 s each)
PRELOADED_MODULES = ("numpy", "scipy.sparse", "pandas", "h5py", "anndata")


def _spawner() -> Spawner:
    """This worker thread's fork server (so each step's peak memory is its own, not the engine's)."""
    spawner = getattr(_worker, "spawner", None)
    if spawner is None or spawner.process.poll() is not None:  # none yet, or it died (killed, out of memory)
        _worker.spawner = Spawner(preload=PRELOADED_MODULES)
    return _worker.spawner


def run_step(step: Step, cache_key: str) -> StepRecord:
    """Run one step in a fresh process; its outputs and log stay in the step's directory."""
    record_path = step.directory / "step.json"
    if step.directory.exists():
        shutil.rmtree(step.directory)  # stale outputs of an older or failed attempt
    step.directory.mkdir(parents=True)
    log_path = step.directory / "log.txt"
    with open(log_path, "w") as log:
        log.write(f"$ perturbcast run {step.component.directory} -- {' '.join(step.argv())}\n")
        log.flush()
        try:
            # only Python scripts run in the preloaded fork server; R and Bash steps start from a small one
            # (viash.run_script), which keeps their peak memory their own
            python_step = step.component.main_script.get("type", "python_script") == "python_script"
            result = run_component(step.component.path, step.argv(), stdout=log, stderr=log,
                                   spawner=_spawner() if python_step else None)
            exit_code, wall, peak = result.exit_code, result.wall_seconds, result.peak_rss_bytes
        except Exception as error:  # a broken config or resource must not stop the other steps
            log.write(f"[error] {type(error).__name__}: {error}\n")
            exit_code, wall, peak = 1, 0.0, 0
    status = "ok" if exit_code == 0 else "not_applicable" if exit_code == NOT_APPLICABLE_EXIT_CODE else "failed"
    reason = "" if status == "ok" else _last_error(log_path)
    if status == "ok" and step.stage == "split":
        # every split is checked for leakage before any method sees it
        problems = check_split(step.outputs["output_train"], step.outputs["output_test"],
                               step.outputs["output_solution"], common_path=step.inputs["input"])
        if problems:
            status, reason = "failed", "leakage: " + "; ".join(problems[:3])
            with open(log_path, "a") as log:
                log.writelines(f"[error] leakage: {problem}\n" for problem in problems)
    record = StepRecord(
        id=step.id, stage=step.stage, component=step.component.name, status=status, cache_key=cache_key,
        exit_code=exit_code, wall_seconds=round(wall, 3), peak_rss_bytes=peak,
        reason=reason, labels=step.labels, outputs={k: str(v) for k, v in step.outputs.items()})
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
    if stored["status"] == "ok" and not all(Path(p).exists() for p in step.outputs.values()):
        return None
    record = StepRecord(**{k: v for k, v in stored.items() if k in StepRecord.__dataclass_fields__})
    record.cached = True
    return record


class Progress:
    """One line per finished step with a bar, on stderr."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream, self.lock = total, 0, stream, threading.Lock()

    def update(self, record: StepRecord):
        with self.lock:
            self.done += 1
            width = 20
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            cost = "cached" if record.cached else f"{record.wall_seconds:6.1f}s {record.peak_rss_bytes / 2**20:7.0f} MiB"
            status = record.status.replace("_", " ")
            line = f"[{bar}] {self.done:>4}/{self.total} {status:<14} {record.id}  {cost}"
            if record.reason and record.status != "ok":
                line += f"\n        {record.reason}"
            print(line, file=self.stream, flush=True)


def execute(steps: list[Step], jobs: int = 1, progress: Progress | None = None) -> list[StepRecord]:
    """Run `steps` respecting dependencies with up to `jobs` at once; never stops on a failing step."""
    digests = {}
    for step in steps:
        if step.component.path not in digests:
            digests[step.component.path] = component_digest(step.component)
    by_id = {step.id: step for step in steps}
    records: dict[str, StepRecord] = {}
    keys: dict[str, str] = {}
    pending = list(steps)
    running = {}
    progress = progress or Progress(len(steps))

    def finish(record: StepRecord):
        records[record.id] = record
        progress.update(record)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while pending or running:
            still_pending = []
            for step in pending:
                upstream = [records.get(d) for d in step.depends]
                if any(r is None for r in upstream):
                    still_pending.append(step)
                    continue
                blocked = [r for r in upstream if r.status != "ok"]
                if blocked:
                    finish(StepRecord(id=step.id, stage=step.stage, component=step.component.name,
                                      status="not_applicable" if all(r.status == "not_applicable" for r in blocked) else "skipped",
                                      reason=f"upstream {blocked[0].id} {blocked[0].status.replace('_', ' ')}",
                                      labels=step.labels))
                    continue
                keys[step.id] = _cache_key(step, [keys[d] for d in step.depends], digests)
                cached = _cached_record(step, keys[step.id])
                if cached is not None:
                    finish(cached)
                    continue
                running[pool.submit(run_step, step, keys[step.id])] = step
            pending = still_pending
            if not running:
                if pending:  # dependencies that are not part of the plan
                    for step in pending:
                        missing = [d for d in step.depends if d not in by_id]
                        finish(StepRecord(id=step.id, stage=step.stage, component=step.component.name,
                                          status="skipped", reason=f"depends on unplanned {missing}", labels=step.labels))
                    pending = []
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                running.pop(future)
                finish(future.result())
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


def trace_rows(records: list[StepRecord]) -> list[dict]:
    return [{"step": r.id, "stage": r.stage, "component": r.component, "status": r.status,
             "cached": r.cached, "exit_code": r.exit_code, "wall_seconds": r.wall_seconds,
             "peak_rss_mib": round(r.peak_rss_bytes / 2**20, 1), "reason": r.reason} for r in records]


def write_trace(records: list[StepRecord], path: Path):
    import pandas as pd

    pd.DataFrame(trace_rows(records)).to_csv(path, sep="\t", index=False)
