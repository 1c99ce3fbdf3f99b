"""From score files to the results tables: raw values per stratum and calibrated scores.

Calibrated score (VCC 2026): `(u - b) / (r - b)` with `b` the `train_mean` control and `r` the
`replicate_ceiling` control on the same dataset x task x seed x stratum x metric. 0 means no better than
the training mean, 1 as good as a replicate experiment. Where the ceiling does not beat the baseline in
the metric's direction beyond resampling noise (the paired bootstrap interval of `r - b` includes 0)
there is no scale, and the score is left empty; `r - b` (the dynamic range) is kept so a metric with no
headroom is visible rather than hidden in a ratio.
"""
from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

BASELINE_METHOD = "train_mean"
CEILING_METHOD = "replicate_ceiling"
ALL_STRATA = "all"
KEYS = ["dataset_id", "task_id", "seed", "metric_id", "stratum"]
# Below this dynamic range the ratio is numerically meaningless.
MIN_DYNAMIC_RANGE = 1e-12


def score_files(output_dir: Path) -> list[tuple[dict, Path]]:
    """Every `scores/<dataset>/<task>/seed_<s>/<method>/<metric>/score.h5ad` below `output_dir`.

    Both engines publish this layout, so the labels come from the path and need no step records.
    """
    found = []
    for path in sorted(Path(output_dir).glob("scores/*/*/seed_*/*/*/score.h5ad")):
        metric, method, seed, task, dataset = path.parts[-2], path.parts[-3], path.parts[-4], path.parts[-5], path.parts[-6]
        found.append(({"dataset_id": dataset, "task_id": task, "seed": int(seed.removeprefix("seed_")),
                       "method_id": method, "metric_component": metric}, path))
    return found


def per_condition_table(output_dir: Path, method_types: dict[str, str] | None = None,
                        only: set | None = None) -> pd.DataFrame:
    """One row per (score file, test condition, metric id); `only` restricts to these score files."""
    import anndata as ad

    frames = []
    for labels, path in score_files(output_dir):
        if only is not None and path.resolve() not in only:
            continue
        score = ad.read_h5ad(path)
        metric_ids = [str(m) for m in np.atleast_1d(score.uns["metric_ids"])]
        obs = score.obs.reset_index(names="condition")
        long = obs.melt(id_vars=["condition", "stratum"], value_vars=[m for m in metric_ids if m in obs.columns],
                        var_name="metric_id", value_name="value")
        for key, value in labels.items():
            long[key] = value
        long["method_type"] = (method_types or {}).get(labels["method_id"], "method")
        frames.append(long)
    columns = ["dataset_id", "task_id", "seed", "method_id", "method_type", "metric_component", "metric_id",
               "condition", "stratum", "value"]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True)[columns]
    table["stratum"] = table["stratum"].astype(str)
    table["value"] = table["value"].astype(float)
    return table


def _bootstrap_counts(n_conditions: int, n_resamples: int, rng) -> np.ndarray:
    """How often each condition is drawn in each resample (resamples x conditions)."""
    draws = rng.integers(0, n_conditions, size=(n_resamples, n_conditions))
    counts = np.zeros((n_resamples, n_conditions))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return counts


def _interval(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"):
        return np.nanpercentile(samples, 2.5, axis=0), np.nanpercentile(samples, 97.5, axis=0)


def _significant_headroom(dynamic: float, range_boot: np.ndarray, maximize: bool | None) -> bool:
    """Whether the ceiling beats the baseline, in the metric's direction, beyond resampling noise (the
    2.5th percentile of the resampled `r - b` is above 0). Otherwise there is no scale to calibrate on:
    the ratio would flip sign or explode (a range of 0.001 turns a difference of 0.03 into a score of 30)."""
    if not np.isfinite(dynamic) or abs(dynamic) <= MIN_DYNAMIC_RANGE:
        return False
    sign = np.sign(dynamic) if maximize is None else (1.0 if maximize else -1.0)
    if np.sign(dynamic) != sign:
        return False
    with np.errstate(all="ignore"):
        return bool(np.nanpercentile(range_boot * sign, 2.5) > 0)


def results_table(per_condition: pd.DataFrame, n_resamples: int = 1000, seed: int = 0,
                  maximize: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw mean per stratum and overall, calibrated score, and paired bootstrap 95% intervals.

    Within one dataset x task x seed x metric x stratum every method is scored on the same test
    conditions, so every method sees the same resamples: the intervals of differences are paired.
    Returns the long results table and the per-method summary across datasets, tasks and metrics.
    """
    columns = KEYS + ["method_id", "method_type", "metric_component", "n_conditions", "value", "value_low",
                      "value_high", "baseline", "ceiling", "dynamic_range", "score", "score_low", "score_high",
                      "diff_from_baseline", "diff_low", "diff_high", "outcome"]
    if per_condition.empty:
        return pd.DataFrame(columns=columns), pd.DataFrame()
    both = pd.concat([per_condition.assign(stratum=ALL_STRATA), per_condition], ignore_index=True)
    rows, score_samples = [], {}
    for key, group in both.groupby(KEYS, sort=True, observed=True):
        matrix = group.pivot_table(index=["method_id", "method_type", "metric_component"], columns="condition",
                                   values="value", aggfunc="mean")
        values = matrix.to_numpy(dtype=float)
        present = np.isfinite(values)
        n = values.shape[1]
        rng = np.random.default_rng([seed, zlib.crc32("|".join(map(str, key)).encode())])
        counts = _bootstrap_counts(n, n_resamples, rng)
        filled = np.where(present, values, 0.0)
        with np.errstate(all="ignore"):
            means = filled.sum(axis=1) / present.sum(axis=1)
            boot = (counts @ filled.T) / (counts @ present.T.astype(float))  # resamples x methods
        methods = list(matrix.index.get_level_values("method_id"))
        base = methods.index(BASELINE_METHOD) if BASELINE_METHOD in methods else None
        ceil = methods.index(CEILING_METHOD) if CEILING_METHOD in methods else None
        low, high = _interval(boot)
        nan = np.full(len(methods), np.nan)
        baseline = means[base] if base is not None else np.nan
        ceiling = means[ceil] if ceil is not None else np.nan
        dynamic = ceiling - baseline
        score = score_low = score_high = diff = diff_low = diff_high = nan
        if base is not None:
            diff_boot = boot - boot[:, [base]]
            diff = means - baseline
            diff_low, diff_high = _interval(diff_boot)
            if ceil is not None and _significant_headroom(dynamic, diff_boot[:, ceil], (maximize or {}).get(key[3])):
                range_boot = diff_boot[:, [ceil]]
                with np.errstate(all="ignore"):
                    # a resample whose ceiling falls to or below its baseline has no scale: left out, not +-inf
                    score_boot = np.where(range_boot * np.sign(dynamic) > MIN_DYNAMIC_RANGE, diff_boot / range_boot, np.nan)
                score = diff / dynamic
                score_low, score_high = _interval(score_boot)
                if key[-1] == ALL_STRATA:
                    for index, method in enumerate(methods):
                        score_samples.setdefault(method, []).append(score_boot[:, index])
        better = (maximize or {}).get(key[3], None)
        for index, (method, method_type, component) in enumerate(matrix.index):
            outcome = ""
            if base is not None and method != BASELINE_METHOD:
                # the metric's direction decides; without it, the calibrated score (oriented by the ceiling) does
                if better is not None:
                    lo, hi = (diff_low[index], diff_high[index]) if better else (-diff_high[index], -diff_low[index])
                else:
                    lo, hi = score_low[index], score_high[index]
                if np.isfinite(lo) and np.isfinite(hi):
                    outcome = "win" if lo > 0 else "loss" if hi < 0 else "tie"
            rows.append([*key, method, method_type, component, int(present[index].sum()), means[index], low[index],
                         high[index], baseline, ceiling, dynamic, score[index], score_low[index], score_high[index],
                         diff[index], diff_low[index], diff_high[index], outcome])
    results = pd.DataFrame(rows, columns=columns)
    return results, _summary(results, score_samples)


def _summary(results: pd.DataFrame, score_samples: dict) -> pd.DataFrame:
    """Per method: mean calibrated score over datasets x tasks x seeds x metrics, its interval, and outcomes."""
    overall = results[results["stratum"] == ALL_STRATA]
    rows = []
    for (method, method_type), group in overall.groupby(["method_id", "method_type"], sort=False):
        samples = score_samples.get(method)
        low = high = np.nan
        if samples:
            with warnings.catch_warnings():  # a resample with no calibrated value anywhere has no mean: NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean_samples = np.nanmean(np.vstack(samples), axis=0)
            low, high = np.nanpercentile(mean_samples, [2.5, 97.5]) if np.isfinite(mean_samples).any() else (np.nan, np.nan)
        outcomes = group["outcome"].value_counts()
        rows.append({"method_id": method, "method_type": method_type, "calibrated": group["score"].mean(),
                     "calibrated_low": low, "calibrated_high": high, "n_scores": int(group["score"].notna().sum()),
                     "wins": int(outcomes.get("win", 0)), "ties": int(outcomes.get("tie", 0)),
                     "losses": int(outcomes.get("loss", 0))})
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    return summary.sort_values(["calibrated", "method_id"], ascending=[False, True], na_position="last").reset_index(drop=True)


def leaderboard(results: pd.DataFrame, summary: pd.DataFrame, metric_ids: list[str] | None = None) -> pd.DataFrame:
    """The summary with the raw mean of each metric (all strata) beside it."""
    overall = results[results["stratum"] == ALL_STRATA]
    if metric_ids:
        overall = overall[overall["metric_id"].isin(metric_ids)]
    if overall.empty or summary.empty:
        return pd.DataFrame()
    raw = overall.pivot_table(index="method_id", columns="metric_id", values="value", aggfunc="mean")
    board = summary.merge(raw, left_on="method_id", right_index=True, how="left")
    board["interval"] = [f"[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "-"
                         for lo, hi in zip(board["calibrated_low"], board["calibrated_high"])]
    board["vs train_mean"] = [f"{w}/{t}/{l}" if m != BASELINE_METHOD else "-"
                              for m, w, t, l in zip(board["method_id"], board["wins"], board["ties"], board["losses"])]
    front = ["method_id", "method_type", "calibrated", "interval", "vs train_mean"]
    return board[front + list(raw.columns)]


def format_leaderboard(board: pd.DataFrame) -> str:
    if board.empty:
        return "(no scores)"
    shown = board.copy()
    shown["method_type"] = shown["method_type"].map({"control_method": "control", "method": "method"}).fillna(shown["method_type"])
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format", "{:.3f}".format):
        return shown.to_string(index=False, na_rep="-")


def write_results(per_condition: pd.DataFrame, results: pd.DataFrame, summary: pd.DataFrame, output_dir: Path):
    results.to_parquet(output_dir / "results.parquet", index=False)
    per_condition.to_parquet(output_dir / "results_per_condition.parquet", index=False)
    summary.to_parquet(output_dir / "summary.parquet", index=False)
