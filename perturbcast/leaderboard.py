"""What a reader sees first, in the terminal and in leaderboard.txt: the verdict per dataset x task (which methods
beat the training mean beyond their interval, by how much, on how many conditions; or why a slice is not ranked)
and the leaderboard with one headline column per task, each with its fallback share, and the overall last.

Reads the tables scoring writes (`summary`, the per-slice headline `summary.attrs['by_slice']`); computes no
statistics. The verdict columns of the per-slice table (`ranked`, `not_ranked_reason`, `n_reproducible`,
`n_evaluated`, `fallback_share`, `status`) are optional: a table without them reads as every slice ranked, with
no fallback known.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd

from . import layout

BASELINE_METHOD = "train_mean"
WIDTH = layout.LINE_WIDTH
NOT_RANKED = "not ranked"
NO_WINNER = "no method beats the training mean"
# Where no slice is ranked nothing was compared: "no method beats" would read as a finding about the methods.
NOTHING_RANKED = "nothing is ranked: no dataset x task here has the signal to tell methods apart"
# Defaults of the verdict columns where a per-slice table lacks them (tables written before they existed).
VERDICT_DEFAULTS = {"ranked": True, "not_ranked_reason": "", "n_reproducible": np.nan, "n_evaluated": np.nan,
                    "fallback_share": np.nan, "status": ""}
# Short names of the tasks in the terminal's columns (the files keep the ids).
TASK_SHORT = {"unseen_perturbation": "unseen pert", "unseen_combination": "unseen combo",
              "cell_type_transfer": "cell transfer"}
CELL = 13  # width of one task column: "-0.03 fb100%"
# Task columns in this order (the task biologists ask about first), any other task after them by name.
TASK_ORDER = ("unseen_perturbation", "unseen_combination", "cell_type_transfer")


def task_order(tasks) -> list[str]:
    rank = {task: i for i, task in enumerate(TASK_ORDER)}
    return sorted(dict.fromkeys(tasks), key=lambda task: (rank.get(task, len(rank)), task))


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def with_verdict_columns(by_slice: pd.DataFrame) -> pd.DataFrame:
    """The per-slice headline table with every verdict column present (defaults where absent or missing)."""
    table = by_slice.copy() if by_slice is not None else pd.DataFrame()
    for column, default in VERDICT_DEFAULTS.items():
        if column not in table.columns:
            table[column] = default
        elif column in ("ranked",):
            table[column] = table[column].fillna(True).astype(bool)
        elif column in ("not_ranked_reason", "status"):
            table[column] = table[column].fillna("").astype(str)
    return table


def is_method(method_type: str) -> bool:
    return str(method_type) not in ("control_method", "control")


def evidence(row) -> str:
    """The loader's evidence of a slice: 'k of n perturbations with a reproducible effect' (or '')."""
    k, n = row.get("n_reproducible"), row.get("n_evaluated")
    if not (_finite(k) and _finite(n)):
        return ""
    return f"{int(k)} of {int(n)} perturbations with a reproducible effect"


def not_ranked_text(row) -> str:
    """'not ranked: <reason> (<evidence>)' of an unranked slice."""
    reason = str(row.get("not_ranked_reason") or "no reason recorded")
    proof = evidence(row)
    counted = proof.split(" perturbations")[0]  # "k of n": a reason may state the evidence in its own words
    return f"{NOT_RANKED}: {reason}" + (f" ({proof})" if proof and counted not in reason else "")


def verdicts(by_slice: pd.DataFrame) -> list[dict]:
    """Per dataset x task: n, whether it is ranked (and why not), and the methods (not controls) whose headline
    interval lies above 0, i.e. that beat train_mean beyond resampling noise, best first."""
    table = with_verdict_columns(by_slice)
    if table.empty:
        return []
    out = []
    for (dataset, task), rows in table.groupby(["dataset_id", "task_id"], sort=True):
        first = rows.iloc[0].to_dict()
        ranked = bool(rows["ranked"].all())
        methods = rows[[is_method(t) for t in rows["method_type"]]]
        winners = methods[methods["headline_low"].astype(float) > 0] if ranked else methods.iloc[0:0]
        winners = winners.sort_values(["headline", "method_id"], ascending=[False, True])
        n = rows["n_conditions"].max() if "n_conditions" in rows else np.nan
        out.append({"dataset_id": dataset, "task_id": task, "ranked": ranked,
                    "n_conditions": int(n) if _finite(n) else None,
                    "not_ranked": "" if ranked else not_ranked_text(first), "evidence": evidence(first),
                    "winners": [(w.method_id, float(w.headline), float(w.headline_low), float(w.headline_high))
                                for w in winners.itertuples(index=False)]})
    order = {task: i for i, task in enumerate(task_order(v["task_id"] for v in out))}
    return sorted(out, key=lambda v: (v["dataset_id"], order[v["task_id"]]))


def verdict_lines(by_slice: pd.DataFrame) -> list[str]:
    """The verdict as terminal lines (each at most WIDTH columns)."""
    lines = []
    for v in verdicts(by_slice):
        where = f"{v['dataset_id']} / {v['task_id']}" + (f" (n = {v['n_conditions']})" if v["n_conditions"] else "")
        if not v["ranked"]:
            text = f"{where}: {v['not_ranked']}"
        elif not v["winners"]:
            text = f"{where}: {NO_WINNER}"
        else:
            beat = "; ".join(f"{m} by {h:.2f} [{lo:.2f}, {hi:.2f}]" for m, h, lo, hi in v["winners"])
            text = f"{where}: beat train_mean: {beat}"
        lines += textwrap.wrap(text, WIDTH, subsequent_indent="    ", break_on_hyphens=False)
    return lines


def best_method(summary: pd.DataFrame) -> pd.Series | None:
    """The method (not a control) with the highest overall headline among those whose interval is above 0, or
    None: no method is named best where none beats the training mean."""
    if summary is None or summary.empty:
        return None
    methods = summary[[is_method(t) for t in summary["method_type"]]]
    above = methods[methods["calibrated_low"].astype(float) > 0]
    if above.empty:
        return None
    return above.sort_values(["calibrated", "method_id"], ascending=[False, True]).iloc[0]


def task_columns(by_slice: pd.DataFrame) -> pd.DataFrame:
    """Per method x task: the headline averaged over the task's ranked datasets, the fallback share averaged over
    its datasets, whether any dataset of the task is ranked, and the method's status there."""
    table = with_verdict_columns(by_slice)
    columns = ["method_id", "task_id", "headline", "fallback_share", "ranked", "status"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (method, task), group in table.groupby(["method_id", "task_id"], sort=False):
        ranked = group[group["ranked"]]
        values = ranked["headline"].astype(float)
        shares = group["fallback_share"].astype(float)
        statuses = sorted({s for s in group["status"] if s})
        rows.append({"method_id": method, "task_id": task,
                     "headline": float(values.mean()) if values.notna().any() else np.nan,
                     "fallback_share": float(shares.mean()) if shares.notna().any() else np.nan,
                     "ranked": not ranked.empty, "status": "; ".join(statuses)})
    return pd.DataFrame(rows, columns=columns)


def leaderboard(summary: pd.DataFrame, by_slice: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per method in the summary's order: a headline column per task (`task:<id>`, with
    `fallback:<id>`), the overall headline with its interval, W/T/L against train_mean and any status."""
    if summary is None or summary.empty:
        return pd.DataFrame()
    by_slice = by_slice if by_slice is not None else summary.attrs.get("by_slice", pd.DataFrame())
    per_task = task_columns(by_slice)
    tasks = task_order(per_task["task_id"])
    board = summary[["method_id", "method_type", "calibrated", "calibrated_low", "calibrated_high", "wins", "ties",
                     "losses"]].copy()
    for task in tasks:
        mine = per_task[per_task["task_id"] == task].set_index("method_id")
        board[f"task:{task}"] = board["method_id"].map(mine["headline"])
        board[f"fallback:{task}"] = board["method_id"].map(mine["fallback_share"])
        board[f"status:{task}"] = board["method_id"].map(mine["status"]).fillna("")
    statuses = per_task[per_task["status"] != ""].groupby("method_id")["status"].agg(
        lambda s: "; ".join(sorted(set("; ".join(s).split("; ")))))
    board["status"] = board["method_id"].map(statuses).fillna("")
    board["interval"] = [f"[{lo:.2f}, {hi:.2f}]" if _finite(lo) else "-"
                         for lo, hi in zip(board["calibrated_low"], board["calibrated_high"])]
    board["vs train_mean"] = [f"{w}/{t}/{l}" if m != BASELINE_METHOD else "-"
                              for m, w, t, l in zip(board["method_id"], board["wins"], board["ties"], board["losses"])]
    board.attrs["tasks"] = tasks
    board.attrs["ranked_tasks"] = {t: bool(per_task[per_task["task_id"] == t]["ranked"].any()) for t in tasks}
    return board.reset_index(drop=True)


def _task_cell(headline, share, status: str, ranked: bool) -> str:
    if not ranked:
        return "n.r."
    if status and not _finite(headline):
        return "fb100%" if "falls back" in status else "n/a"
    text = f"{headline:.2f}" if _finite(headline) else "-"
    if _finite(share) and share > 0:
        text += f" fb{round(100 * share):d}%"
    return text


def format_leaderboard(board: pd.DataFrame) -> str:
    """The terminal leaderboard, at most WIDTH columns: per task its headline (fb N%: share of the task's test
    conditions where the method returned the training mean; n.r.: not ranked), the overall headline with its
    interval and W/T/L against train_mean. Tasks beyond what fits are left to leaderboard.txt's note."""
    if board.empty:
        return "(no scores)"
    tasks = board.attrs.get("tasks", [])
    # a method run with a prior is `<method>+<prior>`: the column grows to show it whole (up to 40 characters)
    name = min(40, max([22] + [len(str(m)) for m in board["method_id"]]))
    fixed = name + 1 + 7 + 8 + 17 + 10
    fits = max(0, (WIDTH - fixed) // (CELL + 1))
    shown = tasks[:fits]
    head = (f"{'method':<{name}} {'kind':<7}" + "".join(f" {TASK_SHORT.get(t, t)[:CELL]:>{CELL}}" for t in shown)
            + f" {'overall':>7} {'95% interval':>16} {'W/T/L':>9}")
    lines = [head]
    ranked_tasks = board.attrs.get("ranked_tasks", {})
    for row in board.to_dict("records"):
        kind = "method" if is_method(row["method_type"]) else "control"
        cells = "".join(f" {_task_cell(row[f'task:{t}'], row[f'fallback:{t}'], row[f'status:{t}'], ranked_tasks.get(t, True)):>{CELL}}"
                        for t in shown)
        value = f"{row['calibrated']:.3f}" if _finite(row["calibrated"]) else "-"
        lines.append(f"{str(row['method_id'])[:name]:<{name}} {kind:<7}{cells} {value:>7} {row['interval']:>16} "
                     f"{row['vs train_mean']:>9}")
    if len(shown) < len(tasks):
        lines.append(f"(tasks not shown for width: {', '.join(tasks[len(shown):])}; see report.html)")
    return "\n".join(line.rstrip() for line in lines)


LEGEND = ("Verdict: per dataset x task, the methods whose headline interval lies above 0 (they beat train_mean beyond "
          "resampling noise), by how much, on n test conditions. Headline: mean calibrated score (0 = train_mean, "
          "1 = replicate_ceiling; each clamped to [-1, 1]) over the panel {panel}, per task (averaged over its ranked "
          "datasets) and overall (over every ranked dataset x task), with its paired bootstrap 95% interval. "
          "fb N%: share of test conditions where the method returned the training mean. n.r.: not ranked (see the "
          "verdict). W/T/L: wins/ties/losses against train_mean on the panel metrics (Holm-corrected at 0.05). "
          "Every metric: results.parquet and report.html.")


def text(summary: pd.DataFrame, panel) -> str:
    """Verdict, leaderboard and legend: what `benchmark` and `aggregate` print (every line <= WIDTH)."""
    by_slice = summary.attrs.get("by_slice", pd.DataFrame()) if summary is not None else pd.DataFrame()
    verdict = verdict_lines(by_slice)
    best = best_method(summary)
    top = [] if best is None else [f"Best method: {best['method_id']} {best['calibrated']:.3f} "
                                   f"[{best['calibrated_low']:.2f}, {best['calibrated_high']:.2f}] overall"]
    if best is None and summary is not None and not summary.empty:
        if verdicts(by_slice) and not any(v["ranked"] for v in verdicts(by_slice)):
            top = [f"Overall: {NOTHING_RANKED} (reasons above)."]
        else:
            top = [f"Overall: {NO_WINNER} (no method's headline interval lies above 0)."]
    legend = textwrap.wrap(LEGEND.format(panel=", ".join(panel)), WIDTH, break_on_hyphens=False)
    board = format_leaderboard(leaderboard(summary, by_slice))
    return "\n".join(["", "Verdict", *verdict, *top, "", "Leaderboard", board, "", *legend])
