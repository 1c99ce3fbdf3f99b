"""A screen without any effect ranks nothing (issue: a verdict only where the data can give one).

`simulated_grn --effect_scale 0` simulates a screen in which no perturbation changes any gene, with controls
that pool more cells than each perturbation (as real screens do), so any bias of a profile that depends on how
many cells it pools would show up as a fake effect; `simulated_null_shallow` is the same at 60 counts per cell
with 60 control cells per cell type against 80 per perturbation. On both, the whole benchmark (every fold of
unseen_perturbation, the baselines, the linear model and the panel's metrics) must find no signal: no
method's delta correlation beyond noise, no calibrated score (the ceiling does not beat train_mean), every
slice "not ranked" with its reason, no headline and no win or loss.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbcast.cli import main
from perturbcast.panel import HEADLINE_PANEL

from conftest import ROOT

PANEL_COMPONENTS = ["delta_error", "delta_correlation", "de_agreement", "discrimination", "systema"]
METHODS = ["linear_baseline", "additive", "knn_perturbation"]


@pytest.fixture(scope="module", params=["simulated_null", "simulated_null_shallow"])
def null_run(request, tmp_path_factory):
    output = tmp_path_factory.mktemp(request.param)
    code = main(["benchmark", "--project", str(ROOT), "--output", str(output), "--datasets", request.param,
                 "--tasks", "unseen_perturbation", "--methods", *METHODS, "--metrics", *PANEL_COMPONENTS,
                 "--jobs", "2"])
    assert code in (0, 1), code  # 1: a step failed (reported by the assertions below)
    return output


def test_every_step_ran(null_run):
    trace = pd.read_csv(null_run / "trace.tsv", sep="\t")
    assert not (trace.status == "failed").any(), trace[trace.status == "failed"].to_string()


def test_no_delta_correlation_beyond_noise(null_run):
    """With independent control estimates and per-cell normalisation no prediction correlates with the
    observed deltas: before them train_mean's pearson_delta on such a screen was 0.28. ground_truth is left
    out: it predicts the observation itself, whose noise its delta shares by construction."""
    results = pd.read_parquet(null_run / "results.parquet")
    rows = results[(results.stratum == "all") & (results.metric_id == "pearson_delta")
                   & (results.method_id != "ground_truth")]
    assert len(rows) >= 6
    for row in rows.itertuples():
        assert abs(row.value) < 0.05 or row.value_low <= 0.0 <= row.value_high, (row.method_id, row.value)


def test_no_calibrated_score_and_nothing_ranked(null_run):
    results = pd.read_parquet(null_run / "results.parquet")
    panel = results[(results.stratum == "all") & results.metric_id.isin(HEADLINE_PANEL)]
    assert panel["score"].isna().all(), panel[panel.score.notna()][["method_id", "metric_id", "score"]]
    assert not results["outcome"].isin(["win", "loss"]).any()
    headline = pd.read_parquet(null_run / "headline.parquet")
    assert len(headline) and not headline["ranked"].any()
    assert headline["headline"].isna().all()
    assert headline["not_ranked_reason"].str.startswith("too few calibrated panel metrics (0 of 5").all()
    summary = pd.read_parquet(null_run / "summary.parquet")
    assert summary["calibrated"].isna().all()
    assert (summary[["wins", "losses"]] == 0).all().all()


def test_the_ceiling_is_the_training_mean(null_run):
    """No condition departs from the training mean beyond noise, so every draw of the ceiling is it."""
    results = pd.read_parquet(null_run / "results.parquet")
    overall = results[(results.stratum == "all")].set_index(["method_id", "metric_id"])["value"]
    for metric in HEADLINE_PANEL:
        assert overall["replicate_ceiling", metric] == pytest.approx(overall["train_mean", metric], abs=1e-9)


def test_ground_truth_error_is_the_difference_of_the_control_parts(null_run):
    """Hand-computed: ground_truth predicts X, so its predicted delta X - control and the observed delta
    X - control_reference differ by control_reference - control on every gene; its mse_delta per condition
    is the mean over non-target genes of that difference squared."""
    import anndata as ad

    per_condition = pd.read_parquet(null_run / "results_per_condition.parquet")
    solution_path = next((null_run / "tasks").glob("*/unseen_perturbation/seed_0/fold_0/solution.h5ad"))
    solution = ad.read_h5ad(solution_path)
    difference = np.asarray(solution.layers["control_reference"], np.float64) - np.asarray(solution.layers["control"],
                                                                                              np.float64)
    assert (np.abs(difference).sum(axis=1) > 0).all()  # the two parts are different cells
    genes = list(solution.var_names)
    expected = {}
    for k, (name, perturbation) in enumerate(zip(solution.obs_names, solution.obs["perturbation"])):
        keep = np.array([g not in perturbation.split("+") for g in genes])
        expected[name] = float((difference[k, keep] ** 2).mean())
    rows = per_condition[(per_condition.method_id == "ground_truth") & (per_condition.metric_id == "mse_delta")
                         & (per_condition.seed == 0) & (per_condition.fold == 0)]
    assert len(rows) == len(expected)
    for row in rows.itertuples():
        assert row.value == pytest.approx(expected[row.condition], rel=1e-5, abs=1e-9)
