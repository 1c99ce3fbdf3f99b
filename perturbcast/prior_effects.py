"""What a prior does to a method: the paired difference between `<method>+<prior>` and the method alone.

Both ran on the same test conditions of the same splits, so the difference is taken condition by condition
(averaged over partitions first: a condition tested in every partition counts once) and its interval comes
from resampling those conditions (percentile bootstrap; the same resamples for every metric and variant of a
dataset x task that has the same conditions). Each difference is oriented so that > 0 means the prior helps (the metric's
declared direction). The call is "helps" / "hurts" only where the 95% interval excludes 0, else "no clear
effect"; on a slice the verdicts leave unranked (no scale, or no reproducible effect: perturbcast.headline) the
call is "not ranked", as for every other comparison there, while the difference and its interval are kept.

Also per variant: the share of test conditions where the method returned the training mean, alone and with
the prior (a prior that covers held-out targets lowers it; an effect measured only on fallbacks is no effect).
"""
from __future__ import annotations

import textwrap
import zlib

import numpy as np
import pandas as pd

from .layout import vocabulary
from .panel import HEADLINE_PANEL, finite_interval

COLUMNS = ["dataset_id", "task_id", "method_id", "prior_id", "variant_id", "metric_id", "n_conditions",
           "method_value", "variant_value", "difference", "difference_low", "difference_high", "effect",
           "method_fallback_share", "variant_fallback_share"]
HELPS, HURTS, UNCLEAR, NOT_RANKED = "helps", "hurts", "no clear effect", "not ranked"


def prior_effects(per_condition: pd.DataFrame, maximize: dict, metrics=HEADLINE_PANEL,
                  n_resamples: int = 1000, unranked: set | None = None) -> pd.DataFrame:
    """One row per dataset x task x (method, prior) x metric of `metrics` with a declared direction;
    `unranked`: the (dataset, task) slices the verdicts do not rank (their calls are NOT_RANKED)."""
    if per_condition.empty:
        return pd.DataFrame(columns=COLUMNS)
    split = [vocabulary.method_and_prior(m) for m in per_condition["method_id"]]
    frame = per_condition.assign(base=[m for m, _ in split], prior=[p for _, p in split])
    variants = frame[frame["prior"] != vocabulary.NO_PRIOR]
    rows = []
    for (dataset, task), part in frame.groupby(["dataset_id", "task_id"], sort=True):
        wanted = variants[(variants["dataset_id"] == dataset) & (variants["task_id"] == task)]
        if wanted.empty:
            continue
        # per method id x metric x condition: the mean over partitions (and the fallback flag likewise)
        means = part[part["metric_id"].isin(list(metrics))].groupby(
            ["method_id", "metric_id", "condition"], sort=True, observed=True)["value"].mean()
        fallback = part.drop_duplicates(["seed", "method_id", "condition"]).assign(
            flag=lambda f: f["fallback"].astype(float) if "fallback" in f else np.nan).groupby("method_id")["flag"].mean()
        conditions = np.array(sorted(part["condition"].unique()), dtype=object)
        seed = zlib.crc32(f"{dataset}|{task}|prior_effects".encode())
        for variant, base, prior in wanted[["method_id", "base", "prior"]].drop_duplicates().itertuples(index=False):
            for metric in metrics:
                better = maximize.get(metric)
                if better is None:
                    continue
                try:
                    mine, theirs = means.loc[(variant, metric)], means.loc[(base, metric)]
                except KeyError:
                    continue
                paired = pd.concat([mine.rename("variant"), theirs.rename("method")], axis=1).reindex(conditions)
                difference = (paired["variant"] - paired["method"]).to_numpy(dtype=float) * (1.0 if better else -1.0)
                present = np.isfinite(difference)
                if not present.any():
                    continue
                paired_difference = difference[present]
                draws = np.random.default_rng(seed).integers(0, present.sum(), size=(n_resamples, present.sum()))
                low, high = finite_interval(paired_difference[draws].mean(axis=1))
                effect = (NOT_RANKED if (dataset, task) in (unranked or set())
                          else HELPS if low > 0 else HURTS if high < 0 else UNCLEAR)
                rows.append({"dataset_id": dataset, "task_id": task, "method_id": base, "prior_id": prior,
                             "variant_id": variant, "metric_id": metric, "n_conditions": int(present.sum()),
                             "method_value": float(np.nanmean(paired["method"].to_numpy(dtype=float)[present])),
                             "variant_value": float(np.nanmean(paired["variant"].to_numpy(dtype=float)[present])),
                             "difference": float(paired_difference.mean()), "difference_low": low,
                             "difference_high": high, "effect": effect,
                             "method_fallback_share": float(fallback.get(base, np.nan)),
                             "variant_fallback_share": float(fallback.get(variant, np.nan))})
    return pd.DataFrame(rows, columns=COLUMNS)


def text(effects: pd.DataFrame, width: int = 120) -> str:
    """The terminal block: per dataset x task and variant, each metric's difference with its interval."""
    if effects.empty:
        return ""
    lines = textwrap.wrap("Priors: <method>+<prior> minus <method> alone, paired over the same test conditions (> 0: the "
                          "prior helps; 95% bootstrap interval; fb: share of conditions that fell back to the training "
                          "mean, alone -> with the prior)", width)
    for (dataset, task, variant), part in effects.groupby(["dataset_id", "task_id", "variant_id"], sort=True):
        first = part.iloc[0]
        fb = (f"fb {_share(first['method_fallback_share'])} -> {_share(first['variant_fallback_share'])}")
        unranked = " not ranked," if (part["effect"] == NOT_RANKED).all() else ""
        lines.append(f"  {dataset} / {task} / {variant} (n = {int(part['n_conditions'].max())},{unranked} {fb}):")
        cells = [f"{r.metric_id} {r.difference:+.3f} [{r.difference_low:+.3f}, {r.difference_high:+.3f}]"
                 + ("" if r.effect in (UNCLEAR, NOT_RANKED) else f" {r.effect}") for r in part.itertuples()]
        line = "    "
        for cell in cells:
            if len(line) + len(cell) + 2 > width:
                lines.append(line.rstrip("; "))
                line = "    "
            line += cell + "; "
        lines.append(line.rstrip("; "))
    return "\n".join(lines)


def _share(value) -> str:
    return f"{100 * value:.0f}%" if np.isfinite(value) else "?"

