"""Calibration, paired bootstrap intervals and the per-method summary on hand-made score tables."""
import numpy as np
import pandas as pd
import pytest

from perturbcast import scoring


def table(values: dict, metric="pearson_delta", strata=None) -> pd.DataFrame:
    """values: method -> per-condition values (same conditions for every method)."""
    rows = []
    for method, per_condition in values.items():
        for index, value in enumerate(per_condition):
            rows.append({"dataset_id": "d", "task_id": "t", "seed": 0, "method_id": method,
                         "method_type": "method" if method == "m" else "control_method",
                         "metric_component": "delta_error", "metric_id": metric, "condition": f"c{index}",
                         "stratum": (strata or ["single"] * len(per_condition))[index], "value": value})
    return pd.DataFrame(rows)


def test_calibrated_score_is_zero_at_baseline_and_one_at_ceiling():
    per_condition = table({"train_mean": [0.2, 0.4], "replicate_ceiling": [0.8, 1.0], "m": [0.5, 0.7],
                           "ground_truth": [1.0, 1.0]})
    results, summary = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=200, maximize={"pearson_delta": True})
    overall = results[results.stratum == "all"].set_index("method_id")
    assert overall.loc["m", "value"] == pytest.approx(0.6)
    assert overall.loc["m", "baseline"] == pytest.approx(0.3) and overall.loc["m", "ceiling"] == pytest.approx(0.9)
    assert overall.loc["m", "dynamic_range"] == pytest.approx(0.6)
    assert overall.loc["m", "score"] == pytest.approx(0.5)
    assert overall.loc["train_mean", "score"] == pytest.approx(0.0)
    assert overall.loc["replicate_ceiling", "score"] == pytest.approx(1.0)
    assert overall.loc["ground_truth", "score"] > 1.0
    # m is better than the baseline on every condition by exactly 0.3: a degenerate, certain interval
    assert overall.loc["m", "diff_low"] == pytest.approx(0.3) and overall.loc["m", "diff_high"] == pytest.approx(0.3)
    assert overall.loc["m", "outcome"] == "win"


def test_lower_is_better_metrics_calibrate_the_same_way():
    per_condition = table({"train_mean": [4.0, 4.0], "replicate_ceiling": [1.0, 1.0], "m": [2.5, 2.5]}, metric="mse_delta")
    results, _ = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=50, maximize={"mse_delta": False})
    overall = results[results.stratum == "all"].set_index("method_id")
    assert overall.loc["m", "score"] == pytest.approx(0.5)
    assert overall.loc["m", "outcome"] == "win"  # lower error than train_mean on every resample


def test_intervals_cover_the_mean_and_are_seeded():
    rng = np.random.default_rng(1)
    per_condition = table({"train_mean": rng.normal(0.3, 0.1, 40), "replicate_ceiling": rng.normal(0.9, 0.05, 40),
                           "m": rng.normal(0.32, 0.2, 40)})
    first, _ = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=500, seed=3)
    second, _ = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=500, seed=3)
    pd.testing.assert_frame_equal(first, second)
    row = first[(first.stratum == "all") & (first.method_id == "m")].iloc[0]
    assert row.value_low < row.value < row.value_high
    assert row.score_low < row.score < row.score_high
    assert row.diff_low < 0.0 < row.diff_high or row.outcome in ("win", "loss")
    assert row.outcome == "tie" or row.diff_low > 0 or row.diff_high < 0


def test_strata_are_reported_beside_all():
    per_condition = table({"train_mean": [0.0, 0.2, 0.4], "replicate_ceiling": [1.0, 1.0, 1.0], "m": [0.5, 0.6, 0.4]},
                          strata=["single", "single", "combo_seen1"])
    results, _ = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=50)
    single = results[(results.stratum == "single") & (results.method_id == "m")].iloc[0]
    combo = results[(results.stratum == "combo_seen1") & (results.method_id == "m")].iloc[0]
    assert single.value == pytest.approx(0.55) and single.n_conditions == 2
    assert combo.value == pytest.approx(0.4) and combo.n_conditions == 1
    assert set(results.stratum) == {"all", "single", "combo_seen1"}


def test_no_ceiling_gives_no_calibrated_score_rather_than_a_wrong_one():
    per_condition = table({"train_mean": [0.2, 0.4], "m": [0.5, 0.7]})
    results, summary = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=20)
    assert results["score"].isna().all()
    assert results.set_index("method_id").loc["m"].iloc[0]["diff_from_baseline"] == pytest.approx(0.3)


def test_summary_counts_outcomes_and_averages_scores():
    per_condition = pd.concat([
        table({"train_mean": [0.2, 0.4], "replicate_ceiling": [0.8, 1.0], "m": [0.5, 0.7]}, metric="pearson_delta"),
        table({"train_mean": [4.0, 4.0], "replicate_ceiling": [1.0, 1.0], "m": [5.0, 5.0]}, metric="mse_delta"),
    ])
    results, summary = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=100,
                                             maximize={"pearson_delta": True, "mse_delta": False})
    m = summary.set_index("method_id").loc["m"]
    assert m.calibrated == pytest.approx((0.5 + (-1 / 3)) / 2)
    assert (m.wins, m.ties, m.losses) == (1, 0, 1)
    board = scoring.leaderboard(results, summary)
    assert list(board.columns[:5]) == ["method_id", "method_type", "calibrated", "interval", "vs train_mean"]
    assert "m" in scoring.format_leaderboard(board)


def test_no_calibrated_score_when_the_ceiling_is_not_better_than_the_baseline():
    per_condition = table({"train_mean": [0.5, 0.5], "replicate_ceiling": [0.4, 0.4], "m": [0.9, 0.9]})
    results, summary = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=20, maximize={"pearson_delta": True})
    assert results["score"].isna().all()
    # no panel metric has a scale: the slice is not ranked, so no call at all (the raw difference stays)
    assert results.set_index("method_id").loc["m"].iloc[0]["outcome"] == ""
    assert results.set_index("method_id").loc["m"].iloc[0]["diff_from_baseline"] == pytest.approx(0.4)
    by_slice = summary.attrs["by_slice"].set_index("method_id")
    assert not by_slice.loc["m", "ranked"] and by_slice.loc["m", "not_ranked_reason"].startswith(
        "too few calibrated panel metrics (0 of 5")
    assert np.isnan(by_slice.loc["m", "headline"])


def test_no_calibrated_score_where_the_ceiling_is_not_clearly_above_the_baseline():
    """The ceiling beats train_mean by 0.01 on average but not on every resample: a ratio over that range
    would turn m's difference of 0.2 into a score of about 20 and its resamples into +-inf."""
    ceiling = np.array([0.9, 0.1, 0.52, 0.5])
    per_condition = table({"train_mean": [0.5, 0.5, 0.5, 0.5], "replicate_ceiling": ceiling,
                           "m": [0.7, 0.7, 0.7, 0.7]})
    results, summary = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=400, maximize={"pearson_delta": True})
    overall = results[results.stratum == "all"].set_index("method_id")
    assert overall.loc["m", "dynamic_range"] == pytest.approx(ceiling.mean() - 0.5)
    assert overall.loc["m", "outcome"] == ""  # no scale: not ranked, no call
    assert overall[["score", "score_low", "score_high"]].isna().all().all()
    assert summary.set_index("method_id")["n_scores"].eq(0).all()


def test_calibrated_intervals_stay_finite_when_some_resamples_lose_the_headroom():
    rng = np.random.default_rng(5)
    base = rng.normal(0.3, 0.05, 30)
    ceiling = base + np.r_[np.full(27, 0.4), np.full(3, -1.5)]  # 3 conditions where the replicate fails badly
    per_condition = table({"train_mean": base, "replicate_ceiling": ceiling, "m": base + 0.1})
    results, summary = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=2000, maximize={"pearson_delta": True})
    row = results[(results.stratum == "all") & (results.method_id == "m")].iloc[0]
    assert np.isfinite([row.score, row.score_low, row.score_high]).all()
    assert row.score_low < row.score < row.score_high < 10
    m = summary.set_index("method_id").loc["m"]
    assert np.isfinite([m.calibrated_low, m.calibrated_high]).all()


def test_holm_adjusts_step_down_and_keeps_order():
    # hand-computed: sorted p 0.01, 0.02, 0.04 with m = 3 -> 0.03, 0.04, 0.04 (monotone), NaN is no test
    adjusted = scoring.holm([0.04, 0.01, np.nan, 0.02])
    assert adjusted[1] == pytest.approx(0.03)
    assert adjusted[3] == pytest.approx(0.04)
    assert adjusted[0] == pytest.approx(0.04)
    assert np.isnan(adjusted[2])
    assert scoring.holm([0.5, 0.9]).tolist() == [1.0, 1.0]


def test_a_difference_significant_alone_becomes_a_tie_among_many_tests():
    """One noisy small gain among several metrics: unadjusted it would be a win; Holm makes it a tie."""
    rng = np.random.default_rng(0)
    base = rng.normal(0.3, 0.2, 25)
    frames = []
    for metric in scoring.HEADLINE_PANEL:
        frames.append(table({"train_mean": base, "replicate_ceiling": base + 1.0,
                             "m": base + rng.normal(0.09, 0.2, 25)}, metric=metric))
    per_condition = pd.concat(frames)
    results, summary = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=2000,
                                             maximize={m: True for m in scoring.HEADLINE_PANEL})
    m = results[(results.method_id == "m") & (results.stratum == "all")]
    assert (m["p_holm"] >= m["p_value"]).all()
    raw_wins = int(((m["p_value"] < 0.05) & (m["diff_from_baseline"] > 0)).sum())
    holm_wins = int((m["outcome"] == "win").sum())
    assert holm_wins <= raw_wins
    row = summary.set_index("method_id").loc["m"]
    assert row.wins + row.ties + row.losses == len(scoring.HEADLINE_PANEL)


def test_headline_clamps_each_calibrated_score_and_ignores_metrics_outside_the_panel():
    per_condition = pd.concat([
        # a calibrated score of 5 (tiny dynamic range) is clamped to 1; -3 to -1
        table({"train_mean": [0.50, 0.50], "replicate_ceiling": [0.60, 0.60], "m": [1.00, 1.00]}, metric="pearson_delta"),
        table({"train_mean": [4.0, 4.0], "replicate_ceiling": [3.0, 3.0], "m": [7.0, 7.0]}, metric="mse_delta"),
        # not in the panel: a huge score that must not move the headline
        table({"train_mean": [0.0, 0.0], "replicate_ceiling": [0.01, 0.01], "m": [1.0, 1.0]}, metric="cosine_delta"),
    ])
    results, summary = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=100,
                                             maximize={"pearson_delta": True, "mse_delta": False, "cosine_delta": True})
    overall = results[results.stratum == "all"].set_index(["method_id", "metric_id"])
    assert overall.loc[("m", "pearson_delta"), "score"] == pytest.approx(5.0)
    assert overall.loc[("m", "mse_delta"), "score"] == pytest.approx(-3.0)
    assert overall.loc[("m", "cosine_delta"), "score"] == pytest.approx(100.0)
    row = summary.set_index("method_id").loc["m"]
    assert row.calibrated == pytest.approx(0.0)  # (1 + -1) / 2
    by_slice = summary.attrs["by_slice"].set_index("method_id")
    assert by_slice.loc["m", "headline"] == pytest.approx(0.0)
    assert by_slice.loc["m", "n_panel_metrics"] == 2
    assert summary.set_index("method_id").loc["replicate_ceiling", "calibrated"] == pytest.approx(1.0)


def test_folds_of_a_partition_are_pooled_and_partitions_are_averaged():
    def fold_table(seed, fold, conditions, values):
        frame = table(values)
        frame["condition"] = [conditions[i % len(conditions)] for i in range(len(frame))]
        frame["seed"], frame["fold"] = seed, fold
        return frame
    per_condition = pd.concat([
        fold_table(0, 0, ["a", "b"], {"train_mean": [0.0, 0.0], "replicate_ceiling": [1.0, 1.0], "m": [0.2, 0.2]}),
        fold_table(0, 1, ["c", "d"], {"train_mean": [0.0, 0.0], "replicate_ceiling": [1.0, 1.0], "m": [0.6, 0.6]}),
        fold_table(1, 0, ["a", "c"], {"train_mean": [0.0, 0.0], "replicate_ceiling": [1.0, 1.0], "m": [0.0, 0.0]}),
        fold_table(1, 1, ["b", "d"], {"train_mean": [0.0, 0.0], "replicate_ceiling": [1.0, 1.0], "m": [0.0, 0.0]}),
    ])
    results, summary = scoring.results_table(per_condition, min_panel_metrics=1, n_resamples=100, maximize={"pearson_delta": True})
    seed0 = results[(results.stratum == "all") & (results.method_id == "m") & (results.seed == 0)].iloc[0]
    assert seed0.n_conditions == 4 and seed0.value == pytest.approx(0.4)
    slice_row = summary.attrs["by_slice"].set_index("method_id").loc["m"]
    assert slice_row.n_partitions == 2
    assert slice_row.headline == pytest.approx(0.2)  # (0.4 + 0.0) / 2
    assert (slice_row.partition_min, slice_row.partition_max) == (pytest.approx(0.0), pytest.approx(0.4))
    assert summary.set_index("method_id").loc["m", "partition_spread"] == pytest.approx(0.4)


# ------------------------------------------------------------------------------------------------------------
# Verdicts: what can be ranked, partitions, fallbacks (headline.py)
# ------------------------------------------------------------------------------------------------------------

PANEL_UP = ("pearson_delta", "overlap_top100_de", "discrimination_l1")


def panel_table(values: dict, seed=0, strata=None, n=None) -> pd.DataFrame:
    """The same per-condition values under three panel metrics where larger is better."""
    frames = [table(values, metric=m, strata=strata) for m in PANEL_UP]
    frame = pd.concat(frames, ignore_index=True)
    frame["seed"] = seed
    return frame


MAXIMIZE = {m: True for m in PANEL_UP}


def test_three_calibrated_panel_metrics_rank_a_slice_and_two_do_not():
    rng = np.random.default_rng(2)
    base = rng.normal(0.2, 0.05, 30)
    values = {"train_mean": base, "replicate_ceiling": base + 0.5, "m": base + 0.25}
    three = panel_table(values)
    results, summary = scoring.results_table(three, n_resamples=200, maximize=MAXIMIZE)
    by_slice = summary.attrs["by_slice"].set_index("method_id")
    assert by_slice.loc["m", "ranked"] and by_slice.loc["m", "not_ranked_reason"] == ""
    assert by_slice.loc["m", "headline"] == pytest.approx(0.5)
    assert summary.set_index("method_id").loc["m", "wins"] == 3
    two = three[three.metric_id != "discrimination_l1"]
    results, summary = scoring.results_table(two, n_resamples=200, maximize=MAXIMIZE)
    by_slice = summary.attrs["by_slice"].set_index("method_id")
    assert not by_slice.loc["m", "ranked"]
    assert by_slice.loc["m", "not_ranked_reason"].startswith("too few calibrated panel metrics (2 of 5")
    assert np.isnan(by_slice.loc["m", "headline"]) and np.isnan(summary.set_index("method_id").loc["m", "calibrated"])
    assert (results["outcome"] == "").all()
    assert results.loc[results.method_id == "m", "score"].notna().all()  # calibrated values stay in the table


def test_no_reproducible_effect_means_not_ranked():
    rng = np.random.default_rng(3)
    base = rng.normal(0.2, 0.05, 30)
    per_condition = panel_table({"train_mean": base, "replicate_ceiling": base + 0.5, "m": base + 0.25})
    evidence = {"d": {"n_reproducible": 0.0, "n_evaluated": 40.0}}
    results, summary = scoring.results_table(per_condition, n_resamples=100, maximize=MAXIMIZE, evidence=evidence)
    row = summary.attrs["by_slice"].set_index("method_id").loc["m"]
    assert not row.ranked and row.not_ranked_reason.startswith("no reproducible effect (the loader found 0 of 40")
    assert (row.n_reproducible, row.n_evaluated) == (0.0, 40.0)
    assert (results["outcome"] == "").all()


def test_partitions_share_their_condition_resamples():
    """The same values in two partitions: the mean over partitions has exactly one partition's interval (with
    resamples drawn per partition, averaging two independent bootstrap distributions narrows it)."""
    rng = np.random.default_rng(4)
    base = rng.normal(0.2, 0.1, 25)
    values = {"train_mean": base, "replicate_ceiling": base + 0.6, "m": base + rng.normal(0.2, 0.3, 25)}
    one = panel_table(values)
    two = pd.concat([panel_table(values, seed=0), panel_table(values, seed=1)], ignore_index=True)
    _, summary_one = scoring.results_table(one, n_resamples=400, maximize=MAXIMIZE)
    _, summary_two = scoring.results_table(two, n_resamples=400, maximize=MAXIMIZE)
    a = summary_one.attrs["by_slice"].set_index("method_id").loc["m"]
    b = summary_two.attrs["by_slice"].set_index("method_id").loc["m"]
    assert b.n_partitions == 2 and b.headline == pytest.approx(a.headline)
    assert (b.headline_low, b.headline_high) == (pytest.approx(a.headline_low), pytest.approx(a.headline_high))


def test_a_win_must_hold_in_every_partition():
    """m wins clearly in partition 0 and loses clearly in partition 1: on average it is better, but the call
    flips between partitions, so it is a tie."""
    rng = np.random.default_rng(5)
    base = rng.normal(0.2, 0.02, 30)
    good = panel_table({"train_mean": base, "replicate_ceiling": base + 0.5, "m": base + 0.3}, seed=0)
    bad = panel_table({"train_mean": base, "replicate_ceiling": base + 0.5, "m": base - 0.1}, seed=1)
    results, summary = scoring.results_table(pd.concat([good, bad], ignore_index=True), n_resamples=300,
                                             maximize=MAXIMIZE)
    rows = results[(results.method_id == "m") & (results.stratum == "all")]
    assert set(rows.loc[rows.seed == 0, "outcome_partition"]) == {"win"}
    assert set(rows.loc[rows.seed == 1, "outcome_partition"]) == {"loss"}
    assert set(rows["outcome"]) == {"tie"}
    assert (rows["p_pooled_holm"] < 0.05).all()  # the pooled test alone would have called it a win
    m = summary.set_index("method_id").loc["m"]
    assert (m.wins, m.ties, m.losses) == (0, 3, 0)


def test_small_strata_get_raw_values_only():
    rng = np.random.default_rng(6)
    base = rng.normal(0.2, 0.05, 12)
    strata = ["single"] * 8 + ["combo_seen1"] * 4
    per_condition = panel_table({"train_mean": base, "replicate_ceiling": base + 0.5, "m": base + 0.3}, strata=strata)
    results, _ = scoring.results_table(per_condition, n_resamples=100, maximize=MAXIMIZE)
    small = results[results.stratum == "combo_seen1"]
    assert (small.n_conditions == 4).all() and small.value.notna().all()
    assert small.score.isna().all() and (small.outcome == "").all() and small.p_value.isna().all()
    large = results[(results.stratum == "single") & (results.method_id == "m")]
    assert large.score.notna().all() and set(large.outcome) == {"win"}


def test_a_method_that_only_fell_back_is_not_applicable_and_a_partial_share_is_shown():
    rng = np.random.default_rng(7)
    base = rng.normal(0.2, 0.05, 20)
    per_condition = panel_table({"train_mean": base, "replicate_ceiling": base + 0.5, "m": base, "k": base + 0.2})
    per_condition["fallback"] = np.where(per_condition.method_id == "m", 1.0,
                                         np.where(per_condition.method_id == "k",
                                                  (per_condition.condition.isin(["c0", "c1", "c2", "c3", "c4"])).astype(float),
                                                  np.nan))
    results, summary = scoring.results_table(per_condition, n_resamples=100, maximize=MAXIMIZE)
    by_slice = summary.attrs["by_slice"].set_index("method_id")
    assert by_slice.loc["m", "status"] == scoring.FALLBACK_STATUS and np.isnan(by_slice.loc["m", "headline"])
    assert by_slice.loc["m", "fallback_share"] == 1.0
    assert (results.loc[results.method_id == "m", "outcome"] == "").all()
    assert results.loc[results.method_id == "m", "score"].isna().all()
    assert np.isnan(summary.set_index("method_id").loc["m", "calibrated"])  # not a 0 in its headline
    assert by_slice.loc["k", "fallback_share"] == pytest.approx(0.25) and by_slice.loc["k", "status"] == ""
    assert by_slice.loc["k", "headline"] == pytest.approx(0.4)
