"""From score files to the results tables: raw values per stratum and calibrated scores.

Calibrated score (VCC 2026): `(u - b) / (r - b)` with `b` the `train_mean` control and `r` the
`replicate_ceiling` control on the same dataset x task x seed x stratum x metric. 0 means no better
than the training mean, 1 as good as a replicate experiment; `r - b` (the dynamic range) is kept so a
metric with no headroom is visible rather than hidden in a ratio.
"""
from __future__ import annotations

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


def results_table(per_condition: pd.DataFrame) -> pd.DataFrame:
    """Mean over conditions per stratum and over all conditions, with calibrated scores."""
    group = ["dataset_id", "task_id", "seed", "method_id", "method_type", "metric_component", "metric_id"]
    if per_condition.empty:
        return pd.DataFrame(columns=group + ["stratum", "n_conditions", "value", "baseline", "ceiling",
                                             "dynamic_range", "score"])
    overall = per_condition.assign(stratum=ALL_STRATA)
    both = pd.concat([overall, per_condition], ignore_index=True)
    table = (both.groupby(group + ["stratum"], dropna=False, observed=True)["value"]
             .agg(value="mean", n_conditions="size").reset_index())
    return calibrate(table)


def calibrate(table: pd.DataFrame) -> pd.DataFrame:
    reference = table.set_index(KEYS + ["method_id"])["value"]

    def lookup(method: str) -> pd.Series:
        index = pd.MultiIndex.from_frame(table[KEYS].assign(method_id=method))
        return pd.Series(reference.reindex(index).to_numpy(), index=table.index)

    table = table.copy()
    table["baseline"] = lookup(BASELINE_METHOD)
    table["ceiling"] = lookup(CEILING_METHOD)
    table["dynamic_range"] = table["ceiling"] - table["baseline"]
    usable = table["dynamic_range"].abs() > MIN_DYNAMIC_RANGE
    table["score"] = np.where(usable, (table["value"] - table["baseline"]) / table["dynamic_range"].where(usable), np.nan)
    return table


def leaderboard(results: pd.DataFrame, metric_ids: list[str] | None = None) -> pd.DataFrame:
    """Per method: mean calibrated score over datasets, tasks and metrics (all strata), and raw means."""
    overall = results[results["stratum"] == ALL_STRATA]
    if metric_ids:
        overall = overall[overall["metric_id"].isin(metric_ids)]
    if overall.empty:
        return pd.DataFrame()
    raw = overall.pivot_table(index=["method_id", "method_type"], columns="metric_id", values="value", aggfunc="mean")
    board = raw.copy()
    board.insert(0, "calibrated", overall.groupby(["method_id", "method_type"])["score"].mean())
    board = board.reset_index().sort_values(["calibrated", "method_id"], ascending=[False, True], na_position="last")
    return board.reset_index(drop=True)


def format_leaderboard(board: pd.DataFrame) -> str:
    if board.empty:
        return "(no scores)"
    shown = board.copy()
    shown["method_type"] = shown["method_type"].map({"control_method": "control", "method": "method"}).fillna(shown["method_type"])
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format", "{:.3f}".format):
        return shown.to_string(index=False, na_rep="-")


def write_results(per_condition: pd.DataFrame, results: pd.DataFrame, output_dir: Path):
    results.to_parquet(output_dir / "results.parquet", index=False)
    per_condition.to_parquet(output_dir / "results_per_condition.parquet", index=False)
