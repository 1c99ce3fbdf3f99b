"""The `plan` command: the benchmark's steps for a selection, as text or JSON (one planner for both engines).

    perturbcast plan --json --methods linear_baseline --tasks unseen_perturbation > plan.json

`perturbcast benchmark` runs `engine.plan`'s steps itself; `main.nf` runs this command first (its PLAN process)
and only wires channels from the JSON, so the selection, applicability, step ids, folders and arguments of the
two engines cannot drift apart. The selection options are `benchmark`'s (engine_cli.add_selection_arguments),
plus what a Nextflow params file can say on top (`--exclude-*`, `--use-test-arguments`, `--stages`).

JSON (`version` 1): `steps`, in dependency order, each with
  id, stage (dataset | split | predict | score | check), component {name, namespace, type, config, dir, version,
  digest}, directory, inputs {argument: path}, outputs {argument: path}, staged {argument: path},
  arguments {name: value}, depends [step ids], labels {dataset_id, task_id, ...}, resource_labels [lowmem, ...];
and `not_applicable` (predictor x task pairs excluded by `info.supported_tasks`), `broken_configs`, `selection`,
`package`. Paths under the results folder are relative to it (the layout both engines publish); `staged` holds
the user's own files a loader reads (a `--dataset-file` or a spec's `file:` entries), as given, for Nextflow
to stage. `check` steps are the leakage checks the engine runs inside its split steps (perturbcast.leakage):
one per split (`check/split/...`) and one per complete partition (`check/partition/...`); they have
no component and run the tooling (`perturbcast check-split`).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PLAN_VERSION = 1
CHECK_STAGE = "check"


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
                      choices=["dataset", "split", "predict", "score", CHECK_STAGE],
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
        loaders = {s.labels["dataset_id"]: s.component for s in steps if s.stage == "dataset"}
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
    if step.stage == "dataset" and component.name == LOADER and "input" in arguments:
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
        if step.stage != "split":
            continue
        inputs = {"common": step.inputs["input"], "train": step.outputs["output_train"],
                  "test": step.outputs["output_test"], "solution": step.outputs["output_solution"]}
        for role, argument in (("cells", "input_cells"), ("train_cells", "output_train_cells"),
                               ("solution_cells", "output_solution_cells")):
            source = step.inputs if argument.startswith("input") else step.outputs
            if argument in source:
                inputs[role] = source[argument]
        checks.append({"id": f"check/{step.id}", "stage": CHECK_STAGE, "kind": "split", "component": None,
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
        inputs.update({f"test_fold_{m.labels['fold']}": _relative(m.outputs["output_test"], output) for m in members})
        key = f"{dataset_id}/{task_id}/seed_{seed}"
        checks.append({"id": f"check/partition/{key}", "stage": CHECK_STAGE, "kind": "partition", "component": None,
                       "directory": f"tasks/{key}", "inputs": inputs, "outputs": {}, "staged": {}, "arguments": {},
                       "depends": [m.id for m in members],
                       "labels": {"dataset_id": dataset_id, "task_id": task_id, "seed": seed},
                       "resource_labels": [], "guards": None})
    return checks


def build_plan(root: Path, output: Path, selection, stages: list | None = None) -> dict:
    """The plan of `selection` as the JSON document main.nf reads."""
    from dataclasses import asdict

    from . import engine
    from .config import load_package_config

    steps, declared = engine.plan(root, output, selection)
    digests: dict = {}
    documents = [step_json(step, output, root, digests) for step in steps]
    documents += check_steps(steps, output, selection.n_folds)
    if stages:
        documents = [d for d in documents if d["stage"] in stages]
        declared = [r for r in declared if r.stage in stages]
    package = load_package_config(root)
    return {
        "version": PLAN_VERSION,
        "package": {key: package.get(key) for key in ("name", "organization", "version")}
                   | {"docker_registry": (package.get("links") or {}).get("docker_registry")},
        "selection": {"datasets": selection.datasets, "tasks": selection.tasks, "methods": selection.methods,
                      "metrics": selection.metrics, "seeds": selection.seeds, "n_folds": selection.n_folds,
                      "folds": selection.fold_list()},
        "steps": documents,
        "not_applicable": [asdict(record) for record in declared],
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
    for record in document["not_applicable"]:
        print(f"{record['id']}\tnot applicable: {record['reason']}")
    return 0
