"""The `step` command: run one step of `perturbcast plan --json` in a Nextflow task, leaving the engine's record.

    perturbcast step step.json --component project/src/component/<name> --staged staged --attempt 1 --max-attempts 3

main.nf stages a step's input files as `staged/in1/<name>`, `staged/in2/<name>`, ... in the order of the step's
`inputs` then `staged` (plan_cli); this command links them to their places in the results layout
(`tasks/<dataset>/<task>/seed_0/fold_0/train.h5ad`, ...), so the component gets exactly the arguments the
engine gives it, then runs it through the viash-compatible runner and writes, in the step's folder, `log.txt` and
`step.json`: the engine's StepRecord (status ok | failed | not_applicable | not_installed, exit code, wall time,
peak memory, reason), so `perturbcast aggregate --plan plan.json` builds the same trace, tables and report as the
engine's run. A dataset step also writes `dataset_uns.yaml` (its uns, for dataset_uns.yaml without staging the
dataset into the aggregation) and an OpenProblems-style `state.yaml` (its id and files).

Exit code: a task killed for memory or time (137-140, 143) before its last attempt exits with that code, so
that Nextflow retries it with more resources; otherwise 0 (the record says what happened: one failing component
never stops the others), or 1 for a failure with --fail-fast.

A score unit (plan_cli.score_unit_documents: the metrics of one prediction) runs its members one after another
in the same way, each leaving its own step.json and log.txt in its own folder.

`check` steps (plan_cli.check_steps) run perturbcast's leakage checks on a split or a complete partition and
write `check.json` / `partition_check.json` instead. File names, statuses and exit codes are perturbcast.layout's.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import layout
from .layout import Status

RETRIED_EXIT_CODES = (137, 138, 139, 140, 143)


def add_command(commands):
    step = commands.add_parser(
        "step", help="run one step of `perturbcast plan --json` (the task of main.nf's processes)",
        description="Run one planned step (a JSON object of `perturbcast plan --json`) in the current folder, as a "
                    "Nextflow task does: link the staged inputs into the results layout, run the component, and "
                    "write log.txt and step.json (the engine's step record) in the step's folder.")
    step.add_argument("step", help="the step as JSON (a file)")
    step.add_argument("--component", help="the component's folder (default: the step's component.dir under --project)")
    step.add_argument("--components",
                      help="a score unit's folder holding its members' component folders by name (default: "
                           "--project's src/component)")
    step.add_argument("--project", default="project", help="the staged project (default: %(default)s)")
    step.add_argument("--staged", default="staged", help="folder of the staged inputs in1/, in2/, ... (default: %(default)s)")
    step.add_argument("--attempt", type=int, default=1, help="Nextflow's task.attempt")
    step.add_argument("--max-attempts", type=int, default=1, help="attempts Nextflow makes (max_retries + 1)")
    step.add_argument("--cpus", type=int, help="CPUs of the task (meta['cpus'])")
    step.add_argument("--memory", help="memory of the task, e.g. 8192MB (meta['memory_*'])")
    step.add_argument("--fail-fast", action="store_true", help="exit 1 when the component fails")
    step.set_defaults(handler=step_command)


def _staged_files(staged: Path) -> list[Path]:
    """The staged inputs in the order main.nf listed them (`in1/x`, `in2/y`, ...; a lone file may be `in/x`)."""
    if not staged.is_dir():
        return []

    def index(path: Path) -> int:
        match = re.search(r"(\d+)$", path.name)
        return int(match.group(1)) if match else 0

    files = []
    for folder in sorted((p for p in staged.iterdir() if p.is_dir()), key=index):
        files += sorted(folder.iterdir())
    return files


def link_inputs(step: dict, staged: Path) -> dict:
    """Link the staged files to the step's input paths; returns the `staged` arguments (user files) as paths here."""
    targets = list(step["inputs"].values()) + [None] * len(step.get("staged") or {})
    files = _staged_files(staged)
    if len(files) != len(targets):
        raise ValueError(f"step {step['id']}: {len(files)} staged files for {len(targets)} inputs")
    user = {}
    names = list(step.get("staged") or {})
    for position, (target, source) in enumerate(zip(targets, files)):
        if target is None:
            user[names[position - len(step["inputs"])]] = str(source)
            continue
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(os.path.abspath(source), target)
    return user


def _argv(step: dict, user: dict) -> list[str]:
    argv = []
    for name, value in {**step["inputs"], **user, **step["outputs"], **step["arguments"]}.items():
        argv += [f"--{name}", str(value)]
    return argv


def _write_json(path: Path, payload: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def dataset_uns(path: Path) -> list:
    """What dataset_uns.yaml lists for a dataset (openproblems.write_openproblems_files' selection of its uns)."""
    import anndata as ad

    from .openproblems import _plain

    adata = ad.read_h5ad(path, backed="r")
    try:
        return _plain({k: v for k, v in adata.uns.items() if not isinstance(v, dict) or k == "dataset_report"})
    finally:
        adata.file.close()


def run_component_step(step: dict, args, component: Path | None = None, user: dict | None = None) -> int:
    """One component step; `component` and `user` given: a member of a score unit, its inputs already linked."""
    from . import engine, engine_guard as guard
    from .runner import run_component

    if user is None:
        user = link_inputs(step, Path(args.staged))
    directory = Path(step["directory"])
    directory.mkdir(parents=True, exist_ok=True)
    component = Path(component or args.component or Path(args.project) / step["component"]["dir"])
    argv = _argv(step, user)
    log_path = directory / layout.STEP_LOG
    started = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ perturbcast run {component} -- {' '.join(argv)}\n")
        log.flush()
        try:
            # the runner's own messages (a bad argument, ...) go to the log too, as the engine's fork server has them
            with contextlib.redirect_stderr(log):
                result = run_component(component, argv, stdout=log, stderr=log, cpus=args.cpus, memory=args.memory)
            exit_code, wall, peak = result.exit_code, result.wall_seconds, result.peak_rss_bytes
        except Exception as error:  # a broken config or resource fails this step only
            log.write(f"{layout.ERROR_TAG} {type(error).__name__}: {error}\n")
            exit_code, wall, peak = 1, time.monotonic() - started, 0
    killed = 128 - exit_code if exit_code < 0 else exit_code  # a signal (-9) as the shell reports it (137)
    if killed in RETRIED_EXIT_CODES and args.attempt < args.max_attempts:
        print(f"[retry] {step['id']}: exit code {killed} on attempt {args.attempt} of {args.max_attempts}",
              file=sys.stderr)
        return killed
    status = Status.of_exit_code(exit_code)
    reason = ""
    if status != Status.OK:
        reason = guard.last_error(log_path) or f"exit code {exit_code}"
        if killed in RETRIED_EXIT_CODES and args.max_attempts > 1:
            reason = f"killed (exit code {killed}) on the last of {args.max_attempts} attempts: {reason}"
    sealed = {}
    outputs = {name: Path(path) for name, path in step["outputs"].items()}
    if status == Status.OK:
        missing = [name for name, path in outputs.items() if not path.exists()]
        if missing:
            status, reason = Status.FAILED, f"{layout.ERROR_TAG} outputs not written: {', '.join(missing)}"
        else:
            sealed = guard.seal_outputs(outputs, directory)
            if step["stage"] == layout.DATASET:
                import yaml
                (directory / layout.STEP_DATASET_UNS).write_text(
                    yaml.safe_dump(dataset_uns(outputs["output"]), sort_keys=False, allow_unicode=True))
                # as OpenProblems' dataset folders have it: the id and the files (what --datasets_dir reuses)
                files = [f"{'output_dataset' if name == 'output' else name}: !file '{path.name}'" for name, path in outputs.items()]
                (directory / layout.STEP_STATE).write_text("\n".join([f"id: '{step['labels']['dataset_id']}'", *files]) + "\n")
            elif step["stage"] == layout.SPLIT:
                # a split's state: one input state of the viash workflow src/workflows/run_benchmark (OpenProblems'
                # launch: --input_states 'tasks/**/state.yaml' --rename_keys 'input_train:output_train;...')
                key = layout.split_step_id(step["id"])[1]
                ids = [f"{name}: '{step['labels'][name]}'" for name in ("dataset_id", "task_id")]
                files = [f"{name}: !file '{path.name}'" for name, path in outputs.items()]
                (directory / layout.STEP_STATE).write_text("\n".join([f"id: '{key}'", *ids, *files]) + "\n")
    if status != Status.OK:  # what a failed step left is not an output
        for path in outputs.values():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
    record = engine.StepRecord(
        id=step["id"], stage=step["stage"], component=step["component"]["name"], status=status,
        cache_key=step["component"].get("digest", ""), exit_code=exit_code, wall_seconds=round(wall, 3),
        peak_rss_bytes=peak, reason=reason, labels=step["labels"], outputs={k: str(v) for k, v in step["outputs"].items()},
        output_digests=sealed, limits={"timeout_seconds": None, "memory_bytes": None})
    _write_json(directory / layout.STEP_RECORD, {**asdict(record), "engine": "nextflow", "attempt": args.attempt,
                                          "arguments": step["arguments"]})
    return 1 if status == Status.FAILED and args.fail_fast else 0


def run_score_unit(unit: dict, args) -> int:
    """The score steps of one prediction (plan_cli.score_unit_documents), one after another, each with its own
    log and step.json: a failing metric fails alone. A member killed for memory or time before the last attempt
    ends the task with its exit code, so Nextflow retries the whole unit with more resources."""
    user = link_inputs(unit, Path(args.staged))
    folder = Path(args.components or Path(args.project) / "src" / "component")
    code = 0
    for member in unit["steps"]:
        result = run_component_step(member, args, component=folder / member["component"]["name"], user=user)
        if result in RETRIED_EXIT_CODES or (result and args.fail_fast):
            return result
        code = code or result
    return code


def check_record_path(step: dict) -> Path:
    return Path(step["directory"]) / layout.CHECK_RECORDS[step["kind"]]


def run_check_step(step: dict, args) -> int:
    from .leakage import check_partition, check_split

    link_inputs(step, Path(args.staged))
    inputs = step["inputs"]
    started = time.monotonic()
    try:
        if step["kind"] == layout.SPLIT:
            problems = check_split(inputs["train"], inputs["test"], inputs["solution"], common_path=inputs["common"],
                                   train_cells_path=inputs.get("train_cells"),
                                   solution_cells_path=inputs.get("solution_cells"), cells_path=inputs.get("cells"))
        else:
            tests = layout.partition_test_inputs(inputs)
            problems = check_partition(tests, common_path=inputs["common"])
    except Exception as error:  # a check that cannot read an output fails the split only
        problems = [f"{layout.ERROR_TAG} {type(error).__name__}: {error}"]
    for problem in problems:
        print(f"[leak] {problem}", file=sys.stderr)
    _write_json(check_record_path(step), {
        "id": step["id"], "kind": step["kind"], "guards": step.get("guards"), "labels": step["labels"],
        "status": Status.FAILED if problems else Status.OK, "problems": problems,
        "wall_seconds": round(time.monotonic() - started, 3)})
    return 1 if problems and args.fail_fast else 0


def read_step(path: str) -> dict:
    """The planned step in `path` (one object of `plan --json`); ValueError with one line naming the file
    and what is wrong."""
    problem = layout.not_a_file(path)
    if problem:
        raise ValueError(f"step file '{path}': {problem}")
    try:
        step = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"step file '{path}': cannot be read ({error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"step file '{path}': not valid JSON ({error.msg} at line {error.lineno}, column "
                         f"{error.colno}); expected one step object of `perturbcast plan --json`") from None
    missing = [key for key in ("id", "stage") if not isinstance(step, dict) or key not in step]
    if missing:
        raise ValueError(f"step file '{path}': has no '{missing[0]}'; expected one step object of "
                         "`perturbcast plan --json`")
    return step


def step_command(args) -> int:
    try:
        step = read_step(args.step)
    except ValueError as error:
        print(f"{layout.ERROR_TAG} {error}", file=sys.stderr)
        return 2
    if step["stage"] == layout.CHECK:
        return run_check_step(step, args)
    if step.get("kind") == layout.SCORE_UNIT:
        return run_score_unit(step, args)
    return run_component_step(step, args)
