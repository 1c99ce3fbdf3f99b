"""From score files to the results tables: raw values per stratum, calibrated scores, the headline.

Calibrated score (VCC 2026): `(u - b) / (r - b)` with `b` the `train_mean` control and `r` the
`replicate_ceiling` control on the same dataset x task x seed x stratum x metric, the folds of a partition
(seed) pooled. 0 means no better than the training mean, 1 as good as the ceiling (an estimate of a
true-mean oracle). Where the ceiling does not beat the baseline in the metric's direction beyond resampling
noise (the paired bootstrap interval of `r - b` includes 0) there is no scale, and the score is left empty;
`r - b` (the dynamic range) is kept so a metric with no headroom is visible rather than hidden in a ratio.

Headline: the mean over a pre-registered panel (`HEADLINE_PANEL`, one metric per family) of calibrated
scores clamped to [-1, 1], averaged over partitions and then over dataset x task slices, with a paired
bootstrap interval. Wins / ties / losses against `train_mean` are bootstrap tests with Holm's correction
within each method's family of tests (`FAMILY_ALPHA`).
"""
from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from . import layout

BASELINE_METHOD = "train_mean"
CEILING_METHOD = "replicate_ceiling"
ALL_STRATA = "all"
KEYS = ["dataset_id", "task_id", "seed", "metric_id", "stratum"]
# Below this dynamic range the ratio is numerically meaningless.
MIN_DYNAMIC_RANGE = 1e-12
# The headline's pre-registered panel, one metric per family: an error, a correlation, a top-k DE agreement,
# a discrimination between perturbations, and a correlation against the perturbed centroid (Systema) that a
# prediction of the average perturbation effect cannot win. Fixed before any result was seen; the full
# metric table stays in results.parquet and the report.
HEADLINE_PANEL = ("mse_delta", "pearson_delta", "overlap_top100_de", "discrimination_l1",
                  "pearson_delta_perturbed_ref")
# Calibrated scores enter the headline clamped to [-1, 1]: bounded and symmetric, so one metric with a tiny
# dynamic range cannot dominate the mean and a loss counts as much as a gain of the same size.
HEADLINE_CLAMP = 1.0
# Family-wise error rate of the win / tie / loss calls (Holm's step-down correction within each family).
FAMILY_ALPHA = 0.05


def score_labels(path: Path, uns) -> dict:
    """Labels of one score file (layout.SCORE_LABELS), read from its `uns`, never from where it lies: the ids
    its metric wrote (`dataset_id`, `task_id`, `method_id`) and the split labels it copied from the solution
    (`split_seed`; `fold`, absent for a task without folds: 0). The metric component is the one label a
    score file does not carry: from `uns['metric_component']` where present, else the step's record
    (both engines' score folders are named after it: layout.metric_component_of_score)."""
    component = uns.get("metric_component")
    record = Path(path).parent / layout.STEP_RECORD
    if component is None and record.exists():
        import json
        try:
            component = json.loads(record.read_text()).get("labels", {}).get("metric_component")
        except (OSError, ValueError):
            component = None
    seed, fold = uns.get("split_seed"), uns.get("fold")
    return {"dataset_id": str(uns["dataset_id"]), "task_id": str(uns["task_id"]),
            "seed": int(seed) if seed is not None else 0, "fold": int(fold) if fold is not None else 0,
            "method_id": str(uns["method_id"]),
            "metric_component": str(component or layout.metric_component_of_score(path))}


def score_files(output_dir: Path) -> list[Path]:
    """Every score file below `output_dir` (both engines publish the same folders), sorted."""
    return sorted(Path(output_dir).glob(layout.SCORE_GLOB))


# the uns entries aggregation reads from a score file (labels, ids and the OpenProblems score_uns.yaml)
SCORE_UNS_KEYS = ("dataset_id", "task_id", "method_id", "metric_ids", "metric_values", "split_seed", "fold",
                  "metric_component")


def read_score(path: Path) -> tuple[pd.DataFrame, dict]:
    """obs and the SCORE_UNS_KEYS entries of uns of a score file, read with h5py (anndata's full read of
    ~1,000 small score files took most of aggregation)."""
    from .formats import read_obs_uns

    return read_obs_uns(path, SCORE_UNS_KEYS)


def per_condition_table(output_dir: Path, method_types: dict[str, str] | None = None,
                        only: set | None = None) -> pd.DataFrame:
    """One row per (score file, test condition, metric id); `only` restricts to these score files.

    Labels come from each score's own `uns` (see `score_labels`), not from where the file lies."""
    columns = ["dataset_id", "task_id", "seed", "fold", "method_id", "method_type", "metric_component", "metric_id",
               "condition", "stratum", "value"]
    parts: dict[str, list] = {column: [] for column in columns}
    for path in score_files(output_dir):
        if only is not None and path.resolve() not in only:
            continue
        obs, uns = read_score(path)
        labels = score_labels(path, uns)
        metric_ids = [str(m) for m in np.atleast_1d(uns["metric_ids"])]
        present = [m for m in metric_ids if m in obs.columns]
        n = len(obs) * len(present)
        # metric after metric, each over all conditions (the order of a melt of obs)
        parts["condition"].append(np.tile(obs.index.to_numpy(dtype=object), len(present)))
        parts["stratum"].append(np.tile(obs["stratum"].astype(str).to_numpy(dtype=object), len(present)))
        parts["metric_id"].append(np.repeat(np.array(present, dtype=object), len(obs)))
        parts["value"].append(obs[present].to_numpy(dtype=float).T.reshape(-1) if present else np.empty(0))
        labels["method_type"] = (method_types or {}).get(labels["method_id"], "method")
        for key in ("dataset_id", "task_id", "seed", "fold", "method_id", "method_type", "metric_component"):
            parts[key].append(np.full(n, labels[key], dtype=np.int64 if key in ("seed", "fold") else object))
    if not parts["value"]:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame({column: np.concatenate(parts[column]) for column in columns})


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


def _p_value(oriented: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference oriented so that > 0 is better: twice the share of
    resamples on the less frequent side of 0 (1 when the difference is exactly 0 everywhere)."""
    oriented = oriented[np.isfinite(oriented)]
    if oriented.size == 0:
        return np.nan
    return float(min(1.0, 2.0 * min(np.mean(oriented <= 0), np.mean(oriented >= 0))))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    if tested.size == 0:
        return adjusted
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def results_table(per_condition: pd.DataFrame, n_resamples: int = 1000, seed: int = 0,
                  maximize: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw mean per stratum and overall, calibrated score, paired bootstrap 95% intervals, Holm-corrected
    outcomes against `train_mean`, and the per-method headline summary (see `headline`).

    The folds of one partition (a `seed`) are pooled: their test conditions are disjoint, so a dataset x task
    x seed holds every eligible perturbation once. Within one dataset x task x seed x stratum every method and
    every metric sees the same resamples of conditions, so differences are paired and the panel mean of the
    headline is resampled jointly across metrics.
    """
    columns = KEYS + ["method_id", "method_type", "metric_component", "n_conditions", "value", "value_low",
                      "value_high", "baseline", "ceiling", "dynamic_range", "score", "score_low", "score_high",
                      "diff_from_baseline", "diff_low", "diff_high", "p_value", "p_holm", "outcome"]
    if per_condition.empty:
        return pd.DataFrame(columns=columns), pd.DataFrame()
    maximize = maximize or {}
    both = pd.concat([per_condition.assign(stratum=ALL_STRATA), per_condition], ignore_index=True)
    rows, panel = [], {}
    for group_key, group in both.groupby(["dataset_id", "task_id", "seed", "stratum"], sort=True, observed=True):
        conditions = sorted(group["condition"].unique())
        rng = np.random.default_rng([seed, zlib.crc32("|".join(map(str, group_key)).encode())])
        counts = _bootstrap_counts(len(conditions), n_resamples, rng)
        for metric_id, metric_rows in group.groupby("metric_id", sort=True, observed=True):
            key = (*group_key[:3], metric_id, group_key[3])
            matrix = metric_rows.pivot_table(index=["method_id", "method_type", "metric_component"],
                                             columns="condition", values="value", aggfunc="mean")
            matrix = matrix.reindex(columns=conditions)
            calibration = _calibrate(matrix.to_numpy(dtype=float), counts, list(matrix.index.get_level_values(0)),
                                     maximize.get(metric_id))
            if group_key[3] == ALL_STRATA and metric_id in HEADLINE_PANEL and calibration["score_boot"] is not None:
                panel.setdefault(group_key[:3], {})[metric_id] = (
                    list(matrix.index.get_level_values(0)), calibration["score"], calibration["score_boot"],
                    calibration["n"])
            for index, (method, method_type, component) in enumerate(matrix.index):
                rows.append([*key, method, method_type, component, *(calibration[c][index] for c in (
                    "n", "means", "low", "high")), calibration["baseline"], calibration["ceiling"],
                    calibration["dynamic"], *(calibration[c][index] for c in (
                        "score", "score_low", "score_high", "diff", "diff_low", "diff_high", "p"))])
    results = pd.DataFrame(rows, columns=columns[:-2])
    results["p_holm"], results["outcome"] = _outcomes(results, maximize)
    results = results[columns]
    summary, by_slice = headline_tables(results, panel)
    summary.attrs["by_slice"] = by_slice
    return results, summary


def _calibrate(values: np.ndarray, counts: np.ndarray, methods: list[str], better: bool | None) -> dict:
    """Means, intervals, calibrated scores and differences from the baseline of one metric on one slice
    (rows = methods, columns = conditions; NaN = the method has no value for that condition)."""
    present = np.isfinite(values)
    filled = np.where(present, values, 0.0)
    with np.errstate(all="ignore"):
        means = filled.sum(axis=1) / present.sum(axis=1)
        boot = (counts @ filled.T) / (counts @ present.T.astype(float))  # resamples x methods
    nan = np.full(len(methods), np.nan)
    base = methods.index(BASELINE_METHOD) if BASELINE_METHOD in methods else None
    ceil = methods.index(CEILING_METHOD) if CEILING_METHOD in methods else None
    low, high = _interval(boot)
    out = {"n": present.sum(axis=1).astype(int), "means": means, "low": low, "high": high,
           "baseline": means[base] if base is not None else np.nan,
           "ceiling": means[ceil] if ceil is not None else np.nan,
           "score": nan, "score_low": nan, "score_high": nan, "diff": nan, "diff_low": nan, "diff_high": nan,
           "p": nan, "score_boot": None}
    out["dynamic"] = out["ceiling"] - out["baseline"]
    if base is None:
        return out
    diff_boot = boot - boot[:, [base]]
    out["diff"] = means - out["baseline"]
    out["diff_low"], out["diff_high"] = _interval(diff_boot)
    # the metric's direction orients the test; without it, the ceiling's side of the baseline does
    sign = (1.0 if better else -1.0) if better is not None else (
        np.sign(out["dynamic"]) if np.isfinite(out["dynamic"]) and out["dynamic"] != 0 else np.nan)
    if np.isfinite(sign):
        out["p"] = np.array([_p_value(diff_boot[:, i] * sign) if i != base else np.nan for i in range(len(methods))])
        out["oriented"] = out["diff"] * sign
    if ceil is not None and _significant_headroom(out["dynamic"], diff_boot[:, ceil], better):
        range_boot = diff_boot[:, [ceil]]
        with np.errstate(all="ignore"):
            # a resample whose ceiling falls to or below its baseline has no scale: left out, not +-inf
            score_boot = np.where(range_boot * np.sign(out["dynamic"]) > MIN_DYNAMIC_RANGE, diff_boot / range_boot, np.nan)
        out["score"] = out["diff"] / out["dynamic"]
        out["score_low"], out["score_high"] = _interval(score_boot)
        out["score_boot"] = score_boot
    return out


def _outcomes(results: pd.DataFrame, maximize: dict) -> tuple[np.ndarray, list[str]]:
    """Win / tie / loss against train_mean at family-wise level 0.05 with Holm's correction.

    A family is one method's tests of one kind: the headline panel over every dataset x task x seed (all
    strata pooled), the other metrics likewise, and the per-stratum rows of each. A win needs the Holm-adjusted
    bootstrap p-value below 0.05 and the difference on the better side."""
    adjusted = np.full(len(results), np.nan)
    family = (results["method_id"].astype(str) + "|" + results["metric_id"].isin(HEADLINE_PANEL).map(
        {True: "panel", False: "other"}) + "|" + (results["stratum"] == ALL_STRATA).map({True: "all", False: "strata"}))
    for _, index in results.groupby(family, sort=False).indices.items():
        adjusted[index] = holm(results["p_value"].to_numpy()[index])
    outcomes = []
    for row, p_adjusted in zip(results.itertuples(index=False), adjusted):
        if row.method_id == BASELINE_METHOD or not np.isfinite(p_adjusted):
            outcomes.append("")
            continue
        better = maximize.get(row.metric_id)
        sign = (1.0 if better else -1.0) if better is not None else np.sign(row.dynamic_range)
        oriented = row.diff_from_baseline * sign
        outcomes.append("win" if p_adjusted < FAMILY_ALPHA and oriented > 0
                        else "loss" if p_adjusted < FAMILY_ALPHA and oriented < 0 else "tie")
    return adjusted, outcomes


def _clamped(values: np.ndarray) -> np.ndarray:
    return np.clip(values, -HEADLINE_CLAMP, HEADLINE_CLAMP)


def _nanmean(arrays: list[np.ndarray]) -> np.ndarray:
    with warnings.catch_warnings():  # a resample with no calibrated value anywhere has no mean: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.vstack(arrays), axis=0)


def _finite_interval(samples: np.ndarray) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return np.nan, np.nan
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def headline_tables(results: pd.DataFrame, panel: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The headline: per dataset x task x seed the mean over the panel metrics of the clamped calibrated score
    (metrics without a scale on that slice left out); per dataset x task the mean over partitions (seeds); per
    method the mean over dataset x task slices. Intervals come from the same paired resamples all the way up.

    Returns (summary per method, headline per dataset x task x method)."""
    per_seed: dict[tuple, dict[str, tuple[float, np.ndarray, int]]] = {}
    for (dataset, task, seed), metrics in panel.items():
        by_method: dict[str, list] = {}
        for methods, score, score_boot, n in metrics.values():
            for index, method in enumerate(methods):
                if np.isfinite(score[index]):
                    by_method.setdefault(method, []).append((_clamped(score[index]), _clamped(score_boot[:, index]), n[index]))
        for method, entries in by_method.items():
            per_seed.setdefault((dataset, task), {}).setdefault(method, []).append(
                (float(np.mean([e[0] for e in entries])), _nanmean([e[1] for e in entries]),
                 int(max(e[2] for e in entries)), len(entries)))
    types = results.drop_duplicates("method_id").set_index("method_id")["method_type"].to_dict()
    slice_rows, overall = [], {}
    for (dataset, task), methods in sorted(per_seed.items()):
        for method, seeds in methods.items():
            point = float(np.mean([s[0] for s in seeds]))
            boot = _nanmean([s[1] for s in seeds])
            low, high = _finite_interval(boot)
            seed_points = [s[0] for s in seeds]
            slice_rows.append({"dataset_id": dataset, "task_id": task, "method_id": method,
                               "method_type": types.get(method, "method"), "headline": point,
                               "headline_low": low, "headline_high": high,
                               "n_conditions": int(max(s[2] for s in seeds)), "n_panel_metrics": int(max(s[3] for s in seeds)),
                               "n_partitions": len(seeds), "partition_min": float(min(seed_points)),
                               "partition_max": float(max(seed_points))})
            overall.setdefault(method, []).append((point, boot, len(seeds), max(seed_points) - min(seed_points)))
    by_slice = pd.DataFrame(slice_rows)
    panel_rows = results[(results["stratum"] == ALL_STRATA) & results["metric_id"].isin(HEADLINE_PANEL)]
    rows = []
    for (method, method_type), group in results.groupby(["method_id", "method_type"], sort=False):
        entries = overall.get(method, [])
        point = float(np.mean([e[0] for e in entries])) if entries else np.nan
        low, high = _finite_interval(_nanmean([e[1] for e in entries])) if entries else (np.nan, np.nan)
        outcomes = panel_rows[panel_rows["method_id"] == method]["outcome"].value_counts()
        spreads = [e[3] for e in entries if e[2] > 1]
        rows.append({"method_id": method, "method_type": method_type, "calibrated": point,
                     "calibrated_low": low, "calibrated_high": high,
                     "n_scores": int(panel_rows[panel_rows["method_id"] == method]["score"].notna().sum()),
                     "n_slices": len(entries), "wins": int(outcomes.get("win", 0)), "ties": int(outcomes.get("tie", 0)),
                     "losses": int(outcomes.get("loss", 0)),
                     "partition_spread": float(np.mean(spreads)) if spreads else np.nan})
    summary = pd.DataFrame(rows)
    if not summary.empty:
        summary = summary.sort_values(["calibrated", "method_id"], ascending=[False, True],
                                      na_position="last").reset_index(drop=True)
    return summary, by_slice


def write_results(per_condition: pd.DataFrame, results: pd.DataFrame, summary: pd.DataFrame, output_dir: Path):
    results.to_parquet(output_dir / layout.RESULTS, index=False)
    per_condition.to_parquet(output_dir / layout.PER_CONDITION, index=False)
    by_slice = summary.attrs.get("by_slice", pd.DataFrame())
    plain = summary.copy()
    plain.attrs = {}
    plain.to_parquet(output_dir / layout.SUMMARY, index=False)
    by_slice.to_parquet(output_dir / layout.HEADLINE, index=False)
