"""report.html: written from a real benchmark output and from hand-made tables, opened in headless Chromium.

The browser tests need /usr/bin/chromium (installed in CI by scripts/install_browser.sh) and skip without it.
They check that the page's scripts run without a JavaScript error, that the leaderboard and the Plotly plots are
in the DOM after the scripts ran, and that a screenshot (kept in test_artifacts/) is not blank.
"""
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from perturbcast import report
from perturbcast.cli import main as cli_main

from conftest import ROOT
from report_browser import CHROMIUM, assert_not_blank, overlapping_titles, render_dom, screenshot

ARTIFACTS = ROOT / "test_artifacts"
METHODS = ["ground_truth", "replicate_ceiling", "no_change", "train_mean"]


# ----------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def benchmark_output(tmp_path_factory) -> Path:
    """A real `perturbcast benchmark` on the small simulated dataset with the four controls."""
    output = tmp_path_factory.mktemp("report_benchmark")
    code = cli_main(["benchmark", "--project", str(ROOT), "--output", str(output), "--datasets", "simulated_grn_small",
                     "--tasks", "unseen_perturbation", "unseen_combination", "--metrics", "delta_error",
                     "--methods", *METHODS, "--jobs", "2", "--n-resamples", "200"])
    assert code == 0
    assert (output / "results.parquet").exists() and (output / "trace.tsv").exists()
    return output


@pytest.fixture(scope="module")
def benchmark_report(benchmark_output) -> Path:
    path = report.write_report(benchmark_output)
    assert path == benchmark_output / "report.html"
    return path


def _rows(dataset_id, task_id, seed, strata, metric, maximize, values):
    """results.parquet rows for one dataset x task x seed x metric: `values` maps method -> raw value."""
    rows = []
    base, ceiling = values["train_mean"], values["replicate_ceiling"]
    dynamic = ceiling - base
    for stratum in strata:
        for method, value in values.items():
            diff = value - base
            score = diff / dynamic
            better = diff if maximize else -diff
            outcome = "" if method == "train_mean" else "win" if better > 0.01 else "loss" if better < -0.01 else "tie"
            rows.append({"dataset_id": dataset_id, "task_id": task_id, "seed": seed, "metric_id": metric,
                         "stratum": stratum, "method_id": method,
                         "method_type": "method" if method == "my_method" else "control_method",
                         "metric_component": "delta_error", "n_conditions": 12, "value": value,
                         "value_low": value - 0.01, "value_high": value + 0.01, "baseline": base, "ceiling": ceiling,
                         "dynamic_range": dynamic, "score": score, "score_low": score - 0.1, "score_high": score + 0.1,
                         "diff_from_baseline": diff, "diff_low": diff - 0.005, "diff_high": diff + 0.005,
                         "p_value": None if method == "train_mean" else 0.0123,
                         "p_holm": None if method == "train_mean" else 0.0456, "outcome": outcome})
    return rows


@pytest.fixture
def constructed_output(tmp_path) -> Path:
    """A results directory written by hand: two datasets (one with a dataset report), two seeds, a method with a
    far-off score, a failed dataset with skipped steps after it, a not-applicable task and its follow-ons."""
    output = tmp_path / "constructed"
    output.mkdir()
    rows = []
    for seed in (0, 1):
        for dataset_id in ("toy_a", "toy_b"):
            rows += _rows(dataset_id, "unseen_combination", seed, ["all", "combo_seen1", "combo_seen0"], "mse_delta",
                          False, {"train_mean": 0.04, "replicate_ceiling": 0.01, "ground_truth": 0.0,
                                  "my_method": 0.03 + 0.002 * seed, "random_perturbation": 0.2})
            rows += _rows(dataset_id, "unseen_combination", seed, ["all", "combo_seen1", "combo_seen0"],
                          "pearson_delta", True, {"train_mean": 0.2, "replicate_ceiling": 0.8, "ground_truth": 1.0,
                                                  "my_method": 0.35, "random_perturbation": 0.01})
    results = pd.DataFrame(rows)
    results.to_parquet(output / "results.parquet", index=False)
    overall = results[results.stratum == "all"]
    summary = overall.groupby(["method_id", "method_type"], as_index=False)["score"].mean().rename(
        columns={"score": "calibrated"})
    summary["calibrated_low"] = summary["calibrated"] - 0.05
    summary["calibrated_high"] = summary["calibrated"] + 0.05
    summary["n_scores"] = 8
    counts = overall.groupby("method_id")["outcome"].value_counts().unstack(fill_value=0)
    for outcome, column in (("win", "wins"), ("tie", "ties"), ("loss", "losses")):
        summary[column] = [int(counts.get(outcome, pd.Series(dtype=int)).get(m, 0)) for m in summary["method_id"]]
    summary["partition_spread"] = [0.1234 if m == "my_method" else 0.0 for m in summary["method_id"]]
    summary.sort_values("calibrated", ascending=False).to_parquet(output / "summary.parquet", index=False)
    headline = overall.groupby(["dataset_id", "task_id", "method_id", "method_type"], as_index=False)["score"].mean()
    headline = headline.rename(columns={"score": "headline"}).assign(
        headline_low=lambda h: h["headline"] - 0.05, headline_high=lambda h: h["headline"] + 0.05, n_conditions=12,
        n_panel_metrics=2, n_partitions=2, partition_min=lambda h: h["headline"] - 0.02,
        partition_max=lambda h: h["headline"] + 0.02)
    headline.to_parquet(output / "headline.parquet", index=False)
    pd.DataFrame({"fold": [0, 1, 2, 0, 1, 2]}).to_parquet(output / "results_per_condition.parquet", index=False)

    trace = [
        {"step": "dataset/toy_a", "stage": "dataset", "component": "toy", "status": "ok", "wall_seconds": 1.0,
         "peak_rss_mib": 100.0, "reason": ""},
        {"step": "dataset/broken", "stage": "dataset", "component": "toy", "status": "failed", "exit_code": 1,
         "wall_seconds": 0.5, "peak_rss_mib": 90.0, "reason": "[error] cannot download the source <file>"},
        {"step": "split/broken/unseen_combination/seed_0", "stage": "split", "component": "unseen_combination",
         "status": "skipped", "reason": "upstream dataset/broken failed", "blocked_by": "dataset/broken",
         "blocked_by_status": "failed"},
        {"step": "predict/broken/unseen_combination/seed_0/my_method", "stage": "predict", "component": "my_method",
         "status": "skipped", "reason": "upstream split/broken/unseen_combination/seed_0 skipped",
         "blocked_by": "split/broken/unseen_combination/seed_0", "blocked_by_status": "skipped"},
        {"step": "split/toy_a/cell_type_transfer/seed_0", "stage": "split", "component": "cell_type_transfer",
         "status": "not_applicable", "reason": "toy_a has one cell type: no cell type to transfer to"},
        {"step": "predict/toy_a/cell_type_transfer/seed_0/my_method", "stage": "predict", "component": "my_method",
         "status": "not_applicable", "reason": "upstream split/toy_a/cell_type_transfer/seed_0 not applicable",
         "blocked_by": "split/toy_a/cell_type_transfer/seed_0", "blocked_by_status": "not_applicable"},
    ]
    for method in ("train_mean", "replicate_ceiling", "ground_truth", "my_method", "random_perturbation"):
        for seed in (0, 1):
            trace.append({"step": f"predict/toy_a/unseen_combination/seed_{seed}/{method}", "stage": "predict",
                          "component": method, "status": "ok", "cached": seed == 1, "exit_code": 0,
                          "wall_seconds": 2.0 + seed + (5 if method == "my_method" else 0),
                          "peak_rss_mib": 150.0 + (200 if method == "my_method" else 0), "reason": ""})
    pd.DataFrame(trace).to_csv(output / "trace.tsv", sep="\t", index=False)
    (output / "datasets" / "broken").mkdir(parents=True)
    (output / "datasets" / "broken" / "log.txt").write_text("$ perturbcast run ...\nTraceback: something\n"
                                                             "[error] cannot download the source <file>\n")

    (output / "task_info.yaml").write_text(yaml.safe_dump({
        "task_id": "task_expression_forecasting", "task_name": "Expression forecasting",
        "task_summary": "Forecast <unseen> perturbations.", "version": "test",
        "references": {"doi": ["10.1186/s13059-025-03840-y"]}, "links": {"repository": "https://example.org/repo"}}))
    (output / "dataset_uns.yaml").write_text(yaml.safe_dump([
        {"dataset_id": "toy_a", "dataset_name": "Toy A", "dataset_summary": "A toy screen.",
         "dataset_organism": "homo_sapiens", "normalization_id": "log_cp10k", "dataset_reference": "10.1016/x.y",
         "dataset_url": "https://example.org/toy_a",
         "dataset_report": {"n_profiles": 120, "n_genes": 500, "n_cells": 5961, "n_conditions": 60,
                            "n_perturbations": 58, "n_combinations": 15,
                            "perturbations_per_type": {"activation": 58}, "n_cell_types": 1,
                            "cell_types": {"K562": 59}, "n_condition_values": 1, "conditions": {"none": 59},
                            "cells_per_profile_median": 48.0, "cells_per_profile_min": 20,
                            "replicate_reproducibility": 0.4321, "replicate_reproducibility_per_context": {},
                            "median_pairwise_delta_correlation": 0.2468,
                            "median_pairwise_delta_correlation_per_context": {},
                            "cells_per_condition_min": 21, "cells_per_condition_median": 97.5,
                            "cells_per_condition_max": 240, "replicate_kind": "biological",
                            "replicate_column": "gemgroup", "n_replicates": 3, "replicates_per_condition_min": 2,
                            "replicates_per_condition_median": 3.0, "replicates_per_condition_max": 3,
                            "min_cells_per_half": 10, "n_conditions_too_few_cells": 4,
                            "gene_selection": "top 500 highly variable genes and every target", "n_targets": 43,
                            "n_targets_missing_from_panel": 2, "targets_missing_from_panel": ["GENE9", "GENE7"],
                            "reproducible_threshold": 0.2, "n_perturbation_conditions_assessed": 59,
                            "n_reproducible_effect": 41, "share_reproducible_effect": 41 / 59}},
        {"dataset_id": "toy_b", "dataset_name": "Toy B", "dataset_summary": "Without a report.",
         "dataset_organism": "synthetic"}]))
    (output / "method_configs.yaml").write_text(yaml.safe_dump([
        {"name": "my_method", "label": "My method", "summary": "Predicts `things`.", "description": "Long text.",
         "references": {"doi": ["10.1000/my.method"], "bibtex": ["@misc{x, title = {A {Bib} title}, year = {2024},\n"
                                                                  "  url = {https://example.org/paper}\n}"]},
         "info": {}, "namespace": "methods"},
        {"name": "train_mean", "label": "Training mean", "summary": "Baseline.",
         "info": {"control_type": "baseline"}, "namespace": "control_methods"},
        {"name": "replicate_ceiling", "label": "Replicate ceiling", "summary": "Ceiling.",
         "info": {"control_type": "positive"}, "namespace": "control_methods"},
        {"name": "ground_truth", "label": "Ground truth", "summary": "Oracle.",
         "info": {"control_type": "positive"}, "namespace": "control_methods"},
        {"name": "random_perturbation", "label": "Random perturbation", "summary": "Random.",
         "info": {"control_type": "negative"}, "namespace": "control_methods"}]))
    (output / "metric_configs.yaml").write_text(yaml.safe_dump([
        {"name": "delta_error", "label": "Delta error", "summary": "Errors of deltas.",
         "info": {"metrics": [
             {"name": "mse_delta", "label": "MSE of deltas", "summary": "Squared error.", "min": 0, "max": "+inf",
              "maximize": False, "references": {"doi": ["10.1038/s41592-025-02772-6"]}},
             {"name": "pearson_delta", "label": "Pearson delta", "summary": "Correlation.", "min": -1, "max": 1,
              "maximize": True}]}}]))
    return output


# ----------------------------------------------------------------------------------------------- browser

@pytest.fixture(scope="session")
def chromium() -> Path:
    """Headless Chromium, or a skip with the reason (listed first so no benchmark runs for a skipped test)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Chromium with scripts/install_browser.sh to run the browser test")
    return CHROMIUM


# ----------------------------------------------------------------------------------------------- tests

def test_report_of_a_benchmark_is_one_offline_file(benchmark_output, benchmark_report):
    text = benchmark_report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # self-contained: plotly.js inline, and outside it no external script, stylesheet, font or CDN
    # (the library itself names tile servers and a topojson CDN for map traces, which the report does not use)
    start = text.index("<script>/**\n* plotly.js v")
    own = text[:start] + text[text.index("</script>", start):]
    assert not re.search(r"<script[^>]+src=", own)
    assert not re.search(r"<link[^>]+rel=.?stylesheet", own)
    assert not re.search(r"cdn|@import|url\(", own, re.IGNORECASE)
    results = pd.read_parquet(benchmark_output / "results.parquet")
    summary = pd.read_parquet(benchmark_output / "summary.parquet")
    # every section: the answer first (verdict, leaderboard), the explanation of the scores below them
    for anchor in ("verdict", "calibration", "leaderboard", "heatmap", "details", "datasets", "cost", "failures",
                   "components"):
        assert f'id="{anchor}"' in text, anchor
    assert text.index('id="verdict"') < text.index('id="leaderboard"') < text.index('id="calibration"')
    assert "0 = no better than the training mean" in text and "scores above 1" in text
    assert "Holm" in text and "clamped" in text and "folds" in text
    # leaderboard sorted by calibrated score, methods named, wins/ties/losses shown
    board = text[text.index('<table class="data board">'):text.index("</table>", text.index('<table class="data board">'))]
    order = re.findall(r'class="method">[^<]*</a><br><span class="id">([^<]+)</span>', board)
    assert order == list(summary.sort_values("calibrated", ascending=False, na_position="last")["method_id"])
    # the selected methods, and the scale controls the engine adds to every selection
    from perturbcast.engine import SCALE_CONTROLS
    assert set(METHODS) <= set(order) <= set(METHODS) | set(SCALE_CONTROLS)
    assert order[0] == "ground_truth" and order.index("replicate_ceiling") < order.index("train_mean")
    assert "W / T / L" in board and "reference" in board  # train_mean is the reference
    # per dataset x task selector over both tasks; the components with their doi links
    for task in ("unseen_perturbation", "unseen_combination"):
        assert f"simulated_grn_small|{task}|0" in text
    assert "https://doi.org/10." in text and 'id="component-train_mean"' in text and "MSE of deltas" in text
    # every stratum of the results is plotted
    for stratum in set(results["stratum"]):
        assert f'"name":"{stratum}"' in text
    # the banner names the simulated dataset as such; headroom is never negative
    header = text[:text.index("<nav>")]
    assert "Simulated GRN perturbation screen" in header and "simulated data only" in header
    assert "headroom 0." in text and not re.search(r"headroom -", text)
    assert not re.search(r"dynamic range -?\d", text)  # the old signed label (metric descriptions may say the words)


def test_report_renders_in_headless_chromium(chromium, benchmark_report, tmp_path):
    dom, errors = render_dom(benchmark_report, tmp_path)
    assert errors == [], errors
    assert 'data-rendered="true"' in dom, "the report's script did not finish"
    # the leaderboard table and the Plotly figures are in the DOM after the scripts ran
    assert 'class="data board"' in dom
    for figure in ("fig-leaderboard", "fig-heatmap", "fig-strata", "fig-raw", "fig-forest", "fig-cost"):
        block = re.search(rf'<div id="{figure}" class="plot[^"]*js-plotly-plot', dom)
        assert block, f"{figure} was not drawn"
    assert dom.count('class="main-svg"') >= 12  # two svg layers per figure
    assert "cartesianlayer" in dom and "heatmaplayer" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = screenshot(benchmark_report, ARTIFACTS / "report_benchmark.png")
    assert_not_blank(shot)


def test_dataset_task_picker_redraws_the_views(chromium, benchmark_report, tmp_path):
    """Choosing another dataset x task in the picker redraws the three views and the slice table."""
    pick = ("var s = document.getElementById('slice-select');"
            "s.value = 'simulated_grn_small|unseen_perturbation|0';"
            "s.dispatchEvent(new Event('change'));"
            "var fig = document.getElementById('fig-strata');"
            "document.body.setAttribute('data-picked', fig.data.map(function (t) { return t.name; }).join(','));")
    dom, errors = render_dom(benchmark_report, tmp_path, after=pick)
    assert errors == [], errors
    picked = re.search(r'data-picked="([^"]*)"', dom).group(1).split(",")
    assert "single" in picked and "combo_seen2" not in picked  # the strata of unseen_perturbation
    table = dom[dom.index('id="slice-table"'):dom.index('id="strata"')]
    assert ">single<" in table


def test_browser_check_sees_a_script_error(chromium, benchmark_report, tmp_path):
    """The error probe is not vacuous: a page whose script throws is reported."""
    broken = tmp_path / "broken.html"
    broken.write_text(benchmark_report.read_text(encoding="utf-8").replace(
        "</body>", "<script>undefinedFunctionOfTheTest();</script></body>"), encoding="utf-8")
    _, errors = render_dom(broken, tmp_path)
    assert any("undefinedFunctionOfTheTest" in e for e in errors), errors


def test_report_of_hand_made_tables(constructed_output, tmp_path):
    target = tmp_path / "elsewhere" / "page.html"
    assert report.main(["report", str(constructed_output), "--output", str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    assert not (constructed_output / "report.html").exists()
    # text from the yaml files is escaped
    assert "Forecast &lt;unseen&gt; perturbations." in text and "<unseen>" not in text
    # two seeds: one selector entry per dataset x task x seed
    for dataset_id in ("toy_a", "toy_b"):
        for seed in (0, 1):
            assert f"{dataset_id} · unseen_combination · seed {seed}" in text
    # far-off scores are drawn at the edge of the axis with their value as text
    assert '"triangle-right"' in text or '"triangle-left"' in text
    # dataset cards: the dataset report where there is one, uns otherwise
    assert "0.432" in text and "0.247" in text and "activation (58)" in text and "K562 (59)" in text
    assert "The loader wrote no dataset report" in text
    # cost per method from trace.tsv
    cost = text[text.index('id="cost"'):text.index('id="failures"')]
    assert "My method" in cost and "350" in cost
    # failures with reasons and a log link relative to the page; skips grouped by their first cause
    failures = text[text.index('id="failures"'):text.index('id="components"')]
    assert "dataset/broken" in failures and "cannot download the source &lt;file&gt;" in failures
    assert 'href="../constructed/datasets/broken/log.txt"' in failures
    assert "Traceback: something" in failures
    assert re.search(r"<code>dataset/broken</code> <span class='status-failed'>failed</span></td>"
                     r"<td class='num'>2</td>", failures)
    assert "toy_a has one cell type" in failures
    assert "upstream split/toy_a/cell_type_transfer/seed_0 not applicable" not in failures.split("<details>")[0]
    # the banner names the datasets and marks the simulated one; the run is not all simulated
    header = text[:text.index("<nav>")]
    assert ">Toy A</a>" in header and ">Toy B</a>" in header
    assert header.count('class="tag">simulated') == 1 and 'toy_b</span> <span class="tag">simulated' in header
    assert "simulated data only" not in header and "× <b>3</b> folds" in header
    # the dataset card shows the loaders' QC keys
    cards = text[text.index('id="datasets"'):text.index('id="cost"')]
    for shown in ("min 21, median 97.5, max 240", "4 conditions (fewer than 10 cells per half)",
                  "top 500 highly variable genes and every target", "2 of 43: GENE9, GENE7",
                  "0.695 (41 of 59 perturbation conditions)", "3 (column gemgroup); per condition min 2, median 3, max 3"):
        assert shown in cards, shown
    assert re.search(r"<th>replicate halves</th><td>biological", cards)
    # headroom in the better direction (mse: 0.04 - 0.01; pearson: 0.8 - 0.2), never a signed range
    assert "headroom 0.0300" in text and "headroom 0.6000" in text and not re.search(r"dynamic range -?\d", text)
    assert "headroom of mse_delta<\\/th><td class='num' title='b = 0.0400, r = 0.0100'>0.0300<\\/td>" in text
    # the partition spread beside the raw means (below the leaderboard), the p-values behind the win/tie/loss calls
    start = text.index("Raw mean of every metric")
    raw = text[start:text.index("</table>", start)]
    assert "over partitions" in raw and "<td class='num'>0.12</td>" in raw
    assert "p = 0.012, Holm-adjusted 0.046" in text
    # bibtex references become a titled link; dois link to doi.org
    assert '<a href="https://example.org/paper">A Bib title (2024)</a>' in text
    assert 'href="https://doi.org/10.1000/my.method"' in text


def test_hand_made_report_renders_in_headless_chromium(chromium, constructed_output, tmp_path):
    page = report.write_report(constructed_output)
    dom, errors = render_dom(page, tmp_path)
    assert errors == [], errors
    assert 'data-rendered="true"' in dom and 'class="main-svg"' in dom
    ARTIFACTS.mkdir(exist_ok=True)
    assert_not_blank(screenshot(page, ARTIFACTS / "report_constructed.png"))


def test_report_of_a_run_without_scores(tmp_path):
    """Every step failed: the page still says so rather than failing."""
    pd.DataFrame([{"step": "dataset/x", "stage": "dataset", "component": "x", "status": "failed", "cached": False,
                   "exit_code": 1, "wall_seconds": 0.1, "peak_rss_mib": 10.0, "reason": "no network"}]).to_csv(
        tmp_path / "trace.tsv", sep="\t", index=False)
    page = report.write_report(tmp_path)
    text = page.read_text(encoding="utf-8")
    assert "No scores yet" in text and "no network" in text


def test_report_command_needs_a_results_directory(tmp_path, capsys):
    assert report.main(["report", str(tmp_path / "missing")]) == 1
    assert "neither results.parquet nor trace.tsv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main(["report", "--help"])
    assert "self-contained" in capsys.readouterr().out


def test_report_module_stays_above_the_engine():
    """The report reads files only: importing it must not pull in the engine or the runner."""
    probe = ("import sys, perturbcast.report; "
             "bad = [m for m in ('perturbcast.engine', 'perturbcast.runner', 'perturbcast.engine_cli') if m in sys.modules]; "
             "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT).returncode == 0


LONG_METRICS = ["pearson_delta_perturbed_ref", "direction_accuracy_top100_de", "overlap_top100_de",
                "discrimination_cosine", "weighted_mse_delta", "spearman_delta", "mse_top100_de", "centroid_accuracy"]


@pytest.fixture
def many_metrics_output(tmp_path) -> Path:
    """Eight metrics with long ids and labels: four facets per row, the layout where titles used to collide."""
    output = tmp_path / "many_metrics"
    output.mkdir()
    rows = []
    for index, metric in enumerate(LONG_METRICS):
        maximize = index % 2 == 0
        better, worse = 0.8, 0.2
        rows += _rows("toy", "unseen_perturbation", 0, ["all", "single"], metric, maximize,
                      {"train_mean": worse if maximize else better, "replicate_ceiling": better if maximize else worse,
                       "ground_truth": 1.0 if maximize else 0.0, "my_method": 0.5})
    results = pd.DataFrame(rows)
    results.to_parquet(output / "results.parquet", index=False)
    (output / "metric_configs.yaml").write_text(yaml.safe_dump([
        {"name": "long_metrics", "info": {"metrics": [
            {"name": m, "label": f"A long label for {m.replace('_', ' ')} of deltas", "maximize": i % 2 == 0}
            for i, m in enumerate(LONG_METRICS)]}}]))
    return output


def test_facet_titles_do_not_overlap(chromium, many_metrics_output, tmp_path):
    """Facet titles (with the headroom under them) and x-axis titles of neighbouring facets keep apart."""
    page = report.write_report(many_metrics_output)
    text = page.read_text(encoding="utf-8")
    assert "headroom 0.6000" in text and not re.search(r"dynamic range -?\d", text)
    count, overlaps = overlapping_titles(page, tmp_path)
    # strata: 9 facets, raw and forest: 8 each; a title and an axis title per facet
    assert count >= 2 * (9 + 8 + 8), count
    assert overlaps == [], overlaps


def test_style_sheet_and_script_are_package_files(constructed_output):
    """report.css and report.js ship inside the package (pyproject's package data) and are inlined."""
    import tomllib
    from importlib import resources
    package = resources.files("perturbcast.report")
    css, js = (package / "report.css").read_text(encoding="utf-8"), (package / "report.js").read_text(encoding="utf-8")
    assert "table.board" in css and "Plotly.react" in js
    text = report.write_report(constructed_output).read_text(encoding="utf-8")
    assert css in text and js in text
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "perturbcast.report" in setuptools["packages"]
    assert {"*.css", "*.js"} <= set(setuptools["package-data"]["perturbcast.report"])


def test_report_is_a_package_of_small_modules():
    assert not (ROOT / "perturbcast" / "report.py").exists()
    sizes = {path.name: len(path.read_text().splitlines()) for path in (ROOT / "perturbcast" / "report").glob("*.py")}
    assert {"inputs.py", "tables.py", "figures.py", "page.py"} <= set(sizes)
    assert max(sizes.values()) <= 500, sizes


# ------------------------------------------------------------------------------------ the answer above the fold

# After the page drew in a 1,280 x 800 window: where the verdict's first row ends, how wide the page is, and the
# leaderboard's column heads.
FOLD_PROBE = """
var row = document.querySelector('#verdict tbody tr');
var box = row ? row.getBoundingClientRect() : null;
document.body.setAttribute('data-verdict-bottom', box ? String(box.bottom) : 'none');
document.body.setAttribute('data-page-width', String(document.documentElement.scrollWidth));
var heads = [];
document.querySelectorAll('table.board thead th').forEach(function (th) { heads.push(th.textContent); });
document.body.setAttribute('data-board-heads', JSON.stringify(heads));
document.body.setAttribute('data-banner', (document.querySelector('header .headline') || {}).textContent || '');
"""


def above_the_fold(page: Path, work: Path) -> dict:
    import json

    dom, errors = render_dom(page, work, FOLD_PROBE, "--window-size=1280,800")
    assert errors == [], errors

    def attribute(name):
        return re.search(rf'{name}="([^"]*)"', dom).group(1).replace("&quot;", '"').replace("&amp;", "&")
    return {"verdict_bottom": attribute("data-verdict-bottom"), "page_width": int(attribute("data-page-width")),
            "heads": json.loads(attribute("data-board-heads")), "banner": attribute("data-banner")}


def test_default_run_shows_the_verdict_above_the_fold_and_a_column_per_task(chromium, benchmark_report, tmp_path):
    seen = above_the_fold(benchmark_report, tmp_path)
    assert seen["verdict_bottom"] != "none" and float(seen["verdict_bottom"]) <= 800
    assert seen["page_width"] <= 1280  # the leaderboard scrolls inside its box, not the page
    assert [h for h in seen["heads"] if h.startswith("unseen_")] == ["unseen_perturbationheadline",
                                                                     "unseen_combinationheadline"]
    assert seen["heads"].index("unseen_combinationheadline") < next(
        i for i, h in enumerate(seen["heads"]) if h.startswith("overall"))


def test_no_signal_run_says_not_ranked_above_the_fold_and_names_no_best_method(chromium, constructed_output,
                                                                                tmp_path):
    headline = pd.read_parquet(constructed_output / "headline.parquet")
    headline[["headline", "headline_low", "headline_high"]] = float("nan")
    headline = headline.assign(ranked=False, not_ranked_reason="no perturbation with a reproducible effect",
                               n_reproducible=0, n_evaluated=40)
    headline.to_parquet(constructed_output / "headline.parquet", index=False)
    summary = pd.read_parquet(constructed_output / "summary.parquet")
    summary[["calibrated", "calibrated_low", "calibrated_high"]] = float("nan")
    summary.to_parquet(constructed_output / "summary.parquet", index=False)
    page = report.write_report(constructed_output)
    seen = above_the_fold(page, tmp_path)
    assert "Best method" not in seen["banner"] and "Nothing is ranked" in seen["banner"]
    assert "not ranked: no perturbation with a reproducible effect (0 of 40 perturbations" in seen["banner"]
    assert float(seen["verdict_bottom"]) <= 800
    assert any(h.startswith("unseen_combination") for h in seen["heads"])
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot(page, ARTIFACTS / "report_not_ranked.png")


def null_screen(path: Path) -> Path:
    """A user's CRISPRi screen with no effect at all: 12 targets and controls drawn from one Poisson profile."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    genes = [f"GENE{i}" for i in range(40)]
    base = rng.gamma(2.0, 4.0, size=len(genes))
    labels = [label for label in ["non-targeting"] + genes[:12] for _ in range(40)]
    counts = rng.poisson(base, size=(len(labels), len(genes))).astype(np.float32)
    obs = pd.DataFrame({"target_gene": labels, "perturbation_type": "CRISPRi"},
                       index=[f"cell{i}" for i in range(len(labels))])
    ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)
    return path


def test_no_signal_own_data_run_says_not_ranked_in_the_terminal_and_the_report(chromium, tmp_path, capsys):
    output = tmp_path / "null"
    code = cli_main(["benchmark", "--project", str(ROOT), "--output", str(output), "--dataset-file",
                     str(null_screen(tmp_path / "null_screen.h5ad")), "--dataset-arg", "perturbation_column=target_gene",
                     "--methods", "linear_baseline", "--metrics", "delta_error", "delta_correlation", "--folds", "0",
                     "--n-resamples", "50", "--jobs", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "null_screen / unseen_perturbation" in printed and ": not ranked: no reproducible effect" in printed
    assert "Best method" not in printed and max(map(len, printed.splitlines())) <= 120
    seen = above_the_fold(output / "report.html", tmp_path)
    assert "Best method" not in seen["banner"] and "Nothing is ranked" in seen["banner"]
    assert "not ranked: no reproducible effect" in seen["banner"]
    assert float(seen["verdict_bottom"]) <= 800
    assert [h for h in seen["heads"] if h.startswith("unseen_")] == ["unseen_perturbationheadline"]
