"""The bad-input campaign, kept: every row is one malformed input or argument given to one component (or
the CLI), with the exit code and the fragment of the one `[error]` line it must give, and no output left.

Rows run in-process through `perturbcast.runner.run_component`, with a fork server that preloads numpy,
pandas and anndata (as the engine does), so a row costs a fraction of a second; the bad files are built
once per session from the generated test resources. `CLI_CASES` run `python -m perturbcast` in a
subprocess. Files: `@train`, `@test`, `@solution`, `@prediction`, `@common` are the good test resources,
`@bad:<name>` a bad file built by `bad_files`, `@out:<name>` a path in the row's own folder (an output),
`@ro:<name>` a path in a folder that refuses new files (even to root: /sys), `@dir:<name>` an existing
folder in the row's own folder.
"""
from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

from perturbcast import runner
from perturbcast.config import load_config
from perturbcast.runner import run_component
from perturbcast.spawner import Spawner

from conftest import ROOT

METHODS = ["additive", "knn_perturbation", "latent_additive", "linear_baseline", "ridge_regulators"]
CONTROLS = ["train_mean", "train_median", "no_change", "random_perturbation", "ground_truth", "replicate_ceiling"]
METRICS = ["delta_error", "delta_correlation", "de_agreement", "discrimination", "systema", "weighted_error"]
TASKS = ["unseen_perturbation", "unseen_combination", "cell_type_transfer"]
COMPONENT_DIRS = {**{m: "methods" for m in METHODS}, **{c: "control_methods" for c in CONTROLS},
                  **{m: "metrics" for m in METRICS}, **{t: "tasks" for t in TASKS},
                  **{d: "datasets" for d in ("simulated_grn", "scperturb", "perturbench_devel", "gears")}}
# A small simulation, so that the loader rows that get as far as simulating stay quick.
SMALL_SIMULATION = ["--n_genes", "20", "--n_regulators", "4", "--n_perturbed_genes", "4", "--n_combos", "2",
                    "--cells_per_perturbation", "4", "--n_control_cells", "8"]


def _modified(source: ad.AnnData, change) -> ad.AnnData:
    adata = source.copy()
    result = change(adata)
    return adata if result is None else result


def _set_x(value_of):
    def change(adata):
        adata.X = value_of(np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float64))
    return change


def _cell(value):
    def change(X):
        X = X.astype(np.float32)
        X[0, 0] = value
        return X
    return change


def _drop_obs(column):
    def change(adata):
        del adata.obs[column]
    return change


def _drop_uns(key):
    def change(adata):
        del adata.uns[key]
    return change


def _drop_layer(key):
    def change(adata):
        del adata.layers[key]
    return change


def _duplicate_obs(adata):
    names = list(adata.obs_names)
    names[1] = names[0]
    adata.obs_names = names


def _duplicate_var(adata):
    names = list(adata.var_names)
    names[1] = names[0]
    adata.var_names = names


def _obs_column(column, values):
    def change(adata):
        adata.obs[column] = values(adata)
    return change


EXPRESSION_VARIANTS = {  # applied to train, prediction and the common dataset
    "nan": (_set_x(_cell(np.nan)), "NaN values"),
    "inf": (_set_x(_cell(np.inf)), "infinite values"),
    "counts": (_set_x(lambda X: np.round(np.expm1(X) * 100).astype(np.float32)), "looks like raw counts"),
    "integer": (_set_x(lambda X: np.round(X).astype(np.int64)), "integer dtype"),
    "centred": (_set_x(lambda X: (X - X.mean(axis=0)).astype(np.float32)), "looks centred"),
    "outlier": (_set_x(_cell(-100.0)), "below"),
    "dup_obs": (_duplicate_obs, "obs_names are not unique"),
    "dup_var": (_duplicate_var, "var_names are not unique"),
    "no_rows": (lambda a: a[:0].copy(), "has no rows"),
    "string_x": (_set_x(lambda X: X.astype(bool)), "dtype bool, expected numbers"),
}
TRAIN_VARIANTS = {
    **EXPRESSION_VARIANTS,
    "no_perturbation": (_drop_obs("perturbation"), "obs['perturbation'] is missing"),
    "no_cell_type": (_drop_obs("cell_type"), "obs['cell_type'] is missing"),
    "is_control_text": (_obs_column("is_control", lambda a: a.obs["is_control"].astype(str)), "obs['is_control'] has dtype"),
    "bad_type": (_obs_column("perturbation_type", lambda a: ["crispr"] * a.n_obs), "expected one of"),
    "no_dataset_id": (_drop_uns("dataset_id"), "uns['dataset_id'] is missing"),
    "missing_perturbation_values": (_obs_column("perturbation", lambda a: [None] + list(a.obs["perturbation"])[1:]),
                                    "obs['perturbation'] has 1 missing values"),
}
TEST_VARIANTS = {
    "dup_obs": (_duplicate_obs, "obs_names are not unique"),
    "no_rows": (lambda a: a[:0].copy(), "has no rows"),
    "no_perturbation": (_drop_obs("perturbation"), "obs['perturbation'] is missing"),
    "no_task_id": (_drop_uns("task_id"), "uns['task_id'] is missing"),
}
PREDICTION_VARIANTS = {
    **EXPRESSION_VARIANTS,
    "reordered_genes": (lambda a: a[:, a.var_names[::-1]].copy(), "another order"),
    "missing_genes": (lambda a: a[:, a.var_names[:-3]].copy(), "3 missing"),
    "extra_row": (lambda a: ad.concat([a, a[:1]], uns_merge="first").copy(), "not unique"),
    "missing_rows": (lambda a: a[1:].copy(), "1 missing"),
    "reordered_rows": (lambda a: a[a.obs_names[::-1]].copy(), "another order"),
    "no_method_id": (_drop_uns("method_id"), "uns['method_id'] is missing"),
}
SOLUTION_VARIANTS = {
    "no_control_layer": (_drop_layer("control"), "layers['control'] is missing"),
    "no_replicate_layer": (_drop_layer("replicate_1"), "layers['replicate_1'] is missing"),
    "nan": (_set_x(_cell(np.nan)), "NaN values"),
    "reordered_rows": (lambda a: a[a.obs_names[::-1]].copy(), "another order"),
}
def _uns_value(key, value):
    def change(adata):
        adata.uns[key] = value
    return change


def _complex_x(adata):
    adata.X = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X).astype(np.complex64)


def _contradicting_n_targets(adata):
    n_targets = adata.obs["n_targets"].to_numpy().copy()
    n_targets[-1] += 1
    adata.obs["n_targets"] = n_targets


def _negative_n_cells(adata):
    n_cells = adata.obs["n_cells"].to_numpy().copy()
    n_cells[0] = -3
    adata.obs["n_cells"] = n_cells


# The values issue 22 found accepted silently, each refused in one line that names the input and the field
VALUE_VARIANTS = {
    "complex": (_complex_x, "X has complex dtype"),
    "absurd": (_set_x(_cell(1e30)), "beyond ±1e+15"),
    "negative_n_cells": (_negative_n_cells, "obs['n_cells'] has 1 values below 1"),
    "n_targets_contradicts_label": (_contradicting_n_targets, "obs['n_targets'] contradicts obs['perturbation']"),
}
TRAIN_VARIANTS.update(VALUE_VARIANTS)
TRAIN_VARIANTS["other_dataset"] = (_uns_value("dataset_id", "another_dataset"),
                                   "uns['dataset_id'] is 'another_dataset' in --input_train")
TRAIN_VARIANTS["other_seed"] = (_uns_value("split_seed", 7), "uns['split_seed'] is '7' in --input_train")
TEST_VARIANTS["n_targets_contradicts_label"] = VALUE_VARIANTS["n_targets_contradicts_label"]
TEST_VARIANTS["other_task"] = (_uns_value("task_id", "cell_type_transfer"),
                               "but 'cell_type_transfer' in --input_test")
PREDICTION_VARIANTS.update({name: VALUE_VARIANTS[name] for name in ("complex", "absurd")})
PREDICTION_VARIANTS["other_task"] = (_uns_value("task_id", "cell_type_transfer"), "expected a prediction for the same split")
SOLUTION_VARIANTS.update(VALUE_VARIANTS)
SOLUTION_VARIANTS["negative"] = (_set_x(_cell(-60.0)), "below")
NEW_VALUE_CASES = {*VALUE_VARIANTS, "other_dataset", "other_seed", "other_task", "negative"}
COMMON_VARIANTS = {name: EXPRESSION_VARIANTS[name] for name in
                   ("nan", "counts", "integer", "centred", "dup_obs", "dup_var", "no_rows")}
COMMON_VARIANTS["negative"] = (_set_x(_cell(-0.5)), "below 0")
COMMON_VARIANTS["centred"] = (EXPRESSION_VARIANTS["centred"][0], "below 0")  # a common dataset is never negative
COMMON_VARIANTS["no_replicate"] = (_drop_obs("replicate"), "obs['replicate'] is missing")
COMMON_VARIANTS.update(VALUE_VARIANTS)


def _counts_source(n_cells=240, n_genes=12, seed=0) -> ad.AnnData:
    """A raw-count source in scPerturb's layout (what the scperturb loader reads); about 40 cells per replicate
    half of each condition, above the loader's default minimum (10), so no size argument is needed."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame({"perturbation": rng.choice(["control", "GENE1", "GENE2"], n_cells),
                        "perturbation_type": "CRISPR", "cell_line": "K562"}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(X=rng.poisson(2.0, (n_cells, n_genes)).astype(np.float32), obs=obs,
                      var=pd.DataFrame(index=[f"GENE{i}" for i in range(n_genes)]))


@pytest.fixture(scope="session")
def bad_files(test_resources, tmp_path_factory) -> dict:
    """Every bad file of the campaign, built once: name -> path."""
    split = test_resources / "unseen_perturbation"
    folder = tmp_path_factory.mktemp("bad_files")
    files = {"train": split / "train.h5ad", "test": split / "test.h5ad", "solution": split / "solution.h5ad",
             "prediction": split / "prediction.h5ad", "common": test_resources / "common_dataset.h5ad"}
    sources = {kind: ad.read_h5ad(files[kind]) for kind in files}

    def write(name, adata):
        path = folder / f"{name}.h5ad"
        adata.write_h5ad(path)
        files[name] = path

    for kind, variants in (("train", TRAIN_VARIANTS), ("test", TEST_VARIANTS), ("prediction", PREDICTION_VARIANTS),
                           ("solution", SOLUTION_VARIANTS), ("common", COMMON_VARIANTS)):
        for name, (change, _) in variants.items():
            write(f"{kind}_{name}", _modified(sources[kind], change))
    write("test_other_genes", sources["test"][:, sources["test"].var_names[:-5]].copy())
    (folder / "text.h5ad").write_text("this is not an h5ad file\n")
    (folder / "empty.h5ad").write_bytes(b"")
    (folder / "truncated.h5ad").write_bytes(files["train"].read_bytes()[:4096])
    (folder / "a_folder.h5ad").mkdir()
    with h5py.File(folder / "plain_hdf5.h5ad", "w") as handle:
        handle["numbers"] = np.arange(10)
    os.mkfifo(folder / "a_pipe.h5ad")  # reading it would block forever: refused before it is opened
    files.update({name: folder / f"{name}.h5ad" for name in ("text", "empty", "truncated", "a_folder", "plain_hdf5", "a_pipe")})
    # loader sources
    no_column = _counts_source()
    no_column.obs = no_column.obs.rename(columns={"perturbation": "guide"})
    write("source_no_perturbation_column", no_column)
    no_controls = _counts_source(seed=1)
    no_controls.obs["perturbation"] = np.random.default_rng(1).choice(["GENE1", "GENE2"], no_controls.n_obs)
    write("source_no_controls", no_controls)
    normalised = _counts_source(seed=2)
    normalised.X = np.log1p(normalised.X)
    write("source_non_integer_counts", normalised)
    duplicated = _counts_source(seed=3)
    duplicated.var_names = ["GENE0", "GENE1"] * 6
    write("source_duplicated_genes", duplicated)
    import zipfile
    with zipfile.ZipFile(folder / "no_member.zip", "w") as bundle:
        bundle.writestr("dixit/readme.txt", "nothing here")
    files["no_member_zip"] = folder / "no_member.zip"
    return files


@pytest.fixture(scope="session")
def spawner():
    server = Spawner(preload=("numpy", "scipy.sparse", "pandas", "h5py", "anndata"))
    yield server
    server.close()


@pytest.fixture(scope="session", autouse=True)
def viash_temp(tmp_path_factory):
    """Build folders of failed runs are kept (and announced): keep them out of /tmp."""
    previous = os.environ.get("VIASH_TEMP")
    os.environ["VIASH_TEMP"] = str(tmp_path_factory.mktemp("viash_temp"))
    yield Path(os.environ["VIASH_TEMP"])
    if previous is None:
        os.environ.pop("VIASH_TEMP", None)
    else:
        os.environ["VIASH_TEMP"] = previous


def read_only_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        return folder
    return Path("/sys")  # sysfs refuses new files even to root


# ---------------------------------------------------------------------------------------------- the table

def predict(component, **files):
    """Arguments of a method or control: good inputs unless overridden."""
    args = {"input_train": "@train", "input_test": "@test", "output": "@out:prediction.h5ad"}
    if component in CONTROLS:
        args["input_solution"] = "@solution"
    args.update(files)
    return args


def score(**files):
    return {"input_solution": "@solution", "input_prediction": "@prediction", "output": "@out:score.h5ad", **files}


def split(**files):
    return {"input": "@common", "output_train": "@out:train.h5ad", "output_test": "@out:test.h5ad",
            "output_solution": "@out:solution.h5ad", **files}


def _cases() -> list:
    rows = []

    def add(case_id, component, args, fragments, exit_code=1, extra=()):
        rows.append(pytest.param(component, args, list(extra), exit_code,
                                 [fragments] if isinstance(fragments, str) else list(fragments), id=case_id))

    unreadable = {"missing": ("/nonexistent/input.h5ad", ["Input file", "does not exist"]),
                  "text": ("@bad:text", ["text.h5ad", "no HDF5 signature"]),
                  "empty": ("@bad:empty", ["empty.h5ad", "file is empty"]),
                  "truncated": ("@bad:truncated", ["truncated.h5ad", "cannot be read as AnnData"]),
                  "folder": ("@bad:a_folder", ["a_folder.h5ad", "is a directory"]),
                  "plain_hdf5": ("@bad:plain_hdf5", ["plain_hdf5.h5ad", "cannot be read as AnnData"]),
                  "pipe": ("@bad:a_pipe", ["a_pipe.h5ad", "is not a regular file"]),
                  "device": ("/dev/zero", ["/dev/zero", "is not a regular file"])}
    for component in METHODS + CONTROLS:
        for name, (change, message) in TRAIN_VARIANTS.items():
            if component not in ("additive", "train_mean") and name not in ("counts", "integer", "centred", *NEW_VALUE_CASES):
                continue  # every variant on one method and one control, the scale holes on all of them
            add(f"{component}-train-{name}", component, predict(component, input_train=f"@bad:train_{name}"),
                ["--input_train", message])
        for name, (path, fragments) in unreadable.items():
            if component in ("linear_baseline", "no_change") or name in ("text", "pipe", "device"):
                add(f"{component}-train-{name}", component, predict(component, input_train=path), fragments)
        for name, (change, message) in TEST_VARIANTS.items():
            if component in ("knn_perturbation", "train_median") or name in NEW_VALUE_CASES:
                add(f"{component}-test-{name}", component, predict(component, input_test=f"@bad:test_{name}"),
                    ["--input_test", message])
        add(f"{component}-output-is-input", component, predict(component, output="@train"),
            ["--output", "is the same file as --input_train"])
        if component in ("additive", "latent_additive", "train_mean", "ground_truth"):
            add(f"{component}-output-is-folder", component, predict(component, output="@dir:prediction.h5ad"),
                ["cannot write --output", "is a directory"])
            add(f"{component}-output-read-only", component, predict(component, output="@ro:prediction.h5ad"),
                ["cannot write --output", "prediction.h5ad"])
    for component in ("ground_truth", "replicate_ceiling"):  # the controls that read the solution
        for name in ("reordered_rows", "nan", *VALUE_VARIANTS):
            add(f"{component}-solution-{name}", component,
                predict(component, input_solution=f"@bad:solution_{name}"),
                ["--input_solution", SOLUTION_VARIANTS[name][1]])
    add("replicate_ceiling-solution-no_replicate_layer", "replicate_ceiling",
        predict("replicate_ceiling", input_solution="@bad:solution_no_replicate_layer"), "layers['replicate_1'] is missing")
    add("knn_perturbation-n_neighbors-0", "knn_perturbation", predict("knn_perturbation"), "'--n_neighbors' has be more than or equal to 1",
        extra=["--n_neighbors", "0"])
    add("latent_additive-validation_share-2", "latent_additive", predict("latent_additive"), "'--validation_share' has to be less than or equal to 1",
        extra=["--validation_share", "2"])
    add("linear_baseline-ridge_penalty-text", "linear_baseline", predict("linear_baseline"), "'--ridge_penalty' has to be a double",
        extra=["--ridge_penalty", "abc"])
    add("ridge_regulators-num_steps-0", "ridge_regulators", predict("ridge_regulators"), "'--num_steps' has be more than or equal to 1",
        extra=["--num_steps", "0"])
    add("random_perturbation-seed-negative", "random_perturbation", predict("random_perturbation"),
        "'--seed' has be more than or equal to 0", extra=["--seed", "-1"])
    add("linear_baseline-prior-text", "linear_baseline", predict("linear_baseline", input_prior="@bad:text"),
        ["--input_prior", "text.h5ad"])
    add("train_mean-no-output", "train_mean", {k: v for k, v in predict("train_mean").items() if k != "output"},
        "'--output' is a required argument")

    for metric in METRICS:
        for name, (change, message) in PREDICTION_VARIANTS.items():
            if metric not in ("delta_error", "systema") and name not in ("counts", "integer", "centred", "extra_row",
                                                                          *NEW_VALUE_CASES):
                continue
            add(f"{metric}-prediction-{name}", metric, score(input_prediction=f"@bad:prediction_{name}"),
                ["--input_prediction", message])
        add(f"{metric}-prediction-text", metric, score(input_prediction="@bad:text"), ["text.h5ad", "no HDF5 signature"])
        add(f"{metric}-prediction-pipe", metric, score(input_prediction="@bad:a_pipe"), ["a_pipe.h5ad", "is not a regular file"])
        for name in (*VALUE_VARIANTS, "negative"):
            add(f"{metric}-solution-{name}", metric, score(input_solution=f"@bad:solution_{name}"),
                ["--input_solution", SOLUTION_VARIANTS[name][1]])
        add(f"{metric}-output-is-input", metric, score(output="@prediction"),
            ["--output", "is the same file as --input_prediction"])
        add(f"{metric}-output-is-folder", metric, score(output="@dir:score.h5ad"), ["cannot write --output", "is a directory"])
        if metric in ("delta_error", "de_agreement"):
            add(f"{metric}-solution-no_control_layer", metric, score(input_solution="@bad:solution_no_control_layer"),
                ["--input_solution", "layers['control'] is missing"])
            add(f"{metric}-output-read-only", metric, score(output="@ro:score.h5ad"), ["cannot write --output", "score.h5ad"])
    add("delta_error-prediction-missing", "delta_error", score(input_prediction="/nonexistent/p.h5ad"), "does not exist")
    add("delta_error-prediction-empty", "delta_error", score(input_prediction="@bad:empty"), "file is empty")
    add("delta_error-prediction-is-train", "delta_error", score(input_prediction="@train"), "--input_prediction")

    for task in TASKS:
        for name, (change, message) in COMMON_VARIANTS.items():
            if task != "unseen_perturbation" and name not in ("counts", "integer", "negative", "dup_obs", *VALUE_VARIANTS):
                continue
            add(f"{task}-common-{name}", task, split(input=f"@bad:common_{name}"), ["--input", message])
        add(f"{task}-common-text", task, split(input="@bad:text"), ["text.h5ad", "no HDF5 signature"])
        add(f"{task}-common-device", task, split(input="/dev/zero"), ["/dev/zero", "is not a regular file"])
        add(f"{task}-output_train-is-input", task, split(output_train="@common"),
            ["--output_train", "is the same file as --input"])
        add(f"{task}-outputs-collide", task, split(output_test="@out:train.h5ad"),
            ["--output_test", "is the same file as --output_train"])
        add(f"{task}-output-is-folder", task, split(output_solution="@dir:solution.h5ad"),
            ["cannot write --output_solution", "is a directory"])
        add(f"{task}-output-read-only", task, split(output_test="@ro:test.h5ad"), ["cannot write --output_test"])
        add(f"{task}-output-parent-read-only", task, split(output_train="@ro:sub/train.h5ad"),
            ["cannot create the folder", "--output_train"])
        add(f"{task}-seed-text", task, split(), "'--seed' has to be an integer", extra=["--seed", "one"])

    simulation = {"output": "@out:common.h5ad"}
    add("simulated_grn-output-is-folder", "simulated_grn", {"output": "@dir:common.h5ad"},
        ["cannot write --output", "is a directory"], extra=SMALL_SIMULATION)
    add("simulated_grn-output-read-only", "simulated_grn", {"output": "@ro:common.h5ad"},
        ["cannot write --output", "common.h5ad"], extra=SMALL_SIMULATION)
    add("simulated_grn-n_genes-1", "simulated_grn", simulation, "'--n_genes' has be more than or equal to 2",
        extra=["--n_genes", "1"])
    add("simulated_grn-edge_density-2", "simulated_grn", simulation, "'--edge_density' has to be less than or equal to 1",
        extra=["--edge_density", "2"])
    add("simulated_grn-model-unknown", "simulated_grn", simulation, "'--model' specified value of 'cubic' is not in the list",
        extra=["--model", "cubic"])
    add("simulated_grn-n_cell_types-27", "simulated_grn", simulation, "'--n_cell_types' has be less than or equal to 26",
        extra=["--n_cell_types", "27"])
    for name, message in (("no_perturbation_column", "no perturbation column 'perturbation'"),
                          ("no_controls", "no control cells"), ("non_integer_counts", "non-integer values"),
                          ("duplicated_genes", "duplicated gene name")):
        add(f"scperturb-source-{name}", "scperturb", {"input": f"@bad:source_{name}", "output": "@out:common.h5ad"},
            [f"source_{name}.h5ad", message], extra=["--study", "Broken"])
    add("scperturb-source-empty", "scperturb", {"input": "@bad:empty", "output": "@out:common.h5ad"},
        ["empty.h5ad", "file is empty"], extra=["--study", "Broken"])
    add("scperturb-no-study", "scperturb", {"output": "@out:common.h5ad"}, "'--study' is a required argument")
    add("scperturb-read-only-cache", "scperturb", {"output": "@out:common.h5ad"},
        ["cannot write", "into the cache", "PERTURBCAST_CACHE"], extra=["--study", "NormanWeissman2019_filtered", "@cache:ro"])
    add("perturbench_devel-source-text", "perturbench_devel", {"input": "@bad:text", "output": "@out:common.h5ad"},
        ["text.h5ad"])
    add("perturbench_devel-study-unknown", "perturbench_devel", {"output": "@out:common.h5ad"},
        "'--study' specified value of 'norman2019' is not in the list", extra=["--study", "norman2019"])
    add("gears-archive-without-member", "gears", {"input": "@bad:no_member_zip", "output": "@out:common.h5ad"},
        ["no_member.zip", "holds no 'perturb_processed.h5ad'"], extra=["--dataset", "dixit"])
    add("gears-source-text", "gears", {"input": "@bad:text", "output": "@out:common.h5ad"},
        ["text.h5ad", "neither a zip nor a tar archive"], extra=["--dataset", "dixit"])
    add("perturbench_devel-output-is-input", "perturbench_devel",
        {"input": "@common", "output": "@common"}, ["--output", "is the same file as --input"])
    return rows


CASES = _cases()


@functools.lru_cache(maxsize=None)
def _load_config(component):
    return load_config(component)


def resolve(value: str, files: dict, folder: Path) -> str:
    if value.startswith("@bad:"):
        return str(files[value[5:]])
    if value.startswith("@out:"):
        return str(folder / value[5:])
    if value.startswith("@dir:"):
        (folder / value[5:]).mkdir(parents=True, exist_ok=True)
        return str(folder / value[5:])
    if value.startswith("@ro:"):
        return str(read_only_folder(folder) / value[4:])
    if value.startswith("@"):
        return str(files[value[1:]])
    return value


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.mark.parametrize("component, args, extra, exit_code, fragments", CASES)
def test_bad_input(component, args, extra, exit_code, fragments, bad_files, spawner, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(runner, "load_config", _load_config)  # parsing the YAML once per component keeps rows quick
    folder = tmp_path / "run"
    folder.mkdir()
    server = spawner
    if "@cache:ro" in extra:  # the fork server's children keep its environment: run this one on its own
        extra, server = [x for x in extra if x != "@cache:ro"], None
        monkeypatch.setenv("PERTURBCAST_CACHE", str(read_only_folder(folder) / "perturbcast-cache"))
    resolved = {name: resolve(value, bad_files, folder) for name, value in args.items()}
    inputs_before = {path: _digest(Path(path)) for name, path in resolved.items() if name.startswith("input")}
    argv = [x for name, path in resolved.items() for x in (f"--{name}", path)] + list(extra)
    log = folder / "log.txt"
    with open(log, "a") as handle:  # append: the fork server's child writes to the same file
        result = run_component(ROOT / "src" / COMPONENT_DIRS[component] / component, argv, stdout=handle,
                               stderr=handle, spawner=server)
    err = capfd.readouterr().err + log.read_text()
    assert result.exit_code == exit_code, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("[error]")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    for name, path in resolved.items():  # no output left; inputs untouched
        if name.startswith("output") and path not in inputs_before:
            assert not os.path.isfile(path), f"{path} was left behind"
    for path, digest in inputs_before.items():
        assert _digest(Path(path)) == digest, f"input {path} was changed"
    assert not [p for p in folder.rglob("*") if p.name.startswith(".partial-")]


# ------------------------------------------------------------------------------- runner and CLI rows

HALF_WRITER_CONFIG = """\
name: half_writer
namespace: faults
description: A fault fixture (never under src/) that writes part of its output, then fails.
arguments:
  - {name: --output, type: file, direction: output, required: true}
  - {name: --when, type: string, choices: [before, after], default: after}
resources:
  - {type: python_script, path: script.py}
engines:
  - {type: native}
runners:
  - {type: executable}
"""
HALF_WRITER_SCRIPT = """\
import sys
## VIASH START
par = {"output": "out.h5ad", "when": "after"}
## VIASH END
if par["when"] == "after":
    with open(par["output"], "wb") as handle:
        handle.write(b"\\x89HDF\\r\\n\\x1a\\n" + b"half")
print("[error] half_writer: stopped " + par["when"] + " writing its output", file=sys.stderr)
sys.exit(1)
"""


@pytest.fixture(scope="session")
def half_writer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults") / "half_writer"
    folder.mkdir()
    (folder / "config.vsh.yaml").write_text(HALF_WRITER_CONFIG)
    (folder / "script.py").write_text(HALF_WRITER_SCRIPT)
    return folder


def test_a_failed_run_leaves_no_partial_output_and_names_its_build_folder(half_writer, tmp_path, capfd):
    output = tmp_path / "out.h5ad"
    result = run_component(half_writer, ["--output", str(output)])
    err = capfd.readouterr().err
    # it wrote under a temporary name beside the output (renamed only after validation): nothing is left
    assert result.exit_code == 1 and not output.exists(), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    kept = [line for line in err.splitlines() if "build folder" in line]
    assert len(kept) == 1 and "kept for inspection" in kept[0]
    build_dir = Path(kept[0].split("build folder ")[1].split(" kept")[0])
    assert build_dir.is_dir() and (build_dir / ".config.vsh.yaml").exists()
    # an output that was there before and that the failed run did not touch stays
    output.write_bytes(b"an earlier result")
    result = run_component(half_writer, ["--output", str(output), "--when", "before"])
    assert result.exit_code == 1 and output.read_bytes() == b"an earlier result"


def test_an_output_that_breaks_its_format_is_removed(test_resources, tmp_path, capfd, monkeypatch):
    """The runner's own check after a run that exited 0."""
    from perturbcast import formats

    monkeypatch.setattr(formats, "output_problems", lambda config, values: {"--output": ["X has 1 NaN values"]})
    split_dir = test_resources / "unseen_perturbation"
    output = tmp_path / "prediction.h5ad"
    result = run_component(ROOT / "src" / "control_methods" / "train_mean",
                           ["--input_train", str(split_dir / "train.h5ad"), "--input_test", str(split_dir / "test.h5ad"),
                            "--input_solution", str(split_dir / "solution.h5ad"), "--output", str(output)])
    assert result.exit_code == 1 and "does not match its API format" in capfd.readouterr().err
    assert not output.exists()


def test_an_unknown_flag_warns_and_is_positional_as_in_viash(test_resources, tmp_path, capfd):
    """viash 0.9 (../shared/docs/viash-runtime.md) warns about `--sed 3` and passes both tokens on as positionals,
    which a component without positional arguments drops: the run goes on. The benchmark's own argument
    building is where misspelt parameters must be refused."""
    split_dir = test_resources / "unseen_perturbation"
    output = tmp_path / "prediction.h5ad"
    result = run_component(ROOT / "src" / "control_methods" / "random_perturbation",
                           ["--input_train", str(split_dir / "train.h5ad"), "--input_test", str(split_dir / "test.h5ad"),
                            "--input_solution", str(split_dir / "solution.h5ad"), "--output", str(output), "--sed", "3"])
    err = capfd.readouterr().err
    assert result.exit_code == 0 and output.exists()
    assert "[warning] --sed looks like a parameter but is not a defined parameter and will instead be treated as a " \
           "positional argument." in err


CLI_CASES = [  # (id, perturbcast arguments, expected exit, fragment of the one [error] line, outputs)
    ("run-no-component", ["run", "@tmp/nowhere", "--", "--output", "@tmp/out.h5ad"], 1, "no viash config here",
     ["out.h5ad"]),
    ("run-half-writer", ["run", "@half_writer", "--", "--output", "@tmp/out.h5ad"], 1,
     "half_writer: stopped after writing", ["out.h5ad"]),
    ("run-metric-nan-prediction", ["run", "src/metrics/delta_error", "--", "--input_solution", "@solution",
                                   "--input_prediction", "@bad:prediction_nan", "--output", "@tmp/score.h5ad"], 1,
     "NaN values", ["score.h5ad"]),
    ("run-task-output-is-input", ["run", "src/tasks/unseen_perturbation", "--", "--input", "@common",
                                  "--output_train", "@common", "--output_test", "@tmp/test.h5ad",
                                  "--output_solution", "@tmp/solution.h5ad"], 1,
     "is the same file as --input", ["test.h5ad", "solution.h5ad"]),
    ("run-loader-output-is-folder", ["run", "src/datasets/simulated_grn", "--", "--output", "@tmp"] + SMALL_SIMULATION,
     1, "is a directory", []),
    ("run-missing-required", ["run", "src/methods/additive", "--", "--input_train", "@train", "--output",
                              "@tmp/p.h5ad"], 1, "'--input_test' is a required argument", ["p.h5ad"]),
    # issue 22: a malformed step file gave a JSONDecodeError traceback
    ("step-malformed-json", ["step", "@bad:text"], 2, "not valid JSON", []),
    ("step-device", ["step", "/dev/zero"], 2, "is not a regular file", []),
    ("step-missing", ["step", "@tmp/step.json"], 2, "does not exist", []),
    ("dataset-file-pipe", ["benchmark", "--dataset-file", "@bad:a_pipe", "--output", "@tmp/out"], 2,
     "is not a regular file", ["out"]),
    ("dataset-file-folder", ["benchmark", "--dataset-file", "@bad:a_folder", "--output", "@tmp/out"], 2,
     "is a directory", ["out"]),
    ("cache-add-malformed-checksum", ["cache", "add", "--url", "https://example.org/a.h5ad", "--checksum", "md5:zz",
                                      "--offline", "@train"], 1, "md5 (32 hex digits)", []),
]


@pytest.mark.parametrize("argv, exit_code, fragment, outputs", [pytest.param(*row[1:], id=row[0]) for row in CLI_CASES])
def test_cli_bad_input(argv, exit_code, fragment, outputs, bad_files, half_writer, tmp_path, viash_temp):
    def resolve_cli(value):
        if value.startswith("@tmp"):
            return str(tmp_path) + value[4:]
        if value == "@half_writer":
            return str(half_writer)
        return resolve(value, bad_files, tmp_path) if value.startswith("@") else value
    done = subprocess.run([sys.executable, "-m", "perturbcast", *map(resolve_cli, argv)], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == exit_code, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("[error]")]
    assert len(errors) == 1 and fragment in errors[0], done.stderr
    for name in outputs:
        assert not (tmp_path / name).exists()
