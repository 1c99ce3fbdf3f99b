"""The single-machine engine's plan: the benchmark DAG of `main.nf` as steps, and what is not applicable.

Stages (each a component type, discovered under `src/`): dataset (loader) -> split (task x seed x fold)
-> predict (method or control) -> score (metric); step ids and folders are perturbcast.layout's (listed
there).

A seed is one K-fold partition of the held-out units; every fold of it is run, so the folds together test
every eligible perturbation once.

Every step runs through the viash-compatible runner in its own process (perturbcast.engine_run); every
split is checked for leakage (perturbcast.leakage) before methods see it. A finished step leaves
`step.json` (status, cache key, wall time, peak memory) so a re-run skips it; a failing step is
recorded and only its own downstream steps are skipped.

This module re-exports the executor's names (`execute`, `INTERRUPT`, `write_trace`, ...) and the plan's
records (`Step`, `StepRecord`, `Selection`), so `perturbcast.engine` stays the one import of the engine.
"""
from __future__ import annotations

from pathlib import Path

from . import config as _config
from . import layout
from .config import ComponentConfig
from .layout import vocabulary
from .layout import DATASET, PREDICT, PRIOR, SCORE, SPLIT, STAGE_OF_TYPE, STAGES, Status  # noqa: F401 (re-exported)
from .leakage import check_partition
from .steps import Selection, Step, StepRecord  # noqa: F401 (re-exported)
from .userdata import writes_no_cells
from .engine_run import (  # noqa: F401 (re-exported: the engine's public names)
    DISK, INTERRUPT, PRELOADED_MODULES, STOP_GRACE_SECONDS, Progress, ResultsLocked, _spawner, component_digest,
    execute, results_lock, run_step, trace_rows, write_trace)

# Controls every method selection runs with: the baseline and ceiling of the calibration, the perfect and
# the uninformative predictions that frame the scale (skipped silently where a control is absent).
SCALE_CONTROLS = ("train_mean", "replicate_ceiling", "ground_truth", "no_change", "random_perturbation")

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
        records.append(StepRecord(id=layout.step_id(layout.CONFIG, f"{where.parent.parent.name}/{where.parent.name}"),
                                  stage=layout.CONFIG, component=where.parent.name, status=Status.FAILED,
                                  reason=f"{layout.ERROR_TAG} {layout.INVALID_CONFIG}: {text}"))
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


# What the engine gives a prior component: the dataset (its gene universe), another dataset (a prior learnt
# elsewhere), or the method-visible files of a split (a prior learnt from the benchmarked data).
PRIOR_INPUTS = {"input", "input_reference", "input_train", "input_test", "input_train_cells", "output"}
# The files of a split a method may read; what holds the held-out effects (the whole dataset, the solution),
# which a prior learnt from a split must not declare.
METHOD_VISIBLE = {"input_train", "input_test", "input_train_cells"}
SCORING_FILES = {"input", "input_cells", "input_solution", "input_solution_cells"}


def prior_learns_from_split(prior: ComponentConfig) -> bool:
    """A prior that learns from the benchmarked data (src/api/comp_prior_from_training.yaml) is made per split
    from what a method may read (train, test, training cells), so it cannot carry a held-out effect."""
    return prior.argument("input_train") is not None


def check_priors(priors: list[ComponentConfig]):
    """A prior the benchmark cannot run (an argument it cannot give, no slot declared) as one ValueError."""
    for prior in priors:
        needs = [a.plain_name for a in prior.arguments if a.required and a.plain_name not in PRIOR_INPUTS]
        if needs:
            raise ValueError(f"prior {prior.name} needs --{', --'.join(needs)}, which a benchmark run cannot give; run it "
                             f"with `perturbcast run src/priors/{prior.name}` and pass its output to a method as --input_prior")
        if prior_learns_from_split(prior):
            # it sees what a method sees, no more: the solution and the whole dataset hold the held-out effects
            beyond = sorted({a.plain_name for a in prior.arguments} & SCORING_FILES)
            if beyond:
                raise ValueError(f"prior {prior.name} learns from a split (--input_train) and also reads --{', --'.join(beyond)}; "
                                 f"a prior learnt from the benchmarked data may read only {', '.join(sorted(METHOD_VISIBLE))}")
        if not prior.info.get("prior_provides"):
            raise ValueError(f"prior {prior.name} declares no info.prior_provides (gene_embedding, is_regulator, network)")


def prior_variants(method: ComponentConfig, priors: list[ComponentConfig]) -> list:
    """(method id, prior or None) of every variant of `method`: alone, then with each prior that writes a slot it reads."""
    reads = set(method.info.get("uses_prior") or [])
    return [(method.name, None)] + [(vocabulary.method_variant(method.name, prior.name), prior) for prior in priors
                                    if reads & set(prior.info.get("prior_provides") or [])]


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
        # a selected component whose config is broken is not unknown: broken_configs() records it, the rest runs
        broken = {Path(getattr(e, "config_path", "")).parent.name for e in _broken_configs}
        unknown = set(wanted) - {c.name for c in configs} - broken
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
    priors = chosen(by_type.get("prior"), selection.priors) if selection.priors else []
    check_priors(priors)
    # a prior no selected method reads is not made (its steps would have no use)
    priors = [p for p in priors if any(len(prior_variants(m, [p])) > 1 for m in predictors)]
    metrics = chosen(by_type.get("metric"), selection.metrics)
    if selection.metrics is None:  # components that opt out of the default run only when named
        metrics = [m for m in metrics if m.info.get("default", True) is not False]

    # cells are made only when a selected component reads them (every loader can write millions of them)
    cell_inputs = ("input_train_cells", "input_solution_cells", "input_prediction_cells")
    # (controls declare cell inputs only to write cells for cell-level metrics, so they alone do not count)
    cells_wanted = any(c.argument(a) for c in metrics + [p for p in predictors if p.component_type == "method"]
                       for a in cell_inputs)
    prediction_cells_wanted = any(m.argument("input_prediction_cells") for m in metrics)

    def outputs(component: ComponentConfig, directory: Path, stage: str, names: tuple, optional: dict) -> dict:
        """The stage's outputs `names` and, of its optional ones (argument -> wanted by the plan), those the
        component declares."""
        extra = layout.output_paths(directory, stage, tuple(n for n, want in optional.items() if want))
        return {**layout.output_paths(directory, stage, names), **declared(component, extra)}

    dataset_steps: dict[str, Step] = {}

    def dataset_step_of(loader: ComponentConfig, instance: dict) -> Step:
        """The dataset's step, planned once (a prior's reference dataset may be one the selection does not score).
        A file in the common format has no cells: asking its loader for them would fail the dataset, not just the
        cell-level steps, which are then not applicable."""
        dataset_id = instance["id"]
        if dataset_id not in dataset_steps:
            key = layout.dataset_key(dataset_id)
            dataset_dir = layout.step_dir(output_dir, DATASET, key)
            dataset_steps[dataset_id] = Step(
                id=layout.step_id(DATASET, key), stage=DATASET, component=loader, directory=dataset_dir,
                inputs={}, outputs=outputs(loader, dataset_dir, DATASET, ("output",),
                                           {"output_cells": cells_wanted and not writes_no_cells(instance["arguments"])}),
                arguments=dict(instance["arguments"]),
                labels={"dataset_id": dataset_id})
            steps.append(dataset_steps[dataset_id])
        return dataset_steps[dataset_id]

    def prior_step(prior: ComponentConfig, scope_key: str, inputs: dict, depends: list, labels: dict) -> Step:
        key = layout.prior_key(scope_key, prior.name)
        directory = layout.step_dir(output_dir, PRIOR, key)
        step = Step(id=layout.step_id(PRIOR, key), stage=PRIOR, component=prior, directory=directory, inputs=inputs,
                    outputs=layout.output_paths(directory, PRIOR), arguments={}, depends=depends,
                    labels={**labels, "prior_id": prior.name})
        steps.append(step)
        return step

    for loader, instance in datasets:
        dataset_step_of(loader, instance)
    for loader, instance in datasets:
        dataset_id = instance["id"]
        dataset_step = dataset_steps[dataset_id]
        # priors from outside the data: one per dataset (None: not applicable, with its record)
        dataset_priors: dict[str, Step | None] = {}
        for prior in (p for p in priors if not prior_learns_from_split(p)):
            inputs, depends = {"input": dataset_step.outputs["output"]}, [dataset_step.id]
            if prior.argument("input_reference"):
                reference = next((d for d in prior.info.get("reference_datasets") or []
                                  if d != dataset_id and d in known_datasets), None)
                if reference is None:
                    key = layout.prior_key(layout.dataset_key(dataset_id), prior.name)
                    skipped.append(StepRecord(
                        id=layout.step_id(PRIOR, key), stage=PRIOR, component=prior.name, status=Status.NOT_APPLICABLE,
                        reason=f"{prior.name} learns from another dataset; none of its info.reference_datasets "
                               f"{prior.info.get('reference_datasets') or []} is a known dataset other than {dataset_id}",
                        labels={"dataset_id": dataset_id, "prior_id": prior.name}))
                    dataset_priors[prior.name] = None
                    continue
                reference_step = dataset_step_of(*known_datasets[reference])
                inputs["input_reference"] = reference_step.outputs["output"]
                depends.append(reference_step.id)
            dataset_priors[prior.name] = prior_step(prior, layout.dataset_key(dataset_id), inputs, depends,
                                                    {"dataset_id": dataset_id})
        for task in tasks:
            # tasks that partition take --n_folds/--fold; one without them is run once per seed
            folds = selection.fold_list() if task.argument("fold") else [None]
            for seed, fold in ((seed, fold) for seed in selection.seeds for fold in folds):
                split = layout.split_key(dataset_id, task.name, seed, fold)
                split_dir = layout.step_dir(output_dir, SPLIT, split)
                split_arguments = {"seed": seed} if fold is None else {"seed": seed, "n_folds": selection.n_folds,
                                                                        "fold": fold}
                split_labels = {"dataset_id": dataset_id, "task_id": task.name, "seed": seed,
                                **({"fold": fold} if fold is not None else {})}
                cells = declared(task, {"input_cells": dataset_step.outputs.get("output_cells")})
                split_step = Step(
                    id=layout.step_id(SPLIT, split), stage=SPLIT, component=task, directory=split_dir,
                    inputs={"input": dataset_step.outputs["output"], **cells},
                    outputs=outputs(task, split_dir, SPLIT, ("output_train", "output_test", "output_solution"),
                                    {"output_train_cells": bool(cells), "output_solution_cells": bool(cells)}),
                    arguments=split_arguments, depends=[dataset_step.id], labels=split_labels)
                steps.append(split_step)
                # priors learnt from this split: from the files a method reads, never the solution
                split_priors = {prior.name: prior_step(
                    prior, split, {"input_train": split_step.outputs["output_train"],
                                   "input_test": split_step.outputs["output_test"],
                                   **declared(prior, {"input_train_cells": split_step.outputs.get("output_train_cells")})},
                    [split_step.id], split_step.labels) for prior in priors if prior_learns_from_split(prior)}
                for method, (method_id, prior) in ((m, v) for m in predictors for v in prior_variants(m, priors)):
                    labels = {**split_step.labels, "method_id": method_id, "method_type": method.component_type,
                              **({"prior_id": prior.name} if prior is not None else {})}
                    predict = layout.predict_key(split, method_id)
                    if not supports_task(method, task.name):
                        skipped.append(StepRecord(
                            id=layout.step_id(PREDICT, predict), stage=PREDICT, component=method.name,
                            status=Status.NOT_APPLICABLE, reason=f"{method.name} does not support task {task.name}",
                            labels=labels))
                        continue
                    made_by = None if prior is None else {**dataset_priors, **split_priors}[prior.name]
                    if prior is not None and made_by is None:
                        skipped.append(StepRecord(
                            id=layout.step_id(PREDICT, predict), stage=PREDICT, component=method.name,
                            status=Status.NOT_APPLICABLE, reason=f"the prior {prior.name} is not applicable to {dataset_id}",
                            labels=labels))
                        continue
                    predict_dir = layout.step_dir(output_dir, PREDICT, predict)
                    inputs = {"input_train": split_step.outputs["output_train"],
                              "input_test": split_step.outputs["output_test"]}
                    if method.argument("input_solution"):
                        inputs["input_solution"] = split_step.outputs["output_solution"]
                    split_cells = {"input_train_cells": split_step.outputs.get("output_train_cells"),
                                   "input_solution_cells": split_step.outputs.get("output_solution_cells")}
                    inputs.update(declared(method, split_cells))
                    if made_by is not None:
                        inputs["input_prior"] = made_by.outputs["output"]
                    predict_step = Step(
                        id=layout.step_id(PREDICT, predict), stage=PREDICT, component=method, directory=predict_dir,
                        inputs=inputs,
                        # predicted cells need the split's cells (a split without them would leave a metric a
                        # missing file, not a "not applicable")
                        outputs=outputs(method, predict_dir, PREDICT, ("output",),
                                        {"output_cells": prediction_cells_wanted and any(split_cells.values())}),
                        arguments={},
                        depends=[split_step.id] + ([made_by.id] if made_by is not None else []), labels=labels)
                    steps.append(predict_step)
                    for metric in metrics:
                        score = layout.score_key(split, method_id, metric.name)
                        score_dir = layout.step_dir(output_dir, SCORE, score)
                        steps.append(Step(
                            id=layout.step_id(SCORE, score), stage=SCORE, component=metric,
                            directory=score_dir,
                            inputs={"input_solution": split_step.outputs["output_solution"],
                                    "input_prediction": predict_step.outputs["output"],
                                    **declared(metric, {**split_cells,
                                                        "input_prediction_cells": predict_step.outputs.get("output_cells")})},
                            outputs=layout.output_paths(score_dir, SCORE), arguments={},
                            depends=[predict_step.id], labels={**labels, "metric_component": metric.name}))
    return steps, skipped



def check_partitions(steps: list[Step], records: list[StepRecord], n_folds: int) -> list[StepRecord]:
    """One record per partition (dataset x task x seed) whose every fold was split: `perturbcast.leakage.
    check_partition` on their test files, so a task that tests a perturbation twice or never is caught
    as the single folds cannot show. Partitions with a fold not run or not applicable are not checked."""
    by_id = {record.id: record for record in records}
    partitions: dict[tuple, list[Step]] = {}
    for step in steps:
        if step.stage == SPLIT and "fold" in step.labels:
            key = (step.labels["dataset_id"], step.labels["task_id"], step.labels["seed"])
            partitions.setdefault(key, []).append(step)
    checked = []
    for (dataset_id, task_id, seed), members in sorted(partitions.items()):
        folds = {step.labels["fold"] for step in members}
        if folds != set(range(n_folds)) or any(by_id.get(step.id) is None or by_id[step.id].status != Status.OK
                                              for step in members):
            continue
        problems = check_partition([step.outputs["output_test"] for step in members],
                                   common_path=members[0].inputs["input"])
        checked.append(StepRecord(
            id=layout.step_id(layout.PARTITION, layout.partition_key(dataset_id, task_id, seed)), stage=SPLIT,
            component=task_id, status=Status.FAILED if problems else Status.OK, reason="partition: " + "; ".join(problems[:3]) if problems else "",
            labels={"dataset_id": dataset_id, "task_id": task_id, "seed": seed}))
    return checked


