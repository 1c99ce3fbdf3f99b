"""What a user reads (issue 23): the verdict first, "not ranked" said aloud with its evidence, no best method where
none beats the training mean, one headline column per task with the fallback share beside it, every printed line
within 120 columns; the report's order, colour scale and grouped failures. On tables made by hand, so each number
below is known; the verdict columns (`ranked`, `not_ranked_reason`, `n_reproducible`, `n_evaluated`,
`fallback_share`, `status`) are those scoring writes into headline.parquet."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from perturbcast import layout, leaderboard
from perturbcast import report
from perturbcast.report.figures import heatmap_figure
from perturbcast.report.inputs import Inputs

from test_report import constructed_output  # noqa: F401 (a fixture)

TASKS = ("unseen_perturbation", "unseen_combination")


def summary_table(rows) -> pd.DataFrame:
    columns = ["method_id", "method_type", "calibrated", "calibrated_low", "calibrated_high", "wins", "ties", "losses"]
    return pd.DataFrame([dict(zip(columns, r)) for r in rows], columns=columns)


def slice_rows(values: dict, **extra) -> pd.DataFrame:
    """Per-slice headline rows: values[(task, method)] = (headline, low, high)."""
    rows = []
    for (task, method), (h, lo, hi) in values.items():
        rows.append({"dataset_id": "screen", "task_id": task, "method_id": method,
                     "method_type": "control_method" if method in ("train_mean", "replicate_ceiling") else "method",
                     "headline": h, "headline_low": lo, "headline_high": hi, "n_conditions": 40, **extra})
    return pd.DataFrame(rows)


@pytest.fixture
def signal():
    """linear_baseline: 0.15 [0.09, 0.22] overall, hiding -0.03 [-0.10, 0.02] on unseen_perturbation (friction 4),
    and falling back to the training mean on 40% of the conditions of unseen_combination (friction 3)."""
    summary = summary_table([("replicate_ceiling", "control_method", 1.0, 1.0, 1.0, 6, 0, 0),
                             ("linear_baseline", "method", 0.15, 0.09, 0.22, 3, 2, 1),
                             ("train_mean", "control_method", 0.0, 0.0, 0.0, 0, 0, 0)])
    by_slice = slice_rows({("unseen_perturbation", "linear_baseline"): (-0.03, -0.10, 0.02),
                           ("unseen_combination", "linear_baseline"): (0.33, 0.20, 0.41),
                           ("unseen_perturbation", "train_mean"): (0.0, 0.0, 0.0),
                           ("unseen_combination", "train_mean"): (0.0, 0.0, 0.0)})
    by_slice["fallback_share"] = [0.0, 0.4, np.nan, np.nan]
    summary.attrs["by_slice"] = by_slice
    return summary


@pytest.fixture
def no_signal():
    """A screen whose loader found 0 of 40 reproducible effects: every slice not ranked, headline NaN (friction 1)."""
    summary = summary_table([("linear_baseline", "method", np.nan, np.nan, np.nan, 0, 3, 1),
                             ("train_mean", "control_method", np.nan, np.nan, np.nan, 0, 0, 0)])
    by_slice = slice_rows({(t, m): (np.nan, np.nan, np.nan) for t in TASKS for m in ("linear_baseline", "train_mean")},
                          ranked=False, not_ranked_reason="no perturbation with a reproducible effect",
                          n_reproducible=0, n_evaluated=40, fallback_share=np.nan, status="")
    summary.attrs["by_slice"] = by_slice
    return summary


# ------------------------------------------------------------------------------------------------ terminal

def test_terminal_verdict_names_winners_with_gain_interval_and_n(signal):
    lines = leaderboard.verdict_lines(signal.attrs["by_slice"])
    # unseen_perturbation first (the task order of the columns), then unseen_combination
    assert lines == ["screen / unseen_perturbation (n = 40): no method beats the training mean",
                     "screen / unseen_combination (n = 40): beat train_mean: linear_baseline by 0.33 [0.20, 0.41]"]


def test_terminal_leaderboard_has_a_column_per_task_with_the_fallback_share(signal):
    board = leaderboard.leaderboard(signal)
    text = leaderboard.format_leaderboard(board)
    head, *rows = text.splitlines()
    assert head.split()[:6] == ["method", "kind", "unseen", "pert", "unseen", "combo"]
    assert head.split()[6] == "overall"
    row = next(r for r in rows if r.startswith("linear_baseline"))
    # the task that the overall 0.15 hides, then the task with its 40 % fallback, then the overall
    assert row.split()[2:7] == ["-0.03", "0.33", "fb40%", "0.150", "[0.09,"]
    assert board.set_index("method_id").at["linear_baseline", "fallback:unseen_combination"] == pytest.approx(0.4)
    assert max(len(line) for line in text.splitlines()) <= layout.LINE_WIDTH


def test_terminal_says_not_ranked_with_the_loaders_evidence_and_names_no_best_method(no_signal):
    text = leaderboard.text(no_signal, ["mse_delta"])
    assert ("screen / unseen_perturbation (n = 40): not ranked: no perturbation with a reproducible effect (0 of 40 "
            "perturbations with a reproducible effect)") in " ".join(line.strip() for line in text.splitlines())
    assert "Best method" not in text
    # nothing was compared, so the run does not say that no method beats the training mean
    assert "Overall: nothing is ranked: no dataset x task here has the signal to tell methods apart" in text
    assert "no method beats the training mean" not in text
    assert "n.r." in leaderboard.format_leaderboard(leaderboard.leaderboard(no_signal))
    assert max(len(line) for line in text.splitlines()) <= layout.LINE_WIDTH


def test_a_best_method_is_named_only_above_the_training_mean(signal):
    assert leaderboard.best_method(signal)["method_id"] == "linear_baseline"
    below = signal.copy()
    below.loc[below.method_id == "linear_baseline", ["calibrated", "calibrated_low"]] = [-0.2, -0.4]
    assert leaderboard.best_method(below) is None  # friction 8: a new method below train_mean was called "Best"
    assert "Best method" not in leaderboard.text(below, ["mse_delta"])


def test_a_method_that_always_falls_back_reads_fallback_not_a_score():
    summary = summary_table([("knn_perturbation", "method", np.nan, np.nan, np.nan, 0, 0, 0),
                             ("train_mean", "control_method", 0.0, 0.0, 0.0, 0, 0, 0)])
    by_slice = slice_rows({("unseen_perturbation", "knn_perturbation"): (np.nan, np.nan, np.nan),
                           ("unseen_perturbation", "train_mean"): (0.0, 0.0, 0.0)},
                          fallback_share=1.0, status="")
    by_slice.loc[0, "status"] = "not applicable: falls back to the training mean"
    summary.attrs["by_slice"] = by_slice
    row = leaderboard.format_leaderboard(leaderboard.leaderboard(summary)).splitlines()[1]
    assert row.split()[:3] == ["knn_perturbation", "method", "fb100%"]


def test_tables_without_the_verdict_columns_read_as_ranked(signal):
    plain = signal.attrs["by_slice"].drop(columns=["fallback_share"])
    table = leaderboard.with_verdict_columns(plain)
    assert table["ranked"].all() and (table["not_ranked_reason"] == "").all() and table["fallback_share"].isna().all()
    combination = next(v for v in leaderboard.verdicts(plain) if v["task_id"] == "unseen_combination")
    assert combination["ranked"] and combination["winners"][0][:2] == ("linear_baseline", 0.33)


def test_fit_lines_keeps_every_line_within_the_width():
    long = "word " * 60
    lines = layout.fit_lines(f"  {long}\nshort")
    assert max(map(len, lines)) <= layout.LINE_WIDTH and lines[-1] == "short"
    assert all(line.startswith("  ") for line in lines[:-1])


# ------------------------------------------------------------------------------------------------ report

def _with_verdict(output, **columns):
    headline = pd.read_parquet(output / "headline.parquet")
    for name, value in columns.items():
        headline[name] = value
    headline.to_parquet(output / "headline.parquet", index=False)


def test_report_opens_with_the_verdict_then_the_leaderboard_by_task(constructed_output):  # noqa: F811
    _with_verdict(constructed_output, fallback_share=0.25)
    page = report.write_report(constructed_output).read_text()
    main = page[page.index("<main"):]
    assert main.index('id="verdict"') < main.index('id="leaderboard"') < main.index('id="calibration"')
    verdict = main[main.index('id="verdict"'):main.index('id="leaderboard"')]
    assert "toy_a" in verdict and "unseen_combination" in verdict and "my_method" in verdict
    board = main[main.index('id="leaderboard"'):main.index("</table>", main.index('id="leaderboard"'))]
    heads = re.findall(r"<th[^>]*>(.*?)</th>", board)
    assert heads[2].startswith("unseen_combination") and heads[3].startswith("overall")
    assert "falls back on 25%" in board
    assert "board-scroll" in board


def test_report_banner_says_not_ranked_and_names_no_best_method(constructed_output):  # noqa: F811
    _with_verdict(constructed_output, ranked=False, headline=np.nan, headline_low=np.nan, headline_high=np.nan,
                  not_ranked_reason="no perturbation with a reproducible effect", n_reproducible=0, n_evaluated=40)
    summary = pd.read_parquet(constructed_output / "summary.parquet")
    summary[["calibrated", "calibrated_low", "calibrated_high"]] = np.nan
    summary.to_parquet(constructed_output / "summary.parquet", index=False)
    page = report.write_report(constructed_output).read_text()
    header = page[page.index("<header"):page.index("</header>")]
    # the heatmap colours no cell of a slice that is not ranked (toy_a and toy_b: every slice here)
    assert all(value is None for row in heatmap_figure(Inputs(constructed_output))["data"][0]["z"] for value in row)
    assert "Best method" not in page
    assert "Nothing is ranked: no dataset x task here has the signal to tell methods apart" in header
    assert "No method beats the training mean" not in header
    assert ("toy_a · unseen_combination: not ranked: no perturbation with a reproducible effect (0 of 40 "
            "perturbations with a reproducible effect)") in header


def test_heatmap_colour_scale_spans_the_clamped_range(constructed_output):  # noqa: F811
    figure = heatmap_figure(Inputs(constructed_output))
    trace = figure["data"][0]
    assert (trace["zmin"], trace["zmax"]) == (-1.0, 1.0)
    assert trace["colorbar"]["tickvals"] == [-1.0, 0, 1.0]
    assert not any("2" in t for t in trace["colorbar"]["ticktext"])


def test_failures_grouped_by_root_cause_and_not_installed_listed_once(constructed_output):  # noqa: F811
    trace = pd.read_csv(constructed_output / "trace.tsv", sep="\t")
    extra = []
    for fold in range(3):
        split = f"toy_a/unseen_combination/seed_0/fold_{fold}"
        extra.append({"step": f"predict/{split}/latent_additive", "stage": "predict", "component": "latent_additive",
                      "status": "not_installed", "reason": "[not installed] latent_additive needs PyTorch: pip install "
                                                           "-e '.[torch]'"})
        extra.append({"step": f"score/{split}/latent_additive/delta_error", "stage": "score",
                      "component": "delta_error", "status": "not_applicable",
                      "reason": f"upstream predict/{split}/latent_additive not installed",
                      "blocked_by": f"predict/{split}/latent_additive", "blocked_by_status": "not_installed"})
        extra.append({"step": f"predict/{split}/crashy", "stage": "predict", "component": "crashy",
                      "status": "failed", "exit_code": 1, "reason": "[error] ValueError: bad"})
        extra.append({"step": f"score/{split}/crashy/delta_error", "stage": "score", "component": "delta_error",
                      "status": "skipped", "reason": f"upstream predict/{split}/crashy failed",
                      "blocked_by": f"predict/{split}/crashy", "blocked_by_status": "failed"})
    pd.concat([trace, pd.DataFrame(extra)]).to_csv(constructed_output / "trace.tsv", sep="\t", index=False)
    page = report.write_report(constructed_output).read_text()
    failures = page[page.index('id="failures"'):page.index("</section>", page.index('id="failures"'))]
    installed = failures[failures.index("<h3>Not installed"):failures.index("<h3>Failed")]
    assert installed.count("<tr>") == 2 and "pip install -e &#x27;.[torch]&#x27;" in installed  # head + one row
    failed = failures[failures.index("<h3>Failed"):failures.index("<h3>", failures.index("<h3>Failed") + 5)]
    assert failed.count("<code>crashy</code>") == 1 and "<td class='num'>3</td>" in failed
    skipped = failures[failures.index("<h3>Skipped"):]
    assert "predict/toy_a/unseen_combination/seed_0/fold_0/crashy</code> and 2 more of its steps" in skipped
    assert "latent_additive" not in skipped  # not installed is not a cause of skipped steps
    header = page[page.index("<header"):page.index("</header>")]
    assert "+ 1 not installed</a>: latent_additive" in header
