"""The `plan` command: the benchmark's steps for a selection, as text or JSON (one planner for both engines).

    perturbcast plan --json --methods linear_baseline --tasks unseen_perturbation > plan.json

`perturbcast benchmark` runs `engine.plan`'s steps itself; `main.nf` runs this command first (its PLAN process)
and only wires channels from the JSON, so the selection, applicability, step ids, folders and arguments of the
two engines cannot drift apart. The selection options are `benchmark`'s (engine_cli.add_selection_arguments),
plus what a Nextflow params file can say on top (`--exclude-*`, `--use-test-arguments`, `--stages`).

JSON (`version` 1): `steps`, in dependency order, each with
  id, stage (dataset | split | predict | score | check), component {name, namespace, type, config, dir, version,
  digest}, directory, inputs {argument: path}, outputs {argument: path}, staged {argument: path},
  arguments {name: value}, depends [step ids], labels {dataset_id, task_id, ...}, resource_labels [lowmem, ...],
  runner_digest (this package, src/api, src/utils: part of every Nextflow task's hash);
`score_units`: the score steps of one prediction that share an image, run by one task (steps.score_units; the
engine runs the same units as one worker job): id, stage `score`, kind `score_unit`, the first member's component
(its image), directory (the members' parent), inputs (every member's, once), depends, labels, resource_labels
(the largest of each kind), runner_digest and `steps` (the members' own documents, each also in `steps` with
`unit` naming its unit); and
`not_applicable` (predictor x task pairs excluded by `info.supported_tasks`), `broken_configs`, `selection`,
`package`. Paths under the results folder are relative to it (the layout both engines publish); `staged` holds
the user's own files a loader reads (a `--dataset-file` or a spec's `file:` entries), as given, for Nextflow
to stage. `check` steps are the leakage checks the engine runs inside its split steps (perturbcast.leakage):
one per split (`check/split/...`) and one per complete partition (`check/partition/...`); they have
no component and run the tooling (`perturbcast check-split`). Ids, folders, file names and statuses are
perturbcast.layout's.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import layout
from .layout import Status

PLAN_VERSION = 1
CHECK_STAGE = layout.CHECK
# The plan's list of score units (what main.nf's SCORE processes run: each prediction's metrics, in one task).
SCORE_UNITS = "score_units"
# The plan's list of the steps not applicable by declaration (info.supported_tasks), named after their status.
DECLARED = Status.NOT_APPLICABLE.value


def add_command(commands):
    from .engine_cli import add_selection_arguments

    plan = commands.add_parser(
        "plan", help="print the benchmark's steps for a selection (--json: for main.nf)",
        description="Plan the benchmark exactly as `perturbcast benchmark` would (same selection options) and print "
                    "its steps: id, component, arguments, inputs, outputs, dependencies and labels. `main.nf` runs "
                    "`perturbcast plan --json` first and wires its channels from the result.")
    add_selection_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (default: one line per step)")
    plan.add_argument("--output", default=".",
                      help="results folder the paths are relative to in the JSON (default: %(default)s)")
    for kind in ("datasets", "tasks", "methods", "metrics"):
        plan.add_argument(f"--exclude-{kind}", nargs="+", metavar="ID", help=f"leave out these {kind}")
    plan.add_argument("--use-test-arguments", action="store_true",
                      help="lay each loader's info.test_arguments over its datasets' arguments (tiny data)")
    plan.add_argument("--stages", nargs="+", metavar="STAGE",
                      choices=[*layout.STAGES, layout.CHECK],
                      help="only the steps of these stages (e.g. `dataset` for process_datasets)")
    plan.set_defaults(handler=plan_command)


def _names(values):
    from .engine_cli import _names as names
    return names(values)


def _spec_extras(args, root) -> tuple[dict, bool]:
    """The Nextflow-only selection keys of a spec (exclude_*, use_test_arguments); command-line options win."""
    excludes = {kind: _names(getattr(args, f"exclude_{kind}")) for kind in ("datasets", "tasks", "methods", "metrics")}
    test_arguments = args.use_test_arguments
    if args.spec:
        from .spec import load_spec
        spec = load_spec(args.spec, root=root)
        for kind in excludes:
            if excludes[kind] is None and spec.get(f"exclude_{kind}"):
                excludes[kind] = spec[f"exclude_{kind}"]
        test_arguments = test_arguments or bool(spec.get("use_test_arguments"))
    return excludes, test_arguments


def _apply_extras(root: Path, selection, excludes: dict, test_arguments: bool):
    """Exclusions and test arguments on top of `selection`, by planning once and naming what it chose."""
    from . import engine

    if not any(excludes.values()) and not test_arguments:
        return selection
    steps, declared = engine.plan(root, Path("/nonexistent-results"), selection)
    chosen = {"datasets": [], "tasks": [], "methods": [], "metrics": []}
    for item in [*steps, *declared]:
        labels = item.labels
        for kind, key in (("datasets", "dataset_id"), ("tasks", "task_id"), ("methods", "method_id"),
                          ("metrics", "metric_component")):
            if key in labels and labels[key] not in chosen[kind]:
                chosen[kind].append(labels[key])
    known = {c.name for c in engine.discover_components(root)} | set(chosen["datasets"])
    known |= {d["id"] for c in engine.discover_components(root) if c.component_type == "dataset_loader"
              for d in engine.dataset_instances(c)}
    for kind, names in excludes.items():
        unknown = sorted(set(names or []) - known)
        if unknown:
            raise ValueError(f"--exclude-{kind}: unknown {kind} {unknown}")
        if names:
            setattr(selection, kind, [name for name in chosen[kind] if name not in names])
    if test_arguments:
        loaders = {s.labels["dataset_id"]: s.component for s in steps if s.stage == layout.DATASET}
        user = {d["id"] for d in selection.extra_datasets}
        for dataset_id, loader in loaders.items():
            if dataset_id not in user and loader.info.get("test_arguments"):
                selection.dataset_arguments[dataset_id] = {**selection.dataset_arguments.get(dataset_id, {}),
                                                           **loader.info["test_arguments"]}
    return selection


def _relative(value, output: Path):
    if isinstance(value, Path):
        try:
            return value.relative_to(output).as_posix()
        except ValueError:
            return str(value)
    return value


def step_json(step, output: Path, root: Path, digests: dict) -> dict:
    """One engine Step as the plan's JSON (paths under `output` relative to it)."""
    from .engine_guard import component_labels
    from .userdata import LOADER

    component = step.component
    if component.path not in digests:
        from .engine import component_digest
        digests[component.path] = component_digest(component)
    arguments = dict(step.arguments)
    staged = {}
    if step.stage == layout.DATASET and component.name == LOADER and "input" in arguments:
        staged["input"] = arguments.pop("input")  # the user's own file: Nextflow stages it
    return {
        "id": step.id, "stage": step.stage,
        "component": {"name": component.name, "namespace": component.namespace, "type": component.component_type,
                      "config": component.path.relative_to(root).as_posix(),
                      "dir": component.directory.relative_to(root).as_posix(),
                      "version": component.version, "digest": digests[component.path]},
        "directory": _relative(step.directory, output),
        "inputs": {k: _relative(v, output) for k, v in step.inputs.items()},
        "outputs": {k: _relative(v, output) for k, v in step.outputs.items()},
        "staged": staged,
        "arguments": arguments,
        "depends": list(step.depends),
        "labels": dict(step.labels),
        "resource_labels": component_labels(component),
    }


def check_steps(steps: list, output: Path, n_folds: int) -> list[dict]:
    """The leakage checks of the engine as steps: one per split, one per partition whose every fold is planned."""
    checks, partitions = [], {}
    for step in steps:
        if step.stage != layout.SPLIT:
            continue
        inputs = {"common": step.inputs["input"], "train": step.outputs["output_train"],
                  "test": step.outputs["output_test"], "solution": step.outputs["output_solution"]}
        for role, argument in (("cells", "input_cells"), ("train_cells", "output_train_cells"),
                               ("solution_cells", "output_solution_cells")):
            source = step.inputs if argument.startswith("input") else step.outputs
            if argument in source:
                inputs[role] = source[argument]
        checks.append({"id": layout.check_step_id(step.id), "stage": layout.CHECK, "kind": layout.SPLIT,
                       "component": None,
                       "directory": _relative(step.directory, output),
                       "inputs": {k: _relative(v, output) for k, v in inputs.items()}, "outputs": {}, "staged": {},
                       "arguments": {}, "depends": [step.id], "labels": dict(step.labels), "resource_labels": [],
                       "guards": step.id})
        if "fold" in step.labels:
            key = (step.labels["dataset_id"], step.labels["task_id"], step.labels["seed"])
            partitions.setdefault(key, []).append(step)
    for (dataset_id, task_id, seed), members in sorted(partitions.items(), key=lambda item: str(item[0])):
        if {m.labels["fold"] for m in members} != set(range(n_folds)):
            continue  # a partition with folds left out cannot be checked for completeness
        members = sorted(members, key=lambda m: m.labels["fold"])
        inputs = {"common": _relative(members[0].inputs["input"], output)}
        inputs.update({layout.partition_test_input(m.labels["fold"]): _relative(m.outputs["output_test"], output)
                       for m in members})
        key = layout.partition_key(dataset_id, task_id, seed)
        checks.append({"id": layout.check_step_id(layout.step_id(layout.PARTITION, key)), "stage": layout.CHECK,
                       "kind": layout.PARTITION, "component": None,
                       "directory": layout.step_dir(Path(), layout.SPLIT, key).as_posix(), "inputs": inputs,
                       "outputs": {}, "staged": {}, "arguments": {},
                       "depends": [m.id for m in members],
                       "labels": {"dataset_id": dataset_id, "task_id": task_id, "seed": seed},
                       "resource_labels": [], "guards": None})
    return checks


def score_unit_documents(steps: list, documents: dict) -> list[dict]:
    """The score units (steps.score_units) as the plan's JSON: what one SCORE task of main.nf runs. A unit has
    the inputs of all its members (each path once), the largest resource label of each kind they carry
    (engine_guard.merged_labels), the image of its first member (its members share one: same engines), and
    its members' own step documents under `steps`, each run with its own record (a failing metric fails alone)."""
    from .engine_guard import merged_labels
    from .steps import score_units

    units = []
    for unit_id, members in score_units(steps).items():
        member_documents = [documents[step.id] for step in members]
        inputs, seen = {}, set()
        for document in member_documents:
            for name, path in document["inputs"].items():
                if path not in seen:
                    seen.add(path)
                    inputs[name if name not in inputs else f"{name}_{len(inputs)}"] = path
        first = member_documents[0]
        labels = {k: v for k, v in first["labels"].items() if k != "metric_component"}
        for document in member_documents:
            document["unit"] = unit_id
        units.append({
            "id": unit_id, "stage": layout.SCORE, "kind": layout.SCORE_UNIT, "component": first["component"],
            "directory": Path(first["directory"]).parent.as_posix(), "inputs": inputs, "outputs": {}, "staged": {},
            "arguments": {}, "depends": list(first["depends"]), "labels": labels,
            "resource_labels": merged_labels(d["resource_labels"] for d in member_documents),
            "steps": member_documents})
    return units


def runner_digest(root: Path) -> str:
    """SHA-256 of what runs every component besides its own folder: this package, src/api, src/utils and
    _viash.yaml. Each step carries it, so that Nextflow's -resume reruns the steps when it changes (Nextflow's
    own hash of a staged folder sees only its path, size and time)."""
    import hashlib

    digest = hashlib.sha256()
    roots = [Path(__file__).resolve().parent, root / "src" / "api", root / "src" / "utils", root / "_viash.yaml"]
    for base in roots:
        files = sorted(base.rglob("*")) if base.is_dir() else [base]
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                digest.update(f"{base.name}/{path.relative_to(base) if base.is_dir() else path.name}".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def build_plan(root: Path, output: Path, selection, stages: list | None = None) -> dict:
    """The plan of `selection` as the JSON document main.nf reads."""
    from dataclasses import asdict

    from . import engine
    from .config import load_package_config

    steps, declared = engine.plan(root, output, selection)
    digests: dict = {}
    documents = [step_json(step, output, root, digests) for step in steps]
    units = score_unit_documents(steps, {d["id"]: d for d in documents})
    documents += check_steps(steps, output, selection.n_folds)
    shared = runner_digest(root)
    for document in documents + units:
        document["runner_digest"] = shared
    if stages:
        documents = [d for d in documents if d["stage"] in stages]
        units = [u for u in units if u["stage"] in stages]
        declared = [r for r in declared if r.stage in stages]
    package = load_package_config(root)
    return {
        "version": PLAN_VERSION,
        "package": {key: package.get(key) for key in ("name", "organization", "version")}
                   | {"docker_registry": (package.get("links") or {}).get("docker_registry")},
        "selection": {"datasets": selection.datasets, "tasks": selection.tasks, "methods": selection.methods,
                      "metrics": selection.metrics, "priors": selection.priors, "seeds": selection.seeds, "n_folds": selection.n_folds,
                      "folds": selection.fold_list()},
        "steps": documents,
        SCORE_UNITS: units,
        DECLARED: [asdict(record) for record in declared],
        "broken_configs": [asdict(record) for record in engine.broken_configs()],
    }


def plan_command(args) -> int:
    from .engine_cli import selection_from_args
    from .spec import SpecError

    root, selection, code = selection_from_args(args, "plan")
    if selection is None:
        return code
    try:
        excludes, test_arguments = _spec_extras(args, root)
        selection = _apply_extras(root, selection, excludes, test_arguments)
        document = build_plan(root, Path(os.path.abspath(args.output)), selection, args.stages)
    except (ValueError, SpecError) as error:
        print(f"[error] {error}", file=sys.stderr)
        return 1
    for record in document["broken_configs"]:
        print(f"{record['reason']}: its steps are left out", file=sys.stderr)
    if args.json:
        print(json.dumps(document, indent=1, default=str))
        return 0
    for step in document["steps"]:
        what = f"{step['component']['namespace']}/{step['component']['name']}" if step["component"] else "perturbcast check-split"
        arguments = " ".join(f"--{k} {v}" for k, v in {**step["inputs"], **step["staged"], **step["outputs"],
                                                        **step["arguments"]}.items())
        print(f"{step['id']}\t{what}\t{arguments}".rstrip())
    for unit in document[SCORE_UNITS]:
        print(f"{unit['id']}\t{len(unit['steps'])} score steps in one task: "
              f"{' '.join(s['component']['name'] for s in unit['steps'])}")
    for record in document[DECLARED]:
        print(f"{record['id']}\t{Status.NOT_APPLICABLE.label}: {record['reason']}")
    return 0


# ---------------------------------------------------------------- records of a run made from a plan (Nextflow)

def _parse_duration(text: str) -> float | None:
    """Seconds of a Nextflow trace duration: raw milliseconds, or '1h 2m 3s', '2.5s', '850ms', '1d 3h'."""
    import re

    text = str(text or "").strip()
    if not text or text == "-":
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) / 1000
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\b", text)
    return sum(float(number) * units[unit] for number, unit in parts) if parts else None


def _parse_memory(text: str) -> int | None:
    """Bytes of a Nextflow trace memory value: raw bytes, or '12.3 MB', '1 GB', '512 KB', '100 B'."""
    import re

    text = str(text or "").strip()
    if not text or text == "-":
        return None
    if re.fullmatch(r"\d+", text):
        return int(text)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGTP]?B)", text)
    if not match:
        return None
    return int(float(match.group(1)) * 1024 ** "BKMGTP".index(match.group(2)[0]))


def nextflow_trace(path: Path) -> dict:
    """step id (the task tag) -> the row of its last attempt in Nextflow's trace file (trace.txt)."""
    import csv

    rows = {}
    if not Path(path).is_file():
        return rows
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            tag = row.get("tag") or ""
            try:
                attempt = int(row.get("attempt") or 0)
            except ValueError:
                attempt = 0
            if tag and (tag not in rows or attempt >= int(rows[tag].get("attempt") or 0)):
                rows[tag] = row
    return rows


def _check_record(step: dict, results: Path) -> dict | None:
    """What a check step wrote (check.json / partition_check.json in the checked folder), None if nothing."""
    path = results / step["directory"] / layout.CHECK_RECORDS[step["kind"]]
    return json.loads(path.read_text()) if path.is_file() else None


def records_from_layout(plan: dict, results: Path, trace: dict | None = None) -> list:
    """The engine's step records of a run of `plan` from what its steps left in `results` (step.json, check.json):
    the records `perturbcast benchmark` keeps in memory, so trace.tsv, the tables and the report come out the same.

    A split whose leakage check failed is failed (as the engine's split step). A planned step without a record
    is not applicable or skipped, with the engine's structured `blocked_by`, when an upstream step did not
    succeed (as engine.execute decides), else failed: its task was killed, lost or never ran (Nextflow's trace,
    when given, says with which exit code). Wall time and peak memory come from Nextflow's trace where it has
    the step."""
    from .engine import StepRecord

    trace = trace or {}
    records: dict = {}
    partitions = []
    fields = StepRecord.__dataclass_fields__
    # the split checks first: the plan lists them after every component step, and a leaky split blocks those below
    leaks = {}
    for step in plan["steps"]:
        if step["stage"] == layout.CHECK and step["kind"] == layout.SPLIT:
            check = _check_record(step, results)
            if check and check["status"] != Status.OK:
                leaks[step["guards"]] = "leakage: " + "; ".join(check["problems"][:3])
    for step in plan["steps"]:
        if step["stage"] == layout.CHECK:
            check = _check_record(step, results)
            if step["kind"] == layout.PARTITION and check is not None:
                labels = step["labels"]
                partitions.append(StepRecord(
                    id=layout.checked_step_id(step["id"]), stage=layout.SPLIT,
                    component=labels["task_id"], status=check["status"],
                    reason="partition: " + "; ".join(check["problems"][:3]) if check["problems"] else "",
                    labels=labels))
            continue
        path = results / step["directory"] / layout.STEP_RECORD
        if path.is_file():
            stored = json.loads(path.read_text())
            record = StepRecord(**{k: v for k, v in stored.items() if k in fields})
            record.outputs = {k: str(results / v) for k, v in step["outputs"].items()}
            if step["id"] in leaks and record.status == Status.OK:
                record.status, record.reason = Status.FAILED, leaks[step["id"]]
        else:
            upstream = [records.get(d) for d in step["depends"]]
            blocked = [r for r in upstream if r is None or r.status != Status.OK]
            cause = {}
            if blocked and all(r is not None for r in blocked):
                cause = layout.blocked_by(blocked[0].id, blocked[0].status)
                status, reason = layout.blocked_status(r.status for r in blocked), layout.blocked_reason(cause)
            else:
                row = trace.get(step["id"]) or trace.get(step.get("unit"), {})  # a score step ran in its unit's task
                status = Status.FAILED
                reason = (f"no step record: the task ended with exit code {row.get('exit')} ({row.get('status')}, attempt "
                          f"{row.get('attempt')}; {layout.NEXTFLOW_TRACE})" if row else
                          f"no step record: the task was killed, lost or never ran (see Nextflow's "
                          f"{layout.NEXTFLOW_TRACE} and log)")
            record = StepRecord(id=step["id"], stage=step["stage"], component=step["component"]["name"], status=status,
                                reason=reason, blocked_by=cause, labels=step["labels"])
        row = trace.get(step["id"])
        if row and str(row.get("status", "")).upper() in ("COMPLETED", "CACHED"):
            wall, peak = _parse_duration(row.get("realtime")), _parse_memory(row.get("peak_rss"))
            record.wall_seconds = round(wall, 3) if wall is not None else record.wall_seconds
            record.peak_rss_bytes = peak if peak is not None else record.peak_rss_bytes
        records[step["id"]] = record
    declared = [StepRecord(**{k: v for k, v in r.items() if k in fields}) for r in plan.get(DECLARED, [])]
    broken = [StepRecord(**{k: v for k, v in r.items() if k in fields}) for r in plan.get("broken_configs", [])]
    return list(records.values()) + partitions + declared + broken


def link_staged(results: Path, staged: Path, paths: list[str]):
    """Link staged files (`staged/in1/x`, ... in the order of `paths`) to their layout paths under `results`."""
    from .step_cli import _staged_files

    files = _staged_files(staged)
    if len(files) != len(paths):
        raise ValueError(f"{len(files)} staged files for {len(paths)} layout paths")
    for path, source in zip(paths, files):
        target = results / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(os.path.abspath(source), target)


def write_dataset_uns(results: Path):
    """dataset_uns.yaml from the dataset steps' own dataset_uns.yaml where the dataset.h5ad itself is not there
    (Nextflow's aggregation stages the datasets' uns, not the datasets)."""
    import yaml

    from .step_cli import dataset_uns

    dataset_file = layout.STAGE_OUTPUTS[layout.DATASET]["output"]
    folders = sorted(p for p in (results / layout.STAGE_FOLDERS[layout.DATASET]).glob("*") if p.is_dir())
    if not any(not (f / dataset_file).exists() and (f / layout.STEP_DATASET_UNS).is_file() for f in folders):
        return
    datasets = []
    for folder in folders:
        if (folder / dataset_file).exists():
            datasets.append(dataset_uns(folder / dataset_file))
        elif (folder / layout.STEP_DATASET_UNS).is_file():
            datasets.append(yaml.safe_load((folder / layout.STEP_DATASET_UNS).read_text()))
    (results / layout.DATASET_UNS).write_text(yaml.safe_dump(datasets, sort_keys=False, allow_unicode=True))


def write_state(results: Path, state_id: str):
    """state.yaml as OpenProblems' workflows publish it: the run's id and its output files."""
    files = {"output_scores": layout.SCORE_UNS, "output_dataset_info": layout.DATASET_UNS,
             "output_method_configs": layout.METHOD_CONFIGS, "output_metric_configs": layout.METRIC_CONFIGS,
             "output_task_info": layout.TASK_INFO, "output_results": layout.RESULTS, "output_report": layout.REPORT,
             "output_step_trace": layout.TRACE, "output_trace": layout.NEXTFLOW_TRACE}
    lines = [f"id: '{state_id}'"] + [f"{key}: !file '{name}'" for key, name in files.items()]
    (results / layout.STATE).write_text("\n".join(lines) + "\n")
