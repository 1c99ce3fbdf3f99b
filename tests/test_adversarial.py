"""Predictions that try to game the metrics: each is refused by validation with one clear line, or scores
no better than the training mean on the calibrated summary.

Adversaries (built from the solution, i.e. with more knowledge than any method has):
- `copy_control`: the control profile (no change anywhere);
- `constant_profile`: one profile for every condition of every context (the mean training-mean prediction);
- `targets_only`: the control profile except at each condition's target genes, where it is the truth;
- `nan`, `inf`, `shuffled_genes`, `raw_counts` (expm1 of the values times 20,000): refused by every
  metric component with one line (scale-free metrics would otherwise reward counts on the wrong scale).

Each scored prediction is compared with `train_mean` (calibrated 0) and `replicate_ceiling` (the
solution's `replicate_1` layer, calibrated 1) with `perturbcast.scoring.results_table`, on the default
simulated dataset and, when ../shared/data has it, on Norman 2019 (PerturBench devel subset: 13 test
conditions x 500 genes). The mean calibrated score over metric ids, as the summary computes it, must not
exceed train_mean's 0 on every dataset. It leaves out metrics whose ceiling does not beat the baseline
beyond resampling noise: on the Norman subset `overlap_top200_de` (200 of 500 genes) has a ceiling
slightly *worse* than the training mean, where the ratio (u - b) / (r - b) used to turn a small
difference into a score of about 32. Per metric, `copy_control` / `targets_only` do beat train_mean on
Norman's error metrics (mse, mae, wmse, wr2): the training mean there has larger errors than predicting
no change, a real weakness of that baseline on that data, not a metric loophole; it is printed.
To score many predictions with one
run per metric component, the solution is stacked: one copy per prediction, each copy's contexts
renamed (`cell_type@method`), so that no comparison crosses predictions; a test checks that the stacked
values equal separate runs. Run with `-s` to see the per-metric calibrated scores of every adversary.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from perturbcast.runner import run_component
from perturbcast.scoring import results_table

from conftest import ROOT

COMPONENTS = ["delta_error", "delta_correlation", "de_agreement", "discrimination", "systema", "weighted_error"]
ADVERSARIES = ["copy_control", "constant_profile", "targets_only"]
TOLERANCE = 0.02    # on the mean calibrated score over all metric ids (train_mean is 0 by construction)


def run(component: str, args: list, log) -> int:
    with open(log, "w") as handle:
        return run_component(ROOT / "src" / component, [str(a) for a in args], stdout=handle, stderr=handle).exit_code


def maximize() -> dict:
    out = {}
    for component in COMPONENTS:
        config = yaml.safe_load(open(ROOT / "src" / "metrics" / component / "config.vsh.yaml"))
        out.update({m["name"]: bool(m["maximize"]) for m in config["info"]["metrics"]})
    return out


def prediction_file(solution, X, method_id: str, path, var_names=None):
    adata = ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=pd.DataFrame(index=solution.obs_names.copy()),
                       var=pd.DataFrame(index=pd.Index(var_names if var_names is not None else solution.var_names,
                                                       dtype=object)),
                       uns={"dataset_id": solution.uns["dataset_id"], "task_id": solution.uns["task_id"],
                            "method_id": method_id})
    adata.write_h5ad(path)
    return path


def adversaries(solution, train_mean_X) -> dict:
    truth = np.asarray(solution.X, dtype=np.float64)
    control = np.asarray(solution.layers["control"], dtype=np.float64)
    targets = np.zeros(truth.shape, dtype=bool)
    position = {g: j for j, g in enumerate(solution.var_names)}
    for i, perturbation in enumerate(solution.obs["perturbation"].astype(str)):
        for target in perturbation.split("+"):
            if target in position:
                targets[i, position[target]] = True
    return {
        "copy_control": control,
        "constant_profile": np.tile(np.asarray(train_mean_X, dtype=np.float64).mean(axis=0), (truth.shape[0], 1)),
        "targets_only": np.where(targets, truth, control),
    }


def stacked_scores(directory, solution, predictions: dict) -> pd.DataFrame:
    """Score every prediction with every component in one run per component; long table of values."""
    names = list(predictions)
    copies = []
    for name in names:
        copy = solution.copy()
        copy.obs_names = [f"{o}@{name}" for o in solution.obs_names]
        copy.obs["cell_type"] = [f"{c}@{name}" for c in solution.obs["cell_type"].astype(str)]
        copies.append(copy)
    stacked = ad.concat(copies, merge="same", uns_merge="first")
    stacked.uns = dict(solution.uns)
    stacked.write_h5ad(directory / "stacked_solution.h5ad")
    prediction_file(stacked, np.vstack([predictions[n] for n in names]), "stacked",
                    directory / "stacked_prediction.h5ad")

    def score(component):
        output = directory / f"stacked_{component}.h5ad"
        code = run(f"metrics/{component}", ["--input_solution", directory / "stacked_solution.h5ad",
                                            "--input_prediction", directory / "stacked_prediction.h5ad",
                                            "--output", output], directory / f"stacked_{component}.log")
        assert code == 0, (directory / f"stacked_{component}.log").read_text()
        return component, ad.read_h5ad(output)

    with ThreadPoolExecutor(max_workers=2) as pool:
        scored = dict(pool.map(score, COMPONENTS))
    rows = []
    for component, result in scored.items():
        obs = result.obs.reset_index(names="row")
        obs["condition"] = obs["row"].str.rsplit("@", n=1).str[0]
        obs["method_id"] = obs["row"].str.rsplit("@", n=1).str[1]
        ids = [str(m) for m in result.uns["metric_ids"]]
        long = obs.melt(id_vars=["condition", "method_id", "stratum"], value_vars=ids, var_name="metric_id",
                        value_name="value")
        long["metric_component"] = component
        rows.append(long)
    table = pd.concat(rows, ignore_index=True)
    table["dataset_id"] = str(solution.uns["dataset_id"])
    table["task_id"] = str(solution.uns["task_id"])
    table["seed"] = 0
    table["method_type"] = np.where(table["method_id"].isin(["train_mean", "replicate_ceiling"]), "control_method",
                                    "method")
    return table[["dataset_id", "task_id", "seed", "method_id", "method_type", "metric_component", "metric_id",
                  "condition", "stratum", "value"]]


def make_case(directory, common_path):
    """Task split, train_mean, the ceiling and the adversaries, all scored: (solution, per-condition table)."""
    code = run("tasks/unseen_perturbation", ["--input", common_path, "--seed", 0, "--output_train",
                                             directory / "train.h5ad", "--output_test", directory / "test.h5ad",
                                             "--output_solution", directory / "solution.h5ad"], directory / "task.log")
    assert code == 0, (directory / "task.log").read_text()
    code = run("control_methods/train_mean", ["--input_train", directory / "train.h5ad", "--input_test",
                                              directory / "test.h5ad", "--input_solution", directory / "solution.h5ad",
                                              "--output", directory / "train_mean.h5ad"], directory / "train_mean.log")
    assert code == 0, (directory / "train_mean.log").read_text()
    solution = ad.read_h5ad(directory / "solution.h5ad")
    train_mean = ad.read_h5ad(directory / "train_mean.h5ad").X
    predictions = {"train_mean": train_mean, "replicate_ceiling": solution.layers["replicate_1"],
                   **adversaries(solution, train_mean)}
    return solution, stacked_scores(directory, solution, predictions)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    out = {}
    directory = tmp_path_factory.mktemp("adversarial_simulated")
    code = run("datasets/simulated_grn", ["--output", directory / "common.h5ad"], directory / "loader.log")
    assert code == 0, (directory / "loader.log").read_text()
    out["simulated_grn"] = (directory, *make_case(directory, directory / "common.h5ad"))
    try:
        from realdata import norman19_common

        common = norman19_common(seed=0)
    except pytest.skip.Exception:
        common = None
    if common is not None:
        directory = tmp_path_factory.mktemp("adversarial_norman19")
        common.write_h5ad(directory / "common.h5ad")
        out["norman19"] = (directory, *make_case(directory, directory / "common.h5ad"))
    return out


@pytest.fixture(scope="module")
def calibrated(cases):
    """Per dataset: calibrated scores per metric id, and their mean per method (as the summary computes it;
    metrics without a significant headroom have no calibrated score and drop out)."""
    better = maximize()
    table = pd.concat([case[2] for case in cases.values()], ignore_index=True)
    results, _ = results_table(table, n_resamples=200, maximize=better)
    overall = results[results["stratum"] == "all"].copy()
    per_metric = overall.pivot_table(index=["dataset_id", "metric_id"], columns="method_id", values="score",
                                     dropna=False)
    means = overall.groupby(["dataset_id", "method_id"])["score"].mean()
    print("\ncalibrated score per metric (0 = train_mean, 1 = replicate_ceiling; NaN = no significant headroom):")
    with pd.option_context("display.width", 250, "display.max_rows", 200, "display.max_columns", 20,
                           "display.float_format", "{:.3g}".format):
        print(per_metric[["replicate_ceiling", *ADVERSARIES]])
        print("\nmean calibrated score over metric ids:")
        print(means.unstack("dataset_id"))
    return means, per_metric


def test_stacking_gives_the_values_of_separate_runs(cases, tmp_path):
    directory, solution, table = cases["simulated_grn"]
    for component in ("discrimination", "systema"):  # the components that compare conditions
        code = run(f"metrics/{component}", ["--input_solution", directory / "solution.h5ad", "--input_prediction",
                                            directory / "train_mean.h5ad", "--output", tmp_path / f"{component}.h5ad"],
                   tmp_path / f"{component}.log")
        assert code == 0
        alone = ad.read_h5ad(tmp_path / f"{component}.h5ad").obs
        stacked = table[(table.method_id == "train_mean") & (table.metric_component == component)]
        for metric_id, group in stacked.groupby("metric_id"):
            np.testing.assert_allclose(group.set_index("condition")["value"].loc[alone.index], alone[metric_id],
                                       atol=1e-12, err_msg=metric_id)


def test_controls_calibrate_to_zero_and_one(calibrated):
    means, _ = calibrated
    for dataset_id in means.index.get_level_values("dataset_id").unique():
        assert means.loc[(dataset_id, "train_mean")] == pytest.approx(0.0, abs=1e-12)
        assert means.loc[(dataset_id, "replicate_ceiling")] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("adversary", ADVERSARIES)
def test_adversary_is_no_better_than_train_mean(calibrated, adversary):
    means, per_metric = calibrated
    beaten = per_metric[adversary][per_metric[adversary] > TOLERANCE]
    if len(beaten):  # a finding to report, not a failure
        print(f"\n{adversary} beats train_mean on: " + ", ".join(f"{d}/{m} ({v:.2f})" for (d, m), v in beaten.items()))
    for dataset_id in means.index.get_level_values("dataset_id").unique():
        assert means.loc[(dataset_id, adversary)] <= TOLERANCE, dataset_id


@pytest.mark.parametrize("problem", ["nan", "inf", "shuffled_genes", "raw_counts"])
def test_unusable_predictions_are_refused_in_one_line(cases, tmp_path, problem):
    directory, solution, _ = cases["simulated_grn"]
    X = np.asarray(ad.read_h5ad(directory / "train_mean.h5ad").X, dtype=np.float32).copy()
    genes = np.asarray(solution.var_names)
    if problem == "nan":
        X[3, 5] = np.nan
    elif problem == "inf":
        X[0, 0] = -np.inf
    elif problem == "raw_counts":
        X = np.expm1(X) * 20_000
    else:
        order = np.random.default_rng(0).permutation(len(genes))
        X, genes = X[:, order], genes[order]
    path = prediction_file(solution, X, "adversary", tmp_path / f"{problem}.h5ad", var_names=genes)
    expected = {"nan": "1 NaN values", "inf": "1 infinite values", "shuffled_genes": "in another order",
                "raw_counts": "looks like raw counts"}[problem]

    def score(component):
        log = tmp_path / f"{component}.log"
        code = run(f"metrics/{component}", ["--input_solution", directory / "solution.h5ad", "--input_prediction",
                                            path, "--output", tmp_path / f"{component}.h5ad"], log)
        return component, code, log.read_text()

    with ThreadPoolExecutor(max_workers=2) as pool:
        for component, code, log in pool.map(score, COMPONENTS):
            errors = [line for line in log.splitlines() if line.startswith("[error]")]
            assert code == 1 and "Traceback" not in log, (component, log)
            assert len(errors) == 1 and f"{problem}.h5ad" in errors[0] and expected in errors[0], (component, log)
            assert not (tmp_path / f"{component}.h5ad").exists()
