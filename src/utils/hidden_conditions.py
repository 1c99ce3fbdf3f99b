"""Own data, guided: an obs column the user did not name that splits the control cells into groups whose expression
differs more than replicate halves of one group do (a stimulation, a time point, a batch). Pooling such groups
mixes contexts: every perturbation is compared with a control profile of the wrong context, and the scores say
nothing. The loader names the column and the `--dataset-arg` that would use it.

    from hidden_conditions import hidden_condition_columns
    for hint in hidden_condition_columns(path, obs, controls, used=[...], sums=stream_sums, ...): log(hint["line"])

The test: the control cells of each candidate group are split into two seeded random halves; `between` is the mean
squared distance of log-normalised half profiles of different groups (first halves with first halves, second with
second), `within` the mean squared distance of the two halves of one group. Both compare profiles of about the
same number of cells, so without a difference between groups the ratio is about 1; a column is named when it is
RATIO times more. Measured on Poisson counts with no group effect (a random 2-level column, 100 draws each): median
1.00 and largest 1.07 at 60 cells x 2,000 genes, 1.14 at 80 cells x 500 genes, 1.05 at 200 cells x 2,000 genes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# A column is a candidate when the control cells take 2 to MAX_LEVELS of its values, each on at least
# MIN_CELLS cells (two halves of MIN_CELLS // 2).
MAX_LEVELS = 8
MIN_CELLS = 20
RATIO = 2.0
# At most this many candidate columns are measured (each costs one pass over the matrix).
MAX_CANDIDATES = 4
COUNTS_PER = 1e4


def candidate_columns(obs: pd.DataFrame, controls: np.ndarray, used) -> list[tuple[str, pd.Series]]:
    """(column, its values on the control cells) of every obs column not in `used` that splits the control cells
    into 2..MAX_LEVELS groups of at least MIN_CELLS cells, fewest levels first."""
    found = []
    for column in obs.columns:
        if column in used:
            continue
        values = obs[column][controls]
        if values.isna().any():
            continue
        counts = values.astype(str).value_counts()
        if 2 <= len(counts) <= MAX_LEVELS and counts.min() >= MIN_CELLS:
            found.append((len(counts), str(column), values.astype(str)))
    found.sort(key=lambda item: (item[0], item[1]))
    return [(column, values) for _, column, values in found[:MAX_CANDIDATES]]


def _profiles(sums: np.ndarray, counts: bool, n_cells: np.ndarray) -> np.ndarray:
    if counts:
        totals = sums.sum(axis=1)
        return np.log1p(sums * (COUNTS_PER / np.where(totals > 0, totals, 1.0))[:, None])
    return sums / np.maximum(n_cells, 1)[:, None]


def split_ratio(halves: np.ndarray) -> float:
    """between / within of half profiles laid out as (group, half) x genes, rows 2g and 2g + 1 one group's halves."""
    groups = halves.reshape(-1, 2, halves.shape[1])
    within = float(np.mean(np.sum((groups[:, 0] - groups[:, 1]) ** 2, axis=1)))
    between = []
    for a in range(len(groups)):
        for b in range(a + 1, len(groups)):
            for half in (0, 1):
                between.append(np.sum((groups[a, half] - groups[b, half]) ** 2))
    return float(np.mean(between)) / within if within > 0 else float("inf")


def hidden_condition_columns(obs: pd.DataFrame, controls: np.ndarray, used, sums, *, counts: bool,
                             seed: int = 0, argument: str = "condition_column") -> list[dict]:
    """Every candidate column whose control groups differ RATIO times more than halves of one group, as
    {column, levels, ratio, line}. `sums(codes, n_profiles)`: per-profile sums of the expression matrix over the
    cells with each code (-1: left out), as pseudobulk.stream_sums gives them."""
    controls = np.asarray(controls, dtype=bool)
    rng = np.random.default_rng(seed)
    found = []
    for column, values in candidate_columns(obs, controls, used):
        levels = sorted(values.unique())
        group = pd.Categorical(values, categories=levels).codes.astype(np.int64)
        half = np.zeros(len(group), dtype=np.int64)
        for g in range(len(levels)):
            members = np.flatnonzero(group == g)
            half[rng.permutation(members)[: len(members) // 2]] = 1
        codes = np.full(len(obs), -1, dtype=np.int64)
        codes[np.flatnonzero(controls)] = 2 * group + half
        n_cells = np.bincount(codes[codes >= 0], minlength=2 * len(levels)).astype(float)
        ratio = split_ratio(_profiles(np.asarray(sums(codes, 2 * len(levels)), dtype=float), counts, n_cells))
        if ratio >= RATIO:
            sizes = ", ".join(f"{level} {int((values == level).sum())}" for level in levels)
            found.append({"column": column, "levels": levels, "ratio": ratio,
                          "line": f"obs['{column}'] splits the control cells into {len(levels)} groups ({sizes}) "
                                  f"that differ {ratio:.1f}x more than random halves of one group: if it is a "
                                  f"stimulation, time point or batch, rerun with --dataset-arg {argument}={column}"})
    return found
