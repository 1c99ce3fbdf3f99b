"""The report's numbers as plain pandas tables (no HTML): what each section and figure shows is computed here,
so it can be tested on small frames without a page or a browser.

Inputs are the results tables and the trace as `inputs.Inputs` reads them; a metric's better direction comes
in as a mapping `metric_id -> True (higher is better) | False | None (unknown)`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..layout import PREDICT, dataset_of_step
from .inputs import ALL_STRATA, BASELINE_METHOD, FAILED, HEADLINE_CLAMP, HEADLINE_PANEL, NOT_APPLICABLE, OK, \
    SKIPPED, blocked_by

SLICE = ["dataset_id", "task_id", "seed"]
DIGITS = 4


# ----------------------------------------------------------------------------------------------- headroom

def headroom(dynamic_range: float, maximize: bool | None) -> float:
    """How far the replicate ceiling r is ahead of train_mean b in the metric's better direction: r - b when
    higher is better, b - r when lower is better, |r - b| when the direction is unknown (then the ceiling's
    side counts as better, as in scoring). Negative: the ceiling is behind the baseline."""
    if dynamic_range is None or not math.isfinite(float(dynamic_range)):
        return float("nan")
    if maximize is None:
        return abs(float(dynamic_range))
    return float(dynamic_range) if maximize else -float(dynamic_range)


def headroom_text(value: float, scaled: bool = True) -> str:
    """Headroom as the report prints it: never a negative range. A ceiling behind or level with the baseline
    is 'none'; ahead but within resampling noise (so scoring gave no calibrated score) is said so."""
    if value is None or not math.isfinite(float(value)):
        return "–"
    if value <= 0:
        return "none" + (f" (ceiling {abs(value):.{DIGITS}f} behind)" if value < 0 else "")
    return f"{value:.{DIGITS}f}" + ("" if scaled else " (within noise)")


def headroom_table(results: pd.DataFrame, maximize: dict) -> pd.DataFrame:
    """One row per dataset x task x seed x metric x stratum: baseline b, ceiling r, the signed r - b, the
    headroom in the better direction and whether scoring calibrated on it (`scaled`: the baseline's
    calibrated score exists, which scoring leaves empty when the headroom is not beyond resampling noise)."""
    columns = [*SLICE, "metric_id", "stratum", "n_conditions", "baseline", "ceiling", "dynamic_range", "headroom",
               "scaled"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    keys = [*SLICE, "metric_id", "stratum"]
    base = results[results["method_id"] == BASELINE_METHOD]
    rows = base.drop_duplicates(keys) if not base.empty else results.drop_duplicates(keys)
    table = rows[keys + ["n_conditions", "baseline", "ceiling", "dynamic_range"]].copy()
    table["headroom"] = [headroom(d, maximize.get(m)) for d, m in zip(table["dynamic_range"], table["metric_id"])]
    scored = results.groupby(keys)["score"].apply(lambda s: bool(s.notna().any()))
    table["scaled"] = [bool(scored.get(tuple(k), False)) for k in table[keys].itertuples(index=False)]
    return table[columns].reset_index(drop=True)


def headroom_overview(results: pd.DataFrame, maximize: dict) -> pd.DataFrame:
    """Headroom of every metric (all strata) per dataset x task, averaged over partitions: metrics as rows,
    (dataset_id, task_id) as columns. `scaled` in the same layout says whether every partition was scaled."""
    table = headroom_table(results, maximize)
    table = table[table["stratum"] == ALL_STRATA]
    if table.empty:
        return pd.DataFrame()
    return table.pivot_table(index="metric_id", columns=["dataset_id", "task_id"], values=["headroom", "scaled"],
                             aggfunc={"headroom": "mean", "scaled": "all"}, sort=False)


def slice_table(rows: pd.DataFrame, metrics: list[str], maximize: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The numbers behind one dataset x task x seed: test conditions per stratum, then one row per metric with
    its headroom text (strata as columns, `all` first); and beside it the same layout holding 'b = ..., r = ...'
    for each headroom cell."""
    strata = [ALL_STRATA] + sorted(set(rows["stratum"]) - {ALL_STRATA})
    table = headroom_table(rows, maximize)
    index = ["test conditions"] + [f"headroom of {m}" for m in metrics]
    text = pd.DataFrame("–", index=index, columns=strata, dtype=object)
    detail = pd.DataFrame("", index=index, columns=strata, dtype=object)
    for stratum in strata:
        mine = table[table["stratum"] == stratum]
        if not mine.empty:
            text.at["test conditions", stratum] = str(int(mine["n_conditions"].max()))
        for metric in metrics:
            hit = mine[mine["metric_id"] == metric]
            if hit.empty:
                continue
            h = hit.iloc[0]
            text.at[f"headroom of {metric}", stratum] = headroom_text(h["headroom"], bool(h["scaled"]))
            detail.at[f"headroom of {metric}", stratum] = f"b = {_fixed(h['baseline'])}, r = {_fixed(h['ceiling'])}"
    return text, detail


def _fixed(value) -> str:
    return f"{float(value):.{DIGITS}f}" if value is not None and math.isfinite(float(value)) else "–"


# ----------------------------------------------------------------------------------------------- scores

def leaderboard_table(summary: pd.DataFrame, results: pd.DataFrame, metrics: list[str],
                      cost: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard in summary order: headline (`calibrated`) with its interval, W/T/L, scores, the spread
    of the headline over partitions, each metric's raw mean (all strata) and the median wall time per step."""
    if summary.empty:
        return pd.DataFrame()
    overall = results[results["stratum"] == ALL_STRATA] if not results.empty else results
    raw = overall.pivot_table(index="method_id", columns="metric_id", values="value", aggfunc="mean") \
        if not overall.empty else pd.DataFrame()
    board = summary.copy()
    if "partition_spread" not in board:
        board["partition_spread"] = np.nan
    for metric in metrics:
        board[metric] = [raw.at[m, metric] if metric in raw.columns and m in raw.index else np.nan
                         for m in board["method_id"]]
    board["median_wall"] = [cost["median_wall"].get(m, np.nan) if not cost.empty else np.nan
                            for m in board["method_id"]]
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)


def headline_slices(headline: pd.DataFrame, order: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """headline.parquet laid out for the page: the dataset x task columns with their n (test conditions, all
    folds pooled) and number of partitions, and the rows of methods in leaderboard order."""
    if headline.empty:
        return pd.DataFrame(), pd.DataFrame()
    columns = headline.groupby(["dataset_id", "task_id"], as_index=False).agg(
        n_conditions=("n_conditions", "max"), n_partitions=("n_partitions", "max"))
    columns = columns.sort_values(["dataset_id", "task_id"]).reset_index(drop=True)
    rank = {m: i for i, m in enumerate(order)}
    rows = headline.assign(_rank=headline["method_id"].map(rank).fillna(len(rank)))
    rows = rows.sort_values(["_rank", "method_id", "dataset_id", "task_id"]).drop(columns="_rank")
    return columns, rows.reset_index(drop=True)


def heatmap_table(results: pd.DataFrame, by_stratum: bool = False) -> pd.DataFrame:
    """Mean and count of the clamped calibrated scores of the headline panel per method and dataset x task
    (all strata), or per method and task x stratum (over datasets too)."""
    if results.empty:
        return pd.DataFrame()
    rows = results[results["stratum"] != ALL_STRATA] if by_stratum else results[results["stratum"] == ALL_STRATA]
    rows = rows[rows["metric_id"].isin(HEADLINE_PANEL)].copy()
    if rows.empty or rows["score"].notna().sum() == 0:
        return pd.DataFrame()
    rows["score"] = rows["score"].clip(-HEADLINE_CLAMP, HEADLINE_CLAMP)
    keys = ["task_id", "stratum"] if by_stratum else ["dataset_id", "task_id"]
    return rows.groupby(["method_id", *keys])["score"].agg(["mean", "count"])


# ----------------------------------------------------------------------------------------------- cost

def _wall_table(steps: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return steps.groupby(keys).agg(steps=("step", "count"), median_wall=("wall_seconds", "median"),
                                   total_wall=("wall_seconds", "sum"), peak_rss=("peak_rss_mib", "max"))


def cost_table(trace: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per method, of its finished prediction steps: count, median and total wall seconds, largest peak RSS
    (MiB) and how many were cached; methods in leaderboard order."""
    if trace.empty or "stage" not in trace:
        return pd.DataFrame()
    done = trace[(trace["stage"] == PREDICT) & (trace["status"] == OK)]
    if done.empty:
        return pd.DataFrame()
    done = done.assign(cached=done["cached"] if "cached" in done else False)
    cost = _wall_table(done, ["component"]).join(done.groupby("component")["cached"].sum())
    cost["cached"] = cost["cached"].astype(int)
    ordered = [m for m in order if m in cost.index] + sorted(set(cost.index) - set(order))
    return cost.loc[ordered]


def cost_by_dataset_table(trace: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per method and dataset, of its finished prediction steps (each trains and predicts one fold of one
    task): count, median and total wall seconds and largest peak RSS (MiB); a model's cost grows with the
    dataset, which the pooled table hides. Rows (method, dataset), methods in leaderboard order."""
    if trace.empty or "stage" not in trace:
        return pd.DataFrame()
    done = trace[(trace["stage"] == PREDICT) & (trace["status"] == OK)]
    if done.empty:
        return pd.DataFrame()
    done = done.assign(dataset=done["step"].map(dataset_of_step))
    cost = _wall_table(done, ["component", "dataset"])
    rank = {m: i for i, m in enumerate(order)}
    keys = sorted(cost.index, key=lambda key: (rank.get(key[0], len(rank)), key[0], key[1]))
    return cost.loc[keys]


def other_cost_table(trace: pd.DataFrame) -> pd.DataFrame:
    """The same per stage and component for the finished dataset, split and score steps."""
    if trace.empty or "stage" not in trace:
        return pd.DataFrame()
    other = trace[(trace["stage"] != PREDICT) & (trace["status"] == OK)]
    if other.empty:
        return pd.DataFrame()
    stage_order = {s: i for i, s in enumerate(["dataset", "split", "score"])}
    grouped = _wall_table(other, ["stage", "component"]).reset_index()
    grouped["_order"] = grouped["stage"].map(lambda s: stage_order.get(s, 9))
    return grouped.sort_values(["_order", "stage", "component"]).drop(columns="_order").set_index(
        ["stage", "component"])


# ----------------------------------------------------------------------------------------------- failures

def root_causes(trace: pd.DataFrame) -> dict[str, str]:
    """For every step that did not run because of another, the first step of that chain that did not
    finish for its own reason."""
    causes = blocked_by(trace)
    steps = set(trace["step"]) if "step" in trace else set()
    roots = {}
    for step in trace["step"] if "step" in trace else []:
        cause, seen = step, set()
        while cause in causes and cause not in seen and causes[cause] in steps:
            seen.add(cause)
            cause = causes[cause]
        if cause != step:
            roots[step] = cause
    return roots


def stage_counts(steps: list[str]) -> str:
    stages = pd.Series([s.split("/", 1)[0] for s in steps]).value_counts()
    return ", ".join(f"{n} {stage}" for stage, n in stages.items())


def failure_tables(trace: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """What did not finish, in three tables:
    - `failed`: every failed step (step, stage, component, exit_code, reason);
    - `not_applicable`: steps not applicable for their own reason, grouped by reason, with the steps not
      run after them (`downstream`);
    - `skipped`: steps that did not run because of another, grouped by the first cause of their chain
      (`cause`, `cause_status`), then skipped steps with no recorded cause, grouped by reason (`cause` empty).
    """
    empty = {FAILED: pd.DataFrame(), NOT_APPLICABLE: pd.DataFrame(), SKIPPED: pd.DataFrame()}
    if trace.empty or "status" not in trace:
        return empty
    bad = trace[trace["status"].isin([FAILED, NOT_APPLICABLE, SKIPPED])]
    if bad.empty:
        return empty
    failed = bad[bad["status"] == FAILED]
    failed = failed.reindex(columns=["step", "stage", "component", "exit_code", "reason"]).reset_index(drop=True)
    roots = root_causes(trace)
    status_of = dict(zip(trace["step"], trace["status"]))
    downstream: dict[str, list[str]] = {}
    for step, root in roots.items():
        if status_of.get(step) in (SKIPPED, NOT_APPLICABLE):
            downstream.setdefault(root, []).append(step)
    own = bad[(bad["status"] == NOT_APPLICABLE) & ~bad["step"].isin(list(roots))]
    not_applicable = pd.DataFrame(
        [{"reason": str(reason), "steps": list(group["step"]),
          "downstream": [d for s in group["step"] for d in downstream.get(s, [])]}
         for reason, group in own.groupby("reason", sort=True)], columns=["reason", "steps", "downstream"])
    skipped = [{"cause": root, "cause_status": status_of.get(root, ""), "reason": "", "steps": steps}
               for root, steps in sorted(downstream.items()) if status_of.get(root) != NOT_APPLICABLE]
    unexplained = bad[(bad["status"] == SKIPPED) & ~bad["step"].isin(list(roots))]
    skipped += [{"cause": "", "cause_status": "", "reason": str(reason), "steps": list(group["step"])}
                for reason, group in unexplained.groupby("reason", sort=True)]
    return {FAILED: failed, NOT_APPLICABLE: not_applicable,
            SKIPPED: pd.DataFrame(skipped, columns=["cause", "cause_status", "reason", "steps"])}


# ----------------------------------------------------------------------------------------------- datasets

def _spread(report: dict, prefix: str) -> str | None:
    keys = [f"{prefix}_{k}" for k in ("min", "median", "max")]
    if not all(k in report for k in keys):
        return None
    low, mid, high = (report[k] for k in keys)
    return f"min {_number(low)}, median {_number(mid)}, max {_number(high)}"


def _number(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.3g}"


def _share(value) -> str:
    try:
        return f"{float(value):.3f}" if math.isfinite(float(value)) else "–"
    except (TypeError, ValueError):
        return "–"


def dataset_facts(report: dict | None, replicate_kind: str) -> pd.DataFrame:
    """The facts of a dataset card from its `uns['dataset_report']` (src/utils/dataset_report.py): one row per
    fact with its text, a note that explains it, and whether it is a headline number (`strong`). Keys a loader
    did not write are left out, so older dataset files still get a card."""
    rows = []

    def add(fact, value, note="", strong=False):
        if value is not None:
            rows.append({"fact": fact, "value": value, "note": note, "strong": strong})
    report = report if isinstance(report, dict) else {}
    if report:
        types = report.get("perturbations_per_type") or {}
        add("modality", ", ".join(f"{k} ({v})" for k, v in types.items()) or "–")
        add("profiles", _number(report.get("n_profiles")))
        add("conditions", _number(report.get("n_conditions")))
        add("perturbations", f"{_number(report.get('n_perturbations'))} ({_number(report.get('n_combinations'))} "
                             "combinations)")
        add("cell types", ", ".join(f"{k} ({v})" for k, v in (report.get("cell_types") or {}).items())
            or _number(report.get("n_cell_types")))
        add("conditions (covariates)", ", ".join(f"{k} ({v})" for k, v in (report.get("conditions") or {}).items())
            or "–")
        add("genes", _number(report.get("n_genes")))
        add("gene selection", report.get("gene_selection"))
        add("cells", _number(report.get("n_cells")))
        add("cells per profile", f"median {_number(report.get('cells_per_profile_median'))}, "
                                 f"min {_number(report.get('cells_per_profile_min'))}")
        add("cells per condition", _spread(report, "cells_per_condition"),
            "a condition: perturbation x cell type x covariate, replicates pooled")
        if "n_conditions_too_few_cells" in report:
            minimum = report.get("min_cells_per_half") or 0
            add("left out: too few cells", f"{_number(report['n_conditions_too_few_cells'])} conditions"
                + (f" (fewer than {_number(minimum)} cells per half)" if minimum else ""),
                "" if minimum else "the producer of this dataset did not record its minimum")
    add("replicate halves", replicate_kind, "biological = whole replicates to each half; random_half = a seeded "
                                            "random half of the cells")
    if report:
        if "n_replicates" in report:
            per = _spread(report, "replicates_per_condition")
            add("replicate labels", f"{_number(report['n_replicates'])}"
                + (f" (column {report['replicate_column']})" if report.get("replicate_column") not in (None, "none")
                   else "") + (f"; per condition {per}" if per else ""))
        if "n_targets_missing_from_panel" in report:
            missing = list(report.get("targets_missing_from_panel") or [])
            shown = ", ".join(map(str, missing[:10])) + (f", … {len(missing) - 10} more" if len(missing) > 10 else "")
            add("targets missing from the genes", f"{_number(report['n_targets_missing_from_panel'])} of "
                f"{_number(report.get('n_targets'))}" + (f": {shown}" if missing else ""),
                "their own knockdown cannot be scored" if missing else "")
        if "share_reproducible_effect" in report:
            threshold = report.get("reproducible_threshold")
            add("reproducible effect", f"{_share(report['share_reproducible_effect'])}"
                + (f" ({_number(report.get('n_reproducible_effect'))} of "
                   f"{_number(report.get('n_perturbation_conditions_assessed'))} perturbation conditions)"
                   if "n_reproducible_effect" in report else ""),
                f"share whose two replicate halves agree (split-half Pearson of deltas > {_number(threshold)})"
                if threshold is not None else "share whose two replicate halves agree", strong=True)
        add("replicate reproducibility", _share(report.get("replicate_reproducibility")),
            "mean Pearson of replicate deltas; near 0 = little signal beyond noise", strong=True)
        add("median pairwise delta correlation", _share(report.get("median_pairwise_delta_correlation")),
            "high = perturbations look alike, the training mean is hard to beat", strong=True)
        if "control_noise_share" in report:
            independent = report.get("median_pairwise_delta_correlation_independent_controls")
            add("control noise share", _share(report["control_noise_share"]),
                "median share of an observed delta that is the noise of the control it is taken against"
                + (f"; against disjoint control parts the pairwise delta correlation is {_share(independent)} "
                   "(the rest of the one above was shared control noise)" if independent is not None else ""),
                strong=True)
    return pd.DataFrame(rows, columns=["fact", "value", "note", "strong"])


def tasks_scored(results: pd.DataFrame, dataset_id: str) -> pd.DataFrame:
    """Per task of a dataset: test conditions in all strata and per stratum (from the baseline's rows)."""
    if results.empty:
        return pd.DataFrame(columns=["task_id", "n_conditions", "strata"])
    mine = results[(results["dataset_id"] == dataset_id) & (results["method_id"] == BASELINE_METHOD)]
    if mine.empty:
        mine = results[results["dataset_id"] == dataset_id]
    rows = []
    for task_id, group in mine.groupby("task_id"):
        strata = group.groupby("stratum")["n_conditions"].max()
        rows.append({"task_id": task_id, "n_conditions": int(strata.get(ALL_STRATA, 0)),
                     "strata": {s: int(n) for s, n in strata.items() if s != ALL_STRATA}})
    return pd.DataFrame(rows, columns=["task_id", "n_conditions", "strata"])
