"""From score files to the results tables: raw values per stratum, calibrated scores, intervals, outcomes.

Calibrated score (VCC 2026): `(u - b) / (r - b)` with `b` the `train_mean` control and `r` the
`replicate_ceiling` control on the same dataset x task x seed x stratum x metric, the folds of a partition
(seed) pooled. 0 means no better than the training mean, 1 as good as the ceiling (an estimate of a
true-mean oracle). Where the ceiling does not beat the baseline in the metric's direction beyond resampling
noise (the paired bootstrap interval of `r - b` includes 0) there is no scale, and the score is left empty;
`r - b` (the dynamic range) is kept so a metric with no headroom is visible rather than hidden in a ratio.

The headline, which slices can be ranked at all, and the win / tie / loss calls that must hold in every
partition: headline.py. The vocabulary (baseline, ceiling, panel) and the bootstrap statistics: panel.py.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from . import layout
from .layout import vocabulary

from .headline import fallback_shares, headline_tables, pooled_outcomes, slice_verdicts
from .panel import (ALL_STRATA, BASELINE_METHOD, CEILING_METHOD, FALLBACK_STATUS, FAMILY_ALPHA,  # noqa: F401
                    HEADLINE_CLAMP, HEADLINE_PANEL, MIN_DYNAMIC_RANGE, MIN_PANEL_METRICS, MIN_STRATUM_CONDITIONS, holm, interval,
                    orientation, p_value)

KEYS = ["dataset_id", "task_id", "seed", "metric_id", "stratum"]


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
        labels["method_type"] = (method_types or {}).get(vocabulary.method_and_prior(labels["method_id"])[0], "method")
        for key in ("dataset_id", "task_id", "seed", "fold", "method_id", "method_type", "metric_component"):
            parts[key].append(np.full(n, labels[key], dtype=np.int64 if key in ("seed", "fold") else object))
    if not parts["value"]:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame({column: np.concatenate(parts[column]) for column in columns})


def dataset_evidence(output_dir: Path) -> dict:
    """Per dataset of a results folder, the loader's evidence of signal from its dataset card
    (`uns['dataset_report']`: perturbation conditions with a reproducible effect, of those assessed)."""
    import h5py

    evidence = {}
    for path in sorted(Path(output_dir).glob(layout.DATASET_GLOB)):
        try:
            with h5py.File(path, "r") as handle:
                uns = handle.get("uns")
                report = uns.get("dataset_report") if uns is not None else None
                dataset_id = uns["dataset_id"][()] if uns is not None and "dataset_id" in uns else None
                if report is None or dataset_id is None:
                    continue
                values = {key: report[key][()] for key in ("n_reproducible_effect", "n_perturbation_conditions_assessed")
                          if key in report}
        except (OSError, KeyError):
            continue
        if len(values) == 2:
            name = dataset_id.decode() if isinstance(dataset_id, bytes) else str(dataset_id)
            evidence[name] = {"n_reproducible": float(values["n_reproducible_effect"]),
                              "n_evaluated": float(values["n_perturbation_conditions_assessed"])}
    return evidence


def mark_fallbacks(per_condition: pd.DataFrame, output_dir: Path) -> pd.DataFrame:
    """per_condition with a `fallback` column: whether the method returned the training mean for the
    condition, as its prediction's uns['fallback_conditions'] says (NaN where the prediction does not say)."""
    from .formats import fallback_conditions

    if per_condition.empty:
        return per_condition.assign(fallback=np.nan)
    said = {}
    for key in per_condition[["dataset_id", "task_id", "seed", "fold", "method_id"]].drop_duplicates().itertuples(index=False):
        split = layout.split_key(key.dataset_id, key.task_id, int(key.seed), int(key.fold))
        path = layout.step_dir(Path(output_dir), layout.PREDICT, layout.predict_key(split, key.method_id)) / \
            layout.STAGE_OUTPUTS[layout.PREDICT]["output"]
        conditions = fallback_conditions(path) if path.exists() else None
        said[tuple(key)] = None if conditions is None else set(conditions)
    keys = zip(per_condition["dataset_id"], per_condition["task_id"], per_condition["seed"], per_condition["fold"],
               per_condition["method_id"])
    flags = [np.nan if said.get(k) is None else float(c in said[k]) for k, c in zip(keys, per_condition["condition"])]
    return per_condition.assign(fallback=np.array(flags, dtype=float))


def _bootstrap_counts(n_conditions: int, n_resamples: int, rng) -> np.ndarray:
    """How often each condition is drawn in each resample (resamples x conditions)."""
    draws = rng.integers(0, n_conditions, size=(n_resamples, n_conditions))
    counts = np.zeros((n_resamples, n_conditions))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return counts


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
                  maximize: dict | None = None, evidence: dict | None = None, no_outcome=(),
                  min_panel_metrics: int = MIN_PANEL_METRICS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw mean per stratum and overall, calibrated score, paired bootstrap 95% intervals, Holm-corrected
    outcomes against `train_mean`, and the per-method headline summary (headline.headline_tables).

    The folds of one partition (a `seed`) are pooled: their test conditions are disjoint, so a dataset x task
    x seed holds every eligible perturbation once. One set of condition resamples is drawn per dataset x task
    x stratum and applied to every partition (a partition uses the columns of its own conditions), so every
    method, metric and partition sees the same resamples: differences are paired, the panel mean of the
    headline is resampled jointly across metrics, and the mean over partitions keeps the width of one
    partition's interval instead of shrinking by averaging independent resamples. A stratum with fewer than
    MIN_STRATUM_CONDITIONS conditions gets raw values only. `evidence`: dataset -> the loader's
    reproducible-effect counts (headline.slice_verdicts); `no_outcome`: metric ids that get no win / tie /
    loss call; per_condition's optional `fallback` column marks conditions where a method returned the
    training mean; `min_panel_metrics`: the calibrated panel metrics a slice needs to be ranked.
    """
    columns = KEYS + ["method_id", "method_type", "metric_component", "n_conditions", "value", "value_low",
                      "value_high", "baseline", "ceiling", "dynamic_range", "score", "score_low", "score_high",
                      "diff_from_baseline", "diff_low", "diff_high", "p_value", "p_holm", "outcome_partition",
                      "p_pooled", "p_pooled_holm", "outcome"]
    if per_condition.empty:
        return pd.DataFrame(columns=columns), pd.DataFrame()
    maximize = maximize or {}
    fallback = fallback_shares(per_condition)
    fell_back = {(r.dataset_id, r.task_id, r.method_id) for r in fallback.itertuples() if r.fallback_share == 1.0}
    both = pd.concat([per_condition.assign(stratum=ALL_STRATA), per_condition], ignore_index=True)
    rows, panel, boots = [], {}, {}
    for (dataset, task, stratum), group in both.groupby(["dataset_id", "task_id", "stratum"], sort=True, observed=True):
        union = sorted(group["condition"].unique())
        position = {c: i for i, c in enumerate(union)}
        rng = np.random.default_rng([seed, zlib.crc32(f"{dataset}|{task}|{stratum}".encode())])
        common_counts = _bootstrap_counts(len(union), n_resamples, rng)
        for partition, partition_rows in group.groupby("seed", sort=True, observed=True):
            if stratum == ALL_STRATA:
                panel.setdefault((dataset, task, partition), {})  # a slice without any scale is a verdict too
            conditions = sorted(partition_rows["condition"].unique())
            counts = common_counts[:, [position[c] for c in conditions]]
            scaled = stratum == ALL_STRATA or len(conditions) >= MIN_STRATUM_CONDITIONS
            for metric_id, metric_rows in partition_rows.groupby("metric_id", sort=True, observed=True):
                key = (dataset, task, partition, metric_id, stratum)
                matrix = metric_rows.pivot_table(index=["method_id", "method_type", "metric_component"],
                                                 columns="condition", values="value", aggfunc="mean")
                matrix = matrix.reindex(columns=conditions)
                methods = list(matrix.index.get_level_values(0))
                calibration = _calibrate(matrix.to_numpy(dtype=float), counts, methods, maximize.get(metric_id),
                                         scaled=scaled)
                if stratum == ALL_STRATA and metric_id in HEADLINE_PANEL and calibration["score_boot"] is not None:
                    panel.setdefault((dataset, task, partition), {})[metric_id] = (
                        methods, calibration["score"], calibration["score_boot"], calibration["n"])
                for index, method in enumerate(methods):  # only fell back: no calibrated score, no test
                    if (dataset, task, method) in fell_back and method != BASELINE_METHOD:
                        for column in ("score", "score_low", "score_high", "p"):
                            calibration[column] = np.array(calibration[column], dtype=float, copy=True)
                            calibration[column][index] = np.nan
                if calibration.get("diff_boot") is not None and scaled:
                    boots.setdefault((dataset, task, stratum, metric_id), {})[partition] = (
                        methods, calibration["diff_boot"])
                for index, (method, method_type, component) in enumerate(matrix.index):
                    rows.append([*key, method, method_type, component, *(calibration[c][index] for c in (
                        "n", "means", "low", "high")), calibration["baseline"], calibration["ceiling"],
                        calibration["dynamic"], *(calibration[c][index] for c in (
                            "score", "score_low", "score_high", "diff", "diff_low", "diff_high", "p"))])
    results = pd.DataFrame(rows, columns=columns[:-5])
    results["p_holm"], results["outcome_partition"] = _outcomes(results, maximize, set(no_outcome))
    results = pooled_outcomes(results, {k: {s: _without(m, b, k[:2], fell_back) for s, (m, b) in v.items()}
                                        for k, v in boots.items()}, maximize, set(no_outcome))
    verdicts = slice_verdicts(panel, evidence, min_panel_metrics)
    unranked = {key for key, verdict in verdicts.items() if not verdict["ranked"]}
    silent = np.array([(d, t) in unranked or (d, t, m) in fell_back
                       for d, t, m in zip(results["dataset_id"], results["task_id"], results["method_id"])], dtype=bool)
    results.loc[silent, ["outcome", "outcome_partition"]] = ""
    results = results[columns]
    summary, by_slice = headline_tables(results, panel, verdicts, fallback)
    summary.attrs["by_slice"] = by_slice
    return results, summary


def _without(methods: list, diff_boot: np.ndarray, slice_key: tuple, fell_back: set):
    """A partition's difference resamples without the methods that only fell back on that slice."""
    keep = [i for i, m in enumerate(methods) if (*slice_key, m) not in fell_back or m == BASELINE_METHOD]
    return [methods[i] for i in keep], diff_boot[:, keep]


def _calibrate(values: np.ndarray, counts: np.ndarray, methods: list[str], better: bool | None,
               scaled: bool = True) -> dict:
    """Means, intervals, calibrated scores and differences from the baseline of one metric on one slice
    (rows = methods, columns = conditions; NaN = the method has no value for that condition). `scaled`
    False: raw values and differences only (no calibrated score, no test)."""
    present = np.isfinite(values)
    filled = np.where(present, values, 0.0)
    with np.errstate(all="ignore"):
        means = filled.sum(axis=1) / present.sum(axis=1)
        boot = (counts @ filled.T) / (counts @ present.T.astype(float))  # resamples x methods
    nan = np.full(len(methods), np.nan)
    base = methods.index(BASELINE_METHOD) if BASELINE_METHOD in methods else None
    ceil = methods.index(CEILING_METHOD) if CEILING_METHOD in methods else None
    low, high = interval(boot)
    out = {"n": present.sum(axis=1).astype(int), "means": means, "low": low, "high": high,
           "baseline": means[base] if base is not None else np.nan,
           "ceiling": means[ceil] if ceil is not None else np.nan,
           "score": nan, "score_low": nan, "score_high": nan, "diff": nan, "diff_low": nan, "diff_high": nan,
           "p": nan, "score_boot": None, "diff_boot": None}
    out["dynamic"] = out["ceiling"] - out["baseline"]
    if base is None:
        return out
    diff_boot = boot - boot[:, [base]]
    out["diff"] = means - out["baseline"]
    out["diff_low"], out["diff_high"] = interval(diff_boot)
    out["diff_boot"] = diff_boot
    if not scaled:
        return out
    # the metric's direction orients the test; without it, the ceiling's side of the baseline does
    sign = orientation(better, out["dynamic"])
    if np.isfinite(sign):
        out["p"] = np.array([p_value(diff_boot[:, i] * sign) if i != base else np.nan for i in range(len(methods))])
    if ceil is not None and _significant_headroom(out["dynamic"], diff_boot[:, ceil], better):
        range_boot = diff_boot[:, [ceil]]
        with np.errstate(all="ignore"):
            # a resample whose ceiling falls to or below its baseline has no scale: left out, not +-inf
            score_boot = np.where(range_boot * np.sign(out["dynamic"]) > MIN_DYNAMIC_RANGE, diff_boot / range_boot, np.nan)
        out["score"] = out["diff"] / out["dynamic"]
        out["score_low"], out["score_high"] = interval(score_boot)
        out["score_boot"] = score_boot
    return out


def _outcomes(results: pd.DataFrame, maximize: dict, no_outcome: set) -> tuple[np.ndarray, list[str]]:
    """Each partition's own win / tie / loss against train_mean at family-wise level 0.05 with Holm's
    correction (`outcome_partition`; the final call, `outcome`, also needs the pooled test: headline.py).

    A family is one method's tests of one kind: the headline panel over every dataset x task x seed (all
    strata pooled), the other metrics likewise, and the per-stratum rows of each. A win needs the Holm-adjusted
    bootstrap p-value below 0.05 and the difference on the better side. Metrics in `no_outcome` are not tested."""
    adjusted = np.full(len(results), np.nan)
    p = results["p_value"].to_numpy(dtype=float).copy()
    p[results["metric_id"].isin(no_outcome).to_numpy()] = np.nan
    family = (results["method_id"].astype(str) + "|" + results["metric_id"].isin(HEADLINE_PANEL).map(
        {True: "panel", False: "other"}) + "|" + (results["stratum"] == ALL_STRATA).map({True: "all", False: "strata"}))
    for _, index in results.groupby(family, sort=False).indices.items():
        adjusted[index] = holm(p[index])
    outcomes = []
    for row, p_adjusted in zip(results.itertuples(index=False), adjusted):
        if row.method_id == BASELINE_METHOD or not np.isfinite(p_adjusted):
            outcomes.append("")
            continue
        oriented = row.diff_from_baseline * orientation(maximize.get(row.metric_id), row.dynamic_range)
        outcomes.append("win" if p_adjusted < FAMILY_ALPHA and oriented > 0
                        else "loss" if p_adjusted < FAMILY_ALPHA and oriented < 0 else "tie")
    return adjusted, outcomes


def with_prior_id(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with a `prior_id` column beside `method_id` (`none` for a method run without a prior): a
    variant's method_id is `<method>+<prior>` (vocabulary.method_variant), so it keeps its own rows everywhere."""
    if "method_id" not in table.columns or "prior_id" in table.columns:
        return table
    table = table.copy()
    table.insert(table.columns.get_loc("method_id") + 1, "prior_id",
                 [vocabulary.method_and_prior(m)[1] for m in table["method_id"]])
    return table


def write_results(per_condition: pd.DataFrame, results: pd.DataFrame, summary: pd.DataFrame, output_dir: Path,
                  effects: pd.DataFrame | None = None):
    """The result tables, each written under a partial name and renamed only when all are written: a full
    disk or an interrupt leaves the previous tables (issue 22), never a truncated one."""
    by_slice = summary.attrs.get("by_slice", pd.DataFrame())
    plain = summary.copy()
    plain.attrs = {}
    tables = {layout.RESULTS: results, layout.PER_CONDITION: per_condition, layout.SUMMARY: plain, layout.HEADLINE: by_slice}
    tables = {name: with_prior_id(table) for name, table in tables.items()}
    if effects is not None:  # a run without priors has an empty table: an earlier run's effects never linger
        tables[layout.PRIOR_EFFECTS] = effects
    written = {}
    try:
        for name, table in tables.items():
            temporary = Path(layout.partial_name(output_dir / name, f"{os.getpid()}"))
            written[name] = temporary
            table.to_parquet(temporary, index=False)
        for name, temporary in written.items():
            os.replace(temporary, output_dir / name)
    finally:
        for temporary in written.values():
            temporary.unlink(missing_ok=True)
