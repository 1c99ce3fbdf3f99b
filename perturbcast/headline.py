"""From per-partition results to verdicts: which dataset x task slices can be ranked, the headline per slice
and per method, win / tie / loss calls that hold across partitions, and methods that only fell back.

A slice (dataset x task) is ranked only where the data can rank: at least MIN_PANEL_METRICS panel metrics
have a scale (the ceiling beats train_mean beyond resampling noise) in every partition, and the loader found
perturbations with a reproducible effect (its dataset card's split-half test; unknown counts as found).
Elsewhere the slice is "not ranked: <reason>": no headline, no win / tie / loss, left out of the overall
headline. A method that returned the training mean for every test condition of a slice is not applicable
there (FALLBACK_STATUS), not a 0 averaged into its headline.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .panel import (ALL_STRATA, BASELINE_METHOD, FALLBACK_STATUS, FAMILY_ALPHA, HEADLINE_PANEL, MIN_PANEL_METRICS,
                    clamped, finite_interval, holm, nanmean, orientation, p_value)


def fallback_shares(per_condition: pd.DataFrame) -> pd.DataFrame:
    """Per dataset x task x method: the share of its test conditions (pooled over partitions and folds) for
    which the method returned the training mean (per_condition's `fallback` column; NaN where unknown)."""
    keys = ["dataset_id", "task_id", "method_id"]
    if per_condition.empty or "fallback" not in per_condition.columns:
        return pd.DataFrame(columns=keys + ["fallback_share"])
    rows = per_condition.drop_duplicates(["dataset_id", "task_id", "seed", "method_id", "condition"])
    flags = rows["fallback"].astype(float)
    return rows.assign(flag=flags).groupby(keys, sort=True, observed=True)["flag"].mean().rename(
        "fallback_share").reset_index()


def slice_verdicts(panel: dict, evidence: dict | None, min_panel_metrics: int = MIN_PANEL_METRICS) -> dict:
    """(dataset, task) -> {ranked, not_ranked_reason, n_panel_metrics, n_reproducible, n_evaluated}.

    `panel`: (dataset, task, seed) -> {metric: ...} of the panel metrics with a scale in that partition;
    `evidence`: dataset -> {n_reproducible, n_evaluated} from the loader's dataset card (absent: unknown)."""
    slices = {}
    for (dataset, task, seed), metrics in panel.items():
        slices.setdefault((dataset, task), []).append(len(metrics))
    verdicts = {}
    for (dataset, task), counts in slices.items():
        known = (evidence or {}).get(dataset, {})
        n_reproducible, n_evaluated = known.get("n_reproducible", np.nan), known.get("n_evaluated", np.nan)
        n_metrics = int(min(counts))
        reason = ""
        if np.isfinite(n_reproducible) and n_reproducible == 0:
            reason = (f"no reproducible effect (the loader found 0 of {int(n_evaluated)} perturbation conditions "
                      "with a split-half correlation of their deltas above 0.2)")
        elif n_metrics < min_panel_metrics:
            reason = (f"too few calibrated panel metrics ({n_metrics} of {len(HEADLINE_PANEL)}; at least "
                      f"{min_panel_metrics} needed: on the others the ceiling does not beat train_mean beyond noise)")
        verdicts[(dataset, task)] = {"ranked": not reason, "not_ranked_reason": reason, "n_panel_metrics": n_metrics,
                                     "n_reproducible": n_reproducible, "n_evaluated": n_evaluated}
    return verdicts


def pooled_outcomes(results: pd.DataFrame, boots: dict, maximize: dict, no_outcome: set) -> pd.DataFrame:
    """Win / tie / loss per dataset x task x stratum x metric x method against train_mean, over partitions.

    `boots`: (dataset, task, stratum, metric) -> {seed: (methods, difference-from-baseline resamples)}, the
    resamples common to every partition (one draw of conditions per dataset x task x stratum). The pooled
    difference is the mean over partitions, tested by its bootstrap p-value, Holm-corrected within each
    method's family (panel / other metrics x all / strata). A win (loss) needs the pooled test below
    FAMILY_ALPHA on the better (worse) side and every partition's own call (`outcome_partition`) the same.
    Metrics in `no_outcome` get no call. Returns the results with `p_pooled`, `p_pooled_holm`, `outcome`."""
    tests = []
    for (dataset, task, stratum, metric), by_seed in boots.items():
        if metric in no_outcome:
            continue
        methods = sorted({m for names, _ in by_seed.values() for m in names})
        stacked = []
        for names, diff_boot in by_seed.values():
            aligned = np.full((diff_boot.shape[0], len(methods)), np.nan)
            aligned[:, [methods.index(m) for m in names]] = diff_boot
            stacked.append(aligned)
        pooled = nanmean([s.reshape(1, -1) for s in stacked]).reshape(stacked[0].shape)
        for index, method in enumerate(methods):
            if method == BASELINE_METHOD:
                continue
            tests.append((dataset, task, stratum, metric, method, pooled[:, index]))
    table = results.copy()
    table["p_pooled"], table["p_pooled_holm"], table["outcome"] = np.nan, np.nan, ""
    if not tests:
        return table
    key = ["dataset_id", "task_id", "stratum", "metric_id", "method_id"]
    frame = pd.DataFrame([t[:5] for t in tests], columns=key)
    first = table.drop_duplicates(key).set_index(key)
    dynamic = first["dynamic_range"].reindex(pd.MultiIndex.from_frame(frame)).to_numpy()
    signs = np.array([orientation(maximize.get(m), d) for m, d in zip(frame["metric_id"], dynamic)])
    frame["p_pooled"] = [p_value(t[5] * s) if np.isfinite(s) else np.nan for t, s in zip(tests, signs)]
    frame["oriented"] = [np.nanmean(t[5]) * s if np.isfinite(s) else np.nan for t, s in zip(tests, signs)]
    family = (frame["method_id"] + "|" + frame["metric_id"].isin(HEADLINE_PANEL).map({True: "panel", False: "other"})
              + "|" + (frame["stratum"] == ALL_STRATA).map({True: "all", False: "strata"}))
    frame["p_pooled_holm"] = np.nan
    for _, index in frame.groupby(family, sort=False).indices.items():
        frame.loc[frame.index[index], "p_pooled_holm"] = holm(frame["p_pooled"].to_numpy()[index])
    partition_calls = table.groupby(key, sort=False)["outcome_partition"].agg(lambda calls: set(calls))
    calls = partition_calls.reindex(pd.MultiIndex.from_frame(frame[key])).to_numpy()
    outcome = []
    for p, oriented, own in zip(frame["p_pooled_holm"], frame["oriented"], calls):
        side = "win" if oriented > 0 else "loss" if oriented < 0 else ""
        outcome.append("" if not np.isfinite(p) else side if p < FAMILY_ALPHA and own == {side} else "tie")
    frame["outcome"] = outcome
    merged = table.drop(columns=["p_pooled", "p_pooled_holm", "outcome"]).merge(
        frame[key + ["p_pooled", "p_pooled_holm", "outcome"]], on=key, how="left")
    merged["outcome"] = merged["outcome"].fillna("")
    return merged


def headline_tables(results: pd.DataFrame, panel: dict, verdicts: dict,
                    fallback: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The headline: per dataset x task x seed the mean over the panel metrics of the clamped calibrated score
    (metrics without a scale on that partition left out); per dataset x task the mean over partitions, on
    ranked slices only; per method the mean over its ranked slices. Intervals come from the same paired
    resamples all the way up (common to every partition of a slice).

    Returns (summary per method, headline per dataset x task x method with the slice's verdict)."""
    shares = {} if fallback is None or fallback.empty else {
        (r.dataset_id, r.task_id, r.method_id): float(r.fallback_share) for r in fallback.itertuples()}
    per_seed: dict[tuple, dict[str, list]] = {}
    for (dataset, task, seed), metrics in panel.items():
        by_method: dict[str, list] = {}
        for methods, score, score_boot, n in metrics.values():
            for index, method in enumerate(methods):
                if np.isfinite(score[index]):
                    by_method.setdefault(method, []).append((clamped(score[index]), clamped(score_boot[:, index]), n[index]))
        for method, entries in by_method.items():
            per_seed.setdefault((dataset, task), {}).setdefault(method, []).append(
                (float(np.mean([e[0] for e in entries])), nanmean([e[1] for e in entries]),
                 int(max(e[2] for e in entries)), len(entries)))
    types = results.drop_duplicates("method_id").set_index("method_id")["method_type"].to_dict()
    overall_rows = results[results["stratum"] == ALL_STRATA]
    conditions = overall_rows.groupby(["dataset_id", "task_id", "method_id"], sort=True)["n_conditions"].max()
    slice_rows, overall = [], {}
    for (dataset, task, method), n_conditions in conditions.items():
        verdict = verdicts.get((dataset, task), {"ranked": True, "not_ranked_reason": ""})
        seeds = per_seed.get((dataset, task), {}).get(method, [])
        share = shares.get((dataset, task, method), np.nan)
        status = FALLBACK_STATUS if share == 1.0 and method != BASELINE_METHOD else ""
        seed_points = [s[0] for s in seeds]
        counted = bool(seeds) and verdict["ranked"] and not status
        point = float(np.mean(seed_points)) if counted else np.nan
        boot = nanmean([s[1] for s in seeds]) if seeds else None
        low, high = finite_interval(boot) if counted else (np.nan, np.nan)
        slice_rows.append({"dataset_id": dataset, "task_id": task, "method_id": method,
                           "method_type": types.get(method, "method"), "headline": point,
                           "headline_low": low, "headline_high": high, "n_conditions": int(n_conditions),
                           "n_panel_metrics": int(max(s[3] for s in seeds)) if seeds else 0,
                           "n_partitions": len(seeds),
                           "partition_min": float(min(seed_points)) if seeds else np.nan,
                           "partition_max": float(max(seed_points)) if seeds else np.nan,
                           "fallback_share": share, "status": status,
                           **{k: verdict.get(k) for k in ("ranked", "not_ranked_reason", "n_reproducible",
                                                            "n_evaluated")}})
        if counted:
            overall.setdefault(method, []).append((point, boot, len(seeds), max(seed_points) - min(seed_points)))
    by_slice = pd.DataFrame(slice_rows)
    ranked = {key for key, verdict in verdicts.items() if verdict["ranked"]}
    in_ranked = np.array([(d, t) in ranked for d, t in zip(results["dataset_id"], results["task_id"])], dtype=bool)
    panel_rows = results[in_ranked & (results["stratum"] == ALL_STRATA) & results["metric_id"].isin(HEADLINE_PANEL)]
    panel_rows = panel_rows.drop_duplicates(["dataset_id", "task_id", "metric_id", "method_id"])  # one call per slice
    rows = []
    for (method, method_type), _ in results.groupby(["method_id", "method_type"], sort=False):
        entries = overall.get(method, [])
        point = float(np.mean([e[0] for e in entries])) if entries else np.nan
        low, high = finite_interval(nanmean([e[1] for e in entries])) if entries else (np.nan, np.nan)
        mine = panel_rows[panel_rows["method_id"] == method]
        outcomes = mine["outcome"].value_counts()
        spreads = [e[3] for e in entries if e[2] > 1]
        rows.append({"method_id": method, "method_type": method_type, "calibrated": point,
                     "calibrated_low": low, "calibrated_high": high,
                     "n_scores": int(mine["score"].notna().sum()),
                     "n_slices": len(entries), "wins": int(outcomes.get("win", 0)), "ties": int(outcomes.get("tie", 0)),
                     "losses": int(outcomes.get("loss", 0)),
                     "partition_spread": float(np.mean(spreads)) if spreads else np.nan})
    summary = pd.DataFrame(rows)
    if not summary.empty:
        summary = summary.sort_values(["calibrated", "method_id"], ascending=[False, True],
                                      na_position="last").reset_index(drop=True)
    return summary, by_slice
