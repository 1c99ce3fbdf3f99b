"""The report's tables (perturbcast.report.tables): the numbers each section and figure shows, checked on small
hand-made frames without HTML or a browser."""
import importlib.util
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbcast.report import tables
from perturbcast.report.inputs import Inputs, blocked_by, is_simulated

from conftest import ROOT


def _results(rows):
    """results.parquet rows from (seed, metric, stratum, method, value, baseline, ceiling, score) tuples."""
    out = []
    for seed, metric, stratum, method, value, baseline, ceiling, score in rows:
        out.append({"dataset_id": "d", "task_id": "t", "seed": seed, "metric_id": metric, "stratum": stratum,
                    "method_id": method, "method_type": "control_method", "n_conditions": 10 if stratum == "all" else 4,
                    "value": value, "baseline": baseline, "ceiling": ceiling, "dynamic_range": ceiling - baseline,
                    "score": score})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------- headroom

def test_headroom_is_oriented_by_the_better_direction():
    assert tables.headroom(-0.02, False) == pytest.approx(0.02)  # lower is better, ceiling below baseline
    assert tables.headroom(0.3, True) == pytest.approx(0.3)
    assert tables.headroom(0.3, False) == pytest.approx(-0.3)  # ceiling worse than the baseline
    assert tables.headroom(-0.1, None) == pytest.approx(0.1)  # unknown direction: the ceiling's side
    assert math.isnan(tables.headroom(float("nan"), True))


def test_headroom_text_never_shows_a_negative_range():
    assert tables.headroom_text(0.00812) == "0.0081"
    assert tables.headroom_text(0.00812, scaled=False) == "0.0081 (within noise)"
    assert tables.headroom_text(-0.0145) == "none (ceiling 0.0145 behind)"
    assert tables.headroom_text(0.0) == "none"
    assert tables.headroom_text(float("nan")) == "–"
    for value in np.linspace(-1, 1, 41):
        assert not tables.headroom_text(value).startswith("-")


def test_headroom_table_marks_unscaled_metrics():
    rows = _results([
        # mse (lower is better): ceiling 0.02 below the baseline, scored
        (0, "mse", "all", "train_mean", 0.05, 0.05, 0.03, 0.0),
        (0, "mse", "all", "replicate_ceiling", 0.03, 0.05, 0.03, 1.0),
        # pearson (higher is better): ceiling behind the baseline, no score
        (0, "pearson", "all", "train_mean", 0.4, 0.4, 0.35, np.nan),
        (0, "pearson", "all", "replicate_ceiling", 0.35, 0.4, 0.35, np.nan),
        (0, "pearson", "single", "train_mean", 0.4, 0.4, 0.5, 0.0),
    ])
    table = tables.headroom_table(rows, {"mse": False, "pearson": True}).set_index(["metric_id", "stratum"])
    assert table.at[("mse", "all"), "headroom"] == pytest.approx(0.02)
    assert table.at[("mse", "all"), "scaled"] and not table.at[("pearson", "all"), "scaled"]
    assert table.at[("pearson", "all"), "headroom"] == pytest.approx(-0.05)
    assert table.at[("pearson", "single"), "headroom"] == pytest.approx(0.1) and table.at[("pearson", "single"), "scaled"]
    assert table.at[("pearson", "single"), "n_conditions"] == 4


def test_headroom_overview_averages_partitions():
    rows = _results([(0, "mse", "all", "train_mean", 0.05, 0.05, 0.03, 0.0),
                     (1, "mse", "all", "train_mean", 0.05, 0.05, 0.01, np.nan),
                     (0, "mse", "single", "train_mean", 0.05, 0.05, 0.5, np.nan)])
    overview = tables.headroom_overview(rows, {"mse": False})
    assert overview.at["mse", ("headroom", "d", "t")] == pytest.approx(0.03)  # mean of 0.02 and 0.04
    assert not overview.at["mse", ("scaled", "d", "t")]  # seed 1 was not scaled


def test_slice_table_shows_conditions_and_headroom_per_stratum():
    rows = _results([(0, "mse", "all", "train_mean", 0.05, 0.05, 0.03, 0.0),
                     (0, "mse", "single", "train_mean", 0.05, 0.05, 0.06, np.nan)])
    text, detail = tables.slice_table(rows, ["mse"], {"mse": False})
    assert list(text.columns) == ["all", "single"]
    assert text.at["test conditions", "all"] == "10" and text.at["test conditions", "single"] == "4"
    assert text.at["headroom of mse", "all"] == "0.0200"
    assert text.at["headroom of mse", "single"] == "none (ceiling 0.0100 behind)"
    assert detail.at["headroom of mse", "all"] == "b = 0.0500, r = 0.0300"


# ----------------------------------------------------------------------------------------------- scores

def test_leaderboard_table_keeps_summary_order_and_adds_columns():
    summary = pd.DataFrame({"method_id": ["a", "train_mean"], "method_type": ["method", "control_method"],
                            "calibrated": [0.4, 0.0], "calibrated_low": [0.3, 0.0], "calibrated_high": [0.5, 0.0],
                            "n_scores": [5, 5], "wins": [3, 0], "ties": [2, 0], "losses": [0, 0],
                            "partition_spread": [0.12, np.nan]})
    results = pd.DataFrame({"method_id": ["a", "a", "train_mean", "a"], "metric_id": ["mse", "mse", "mse", "mse"],
                            "stratum": ["all", "all", "all", "single"], "value": [1.0, 3.0, 5.0, 100.0]})
    cost = pd.DataFrame({"median_wall": [2.5]}, index=pd.Index(["a"], name="component"))
    board = tables.leaderboard_table(summary, results, ["mse"], cost)
    assert list(board["method_id"]) == ["a", "train_mean"] and list(board["rank"]) == [1, 2]
    assert board.loc[0, "mse"] == pytest.approx(2.0)  # mean of the all-strata rows only
    assert board.loc[0, "median_wall"] == 2.5 and math.isnan(board.loc[1, "median_wall"])
    assert board.loc[0, "partition_spread"] == pytest.approx(0.12)


def test_headline_slices_follow_the_leaderboard():
    headline = pd.DataFrame({"dataset_id": ["x", "x", "y", "x"], "task_id": ["t", "t", "t", "u"],
                             "method_id": ["b", "a", "a", "a"], "headline": [0.1, 0.5, 0.6, 0.7],
                             "n_conditions": [30, 30, 12, 8], "n_partitions": [2, 2, 1, 1]})
    columns, rows = tables.headline_slices(headline, ["a", "b"])
    assert columns[["dataset_id", "task_id"]].values.tolist() == [["x", "t"], ["x", "u"], ["y", "t"]]
    assert columns["n_conditions"].tolist() == [30, 8, 12] and columns["n_partitions"].tolist() == [2, 1, 1]
    assert rows["method_id"].tolist() == ["a", "a", "a", "b"]


def test_heatmap_table_clamps_before_averaging():
    results = pd.DataFrame({"method_id": ["a", "a", "a"], "dataset_id": "d", "task_id": "t",
                            "stratum": ["all", "all", "single"], "metric_id": ["mse_delta", "pearson_delta", "mse_delta"],
                            "score": [5.0, 0.5, -3.0]})
    overall = tables.heatmap_table(results)
    assert overall.loc[("a", "d", "t"), "mean"] == pytest.approx(0.75)  # (1 + 0.5) / 2: 5 is clamped to 1
    assert overall.loc[("a", "d", "t"), "count"] == 2
    assert tables.heatmap_table(results, by_stratum=True).loc[("a", "t", "single"), "mean"] == -1.0


# ----------------------------------------------------------------------------------------------- cost and failures

def _trace():
    rows = [
        ("dataset/d", "dataset", "d", "ok", False, 1.0, 100.0, "", ""),
        ("dataset/bad", "dataset", "d", "failed", False, 0.5, 90.0, "[error] no file", ""),
        ("split/bad/t/seed_0", "split", "t", "skipped", False, None, None, "upstream dataset/bad failed", "dataset/bad"),
        ("predict/bad/t/seed_0/a", "predict", "a", "skipped", False, None, None, "upstream split/bad/t/seed_0 skipped",
         "split/bad/t/seed_0"),
        ("split/d/c/seed_0", "split", "c", "not_applicable", False, None, None, "[not applicable] one cell type", ""),
        ("predict/d/c/seed_0/a", "predict", "a", "not_applicable", False, None, None,
         "upstream split/d/c/seed_0 not applicable", "split/d/c/seed_0"),
        ("predict/d/t/seed_0/a", "predict", "a", "ok", False, 4.0, 300.0, "", ""),
        ("predict/d/t/seed_1/a", "predict", "a", "ok", True, 6.0, 200.0, "", ""),
        ("predict/d/t/seed_0/b", "predict", "b", "ok", False, 1.0, 50.0, "", ""),
        ("score/d/t/seed_0/a/m", "score", "m", "ok", False, 2.0, 80.0, "", ""),
        ("predict/d/t/seed_9/z", "predict", "z", "skipped", False, None, None, "interrupted", ""),
    ]
    return pd.DataFrame(rows, columns=["step", "stage", "component", "status", "cached", "wall_seconds",
                                       "peak_rss_mib", "reason", "blocked_by"]).assign(exit_code="")


def test_cost_tables():
    cost = tables.cost_table(_trace(), ["b", "a"])
    assert list(cost.index) == ["b", "a"]
    assert cost.loc["a"].tolist() == [2, 5.0, 10.0, 300.0, 1]  # steps, median, total, peak, cached
    other = tables.other_cost_table(_trace())
    assert list(other.index) == [("dataset", "d"), ("score", "m")]
    assert tables.cost_table(_trace().iloc[:0], []).empty


def test_root_causes_follow_the_chain_to_the_first_step():
    trace = _trace()
    roots = tables.root_causes(trace)
    assert roots["predict/bad/t/seed_0/a"] == "dataset/bad" and roots["split/bad/t/seed_0"] == "dataset/bad"
    assert roots["predict/d/c/seed_0/a"] == "split/d/c/seed_0"
    assert "predict/d/t/seed_9/z" not in roots and "dataset/bad" not in roots
    # the cause is the structured blocked_by column, never parsed from the reason's sentence
    trace.loc[trace["step"] == "predict/d/t/seed_9/z", "blocked_by"] = "dataset/bad"
    assert blocked_by(trace)["predict/d/t/seed_9/z"] == "dataset/bad"
    assert tables.root_causes(trace)["predict/d/t/seed_9/z"] == "dataset/bad"
    trace.loc[trace["step"] == "split/bad/t/seed_0", "blocked_by"] = ""
    assert "split/bad/t/seed_0" not in blocked_by(trace)


def test_failure_tables_group_by_cause():
    found = tables.failure_tables(_trace())
    assert found["failed"]["steps"].tolist() == [["dataset/bad"]]
    not_applicable = found["not_applicable"]
    assert not_applicable["steps"].tolist() == [["split/d/c/seed_0"]]
    assert not_applicable["downstream"].tolist() == [["predict/d/c/seed_0/a"]]
    skipped = found["skipped"]
    assert skipped["cause"].tolist() == ["dataset/bad", ""] and skipped["cause_status"].tolist() == ["failed", ""]
    assert sorted(skipped["steps"][0]) == ["predict/bad/t/seed_0/a", "split/bad/t/seed_0"]
    assert skipped["reason"][1] == "interrupted"
    assert tables.stage_counts(skipped["steps"][0]) in ("1 split, 1 predict", "1 predict, 1 split")
    assert all(frame.empty for frame in tables.failure_tables(_trace().assign(status="ok")).values())


# ----------------------------------------------------------------------------------------------- datasets

def _dataset_report_module():
    import sys

    # it imports its sibling resources (vocabulary) as a component would, from its own folder
    if str(ROOT / "src" / "utils") not in sys.path:
        sys.path.append(str(ROOT / "src" / "utils"))
    spec = importlib.util.spec_from_file_location("report_test_dataset_report", ROOT / "src" / "utils" / "dataset_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dataset_card_shows_the_loaders_qc_keys():
    """The card of a report made by src/utils/dataset_report.py itself, so a renamed key shows up here."""
    rng = np.random.default_rng(0)
    n_genes = 60
    base, effect = rng.normal(5, 1, n_genes), rng.normal(0, 1, n_genes)
    rows, X = [], []
    for name, signal in (("control", 0 * effect), ("A", effect), ("g1", 0 * effect)):
        for r in ("r1", "r2"):
            rows.append({"perturbation": name, "is_control": name == "control", "perturbation_type": "knockdown",
                         "n_targets": int(name != "control"), "cell_type": "K562", "condition": "none",
                         "replicate": r, "n_cells": 20 if name != "A" else 35})
            X.append(base + signal + rng.normal(0, 0.05, n_genes))
    adata = ad.AnnData(X=np.array(X, dtype=np.float32), obs=pd.DataFrame(rows, index=[str(i) for i in range(6)]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
                       uns={"replicate_kind": "random_half", "min_cells_per_half": 5, "n_conditions_too_few_cells": 3,
                            "gene_selection": "top 60 highly variable genes"})
    report = _dataset_report_module().dataset_report(adata)
    facts = tables.dataset_facts(report, "random_half").set_index("fact")
    assert facts.at["cells per condition", "value"] == "min 40, median 40, max 70"
    assert facts.at["left out: too few cells", "value"] == "3 conditions (fewer than 5 cells per half)"
    assert facts.at["gene selection", "value"] == "top 60 highly variable genes"
    assert facts.at["replicate labels", "value"].startswith("2")
    assert facts.at["targets missing from the genes", "value"] == "1 of 2: A"  # g1 is a gene of the panel
    assert facts.at["reproducible effect", "value"] == "0.500 (1 of 2 perturbation conditions)"
    assert facts.at["reproducible effect", "strong"]
    assert facts.at["replicate halves", "value"] == "random_half"
    # a dataset without a report still says how its halves were made, and nothing else
    assert tables.dataset_facts(None, "unknown")["fact"].tolist() == ["replicate halves"]


def test_simulated_datasets_are_recognised():
    assert is_simulated({"dataset_organism": "synthetic"})
    assert is_simulated({"dataset_url": "simulated by src/datasets/simulated_grn"})
    assert is_simulated({"simulation": {"seed": 0}})
    assert not is_simulated({"dataset_organism": "homo_sapiens", "dataset_url": "https://example.org"})


def test_inputs_of_an_empty_directory(tmp_path):
    inputs = Inputs(tmp_path)
    assert inputs.results.empty and inputs.trace.empty and inputs.datasets == []
    assert inputs.results_folds() == 0 and inputs.dataset_ids() == [] and inputs.log_of("dataset/x", "dataset") is None
    (tmp_path / "datasets" / "x").mkdir(parents=True)
    (tmp_path / "datasets" / "x" / "log.txt").write_text("one\ntwo\n")
    assert inputs.log_tail("dataset/x", "dataset", lines=1) == (inputs.log_of("dataset/x", "dataset"), "two")


def test_cost_per_dataset_splits_each_method_by_the_dataset_of_its_steps():
    trace = pd.concat([_trace(), pd.DataFrame(
        [("predict/e/t/seed_0/fold_1/a", "predict", "a", "ok", False, 30.0, 900.0, "", "")],
        columns=["step", "stage", "component", "status", "cached", "wall_seconds", "peak_rss_mib", "reason",
                 "blocked_by"]).assign(exit_code="")], ignore_index=True)
    by_dataset = tables.cost_by_dataset_table(trace, ["b", "a"])
    assert list(by_dataset.index) == [("b", "d"), ("a", "d"), ("a", "e")]
    assert by_dataset.loc[("a", "d")].tolist() == [2, 5.0, 10.0, 300.0]  # steps, median, total, peak
    assert by_dataset.loc[("a", "e")].tolist() == [1, 30.0, 30.0, 900.0]
    assert tables.cost_by_dataset_table(trace.iloc[:0], []).empty
