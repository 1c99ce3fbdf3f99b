"""Cells -> profiles: harmonised cell annotation and the assignment of cells to pseudobulk profiles.

Included as a viash resource by the dataset loaders beside `pseudobulk.py` (which re-exports these names)
and `harmonize.py`; needs numpy and pandas.

Replicates. A profile is (perturbation, cell_type, condition, replicate):
- with a replicate column (`replicate_kind` `biological`): one profile per replicate label of the source
  (`bio_rep`, `gemgroup`, `replicate`, ...), whole replicates, controls likewise per replicate, so that a
  delta can be taken against the control of the same replicate and the task's two replicate halves are
  whole replicates;
- without (`random_half`): the condition's cells split at random (seeded) into halves `r1` and `r2`.
Minimum: every kept profile has at least `min_cells` cells (`--min_cells_per_half`): a random half, or one
replicate label (a replicate half is one or more whole labels, so it has at least as many). A replicate
profile below the minimum is left out; a condition left with fewer than two profiles is left out whole,
with a logged reason, and counted in `profiles.attrs['left_out']`.

Control parts. Every control replicate profile is cut once more, at random (seeded), into two profiles of
half its cells, `control_part` 1 and 2 (0 for perturbation profiles): a task trains methods on part 1 of
every replicate and takes observed deltas against part 2, so the two sides of a comparison never share a
control estimate's sampling noise while both hold every replicate's batch alike. A control replicate
profile of fewer than 2 * min_cells cells stays whole (`control_part` 0; the task then uses the context's
controls for both sides and counts it).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from harmonize import control_set, harmonize_cell_type, harmonize_labels, harmonize_perturbation_type
from vocabulary import CONTROL, targets as split_targets

NONE = "none"
ID_SEPARATOR = "|"
RANDOM_HALF = "random_half"
BIOLOGICAL = "biological"
HALF_LABELS = ("r1", "r2")
EXAMPLES = 5  # dropped conditions named in the log line


class SourceError(Exception):
    """The source file is unusable; str() is one line: `file '<path>': <problem>`."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"file '{path}': {problem}")


# ------------------------------------------------------------------------------------------ cells

def _map_values(series: pd.Series, function) -> pd.Series:
    """`function` of each distinct value (missing -> None), spread to every cell without a per-cell call."""
    codes, uniques = pd.factorize(series)
    mapped = np.array([function(value) for value in uniques] + [None], dtype=object)
    return pd.Series(mapped[codes], index=series.index, dtype=object)  # code -1 (missing) -> the last, None


def harmonize_cells(path, obs: pd.DataFrame, *, perturbation_column: str, perturbation_type_column: str | None = None,
                    perturbation_type: str | None = None, cell_type_column: str | None = None,
                    cell_type: str | None = None, condition_column: str | None = None,
                    control_labels=(), separators=("+",), drop_part=None, replicate_column: str | None = None,
                    keep=None, log=print) -> pd.DataFrame:
    """One row per cell: perturbation (None = left out), perturbation_type, cell_type, condition, and with a
    `replicate_column` also `replicate` (the source's replicate label; cells without one are left out).

    perturbation_type (if given) overrides the column; cell_type is used when `cell_type_column` is None or
    absent; a `condition_column` or `replicate_column` that is given must exist. keep: boolean mask of the
    cells to use (e.g. one study of a file); the others are left out silently. Raises SourceError naming the
    file and problem.
    """
    if keep is not None:
        keep = np.asarray(keep, dtype=bool)
        inner = harmonize_cells(path, obs[keep], perturbation_column=perturbation_column,
                                perturbation_type_column=perturbation_type_column, perturbation_type=perturbation_type,
                                cell_type_column=cell_type_column, cell_type=cell_type,
                                condition_column=condition_column, control_labels=control_labels,
                                separators=separators, drop_part=drop_part, replicate_column=replicate_column,
                                log=log)
        full = pd.DataFrame({column: pd.Series([None] * len(obs), dtype=object) for column in inner.columns})
        for column in inner.columns:
            full.loc[np.flatnonzero(keep), column] = inner[column].to_numpy()
        full.index = obs.index
        return full
    columns = list(obs.columns)
    if perturbation_column not in obs.columns:
        raise SourceError(path, f"obs has no perturbation column '{perturbation_column}' (columns: {columns[:12]}); "
                                "name it with --perturbation_column")
    options = {"separators": tuple(separators), "controls": control_set(control_labels), "drop_part": drop_part}
    raw = obs[perturbation_column]
    labels = harmonize_labels([str(v) for v in pd.unique(raw.dropna())], **options)
    perturbation = _map_values(raw, lambda v: labels[str(v)])
    unassigned = perturbation.isna()
    if unassigned.all():
        raise SourceError(path, f"obs['{perturbation_column}'] assigns no cell a perturbation "
                                f"(values: {sorted(map(str, labels))[:8]})")
    if not (perturbation == CONTROL).any():
        seen = sorted({str(k) for k, v in labels.items() if v is not None})[:10]
        raise SourceError(path, f"no control cells: no value of obs['{perturbation_column}'] is a control label "
                                f"(values: {seen}); name the control label with --control_label")
    if not ((perturbation != CONTROL) & ~unassigned).any():
        raise SourceError(path, f"obs['{perturbation_column}'] labels every cell a control; no perturbed cells")
    if unassigned.any():
        bad = sorted({str(v) for v, h in labels.items() if h is None})[:5]
        log(f"left out {int(unassigned.sum())} cells without an assigned perturbation ({bad})")

    if perturbation_type:
        kind = harmonize_perturbation_type(perturbation_type)
        if kind is None:
            raise SourceError(path, f"perturbation type '{perturbation_type}' is not one of knockout, knockdown, "
                                    "activation, overexpression (or a spelling such as CRISPRi, CRISPRa, ORF)")
        kinds = pd.Series(kind, index=obs.index, dtype=object)
    else:
        if not perturbation_type_column or perturbation_type_column not in obs.columns:
            raise SourceError(path, f"obs has no perturbation type column '{perturbation_type_column}'; "
                                    "give the modality with --perturbation_type")
        source = obs[perturbation_type_column]
        mapping = {v: harmonize_perturbation_type(v) for v in pd.unique(source.dropna())}
        kinds = _map_values(source, mapping.get)
        unknown = sorted({str(v) for v, k in mapping.items() if k is None})
        bad = kinds.isna() & ~unassigned
        if bad.any():
            raise SourceError(path, f"obs['{perturbation_type_column}'] has values {unknown[:5] or ['<missing>']} that are "
                                    "not a genetic perturbation type (knockout, knockdown, activation, overexpression)")
        # Controls take their screen's modality: the most common one among perturbed cells of the file.
        perturbed = kinds[(perturbation != CONTROL) & ~unassigned]
        if len(perturbed):
            kinds = kinds.where(perturbation != CONTROL, perturbed.mode().iloc[0])

    if cell_type_column and cell_type_column in obs.columns:
        cell_types = _map_values(obs[cell_type_column], harmonize_cell_type)
        if cell_types[~unassigned].isna().any():
            raise SourceError(path, f"obs['{cell_type_column}'] is missing for "
                                    f"{int(cell_types[~unassigned].isna().sum())} cells")
    elif cell_type:
        if cell_type_column:
            log(f"obs has no column '{cell_type_column}'; every cell is of cell type '{cell_type}'")
        cell_types = pd.Series(harmonize_cell_type(cell_type), index=obs.index, dtype=object)
    else:
        raise SourceError(path, f"obs has no cell type column '{cell_type_column}' (columns: {columns[:12]}); "
                                "name it with --cell_type_column or give one cell type with --cell_type")

    if condition_column:
        if condition_column not in obs.columns:
            raise SourceError(path, f"obs has no condition column '{condition_column}' (columns: {columns[:12]})")
        conditions = _map_values(obs[condition_column], lambda v: str(v).strip() or NONE).fillna(NONE)
    else:
        conditions = pd.Series(NONE, index=obs.index, dtype=object)
    frame = pd.DataFrame({"perturbation": perturbation, "perturbation_type": kinds, "cell_type": cell_types,
                          "condition": conditions}, index=obs.index)
    if replicate_column:
        if replicate_column not in obs.columns:
            raise SourceError(path, f"obs has no replicate column '{replicate_column}' (columns: {columns[:12]}); "
                                    "name an existing column with --replicate_column or leave it out")
        labels = _map_values(obs[replicate_column], lambda v: None if str(v).strip().lower() in ("", "nan", "none")
                             else str(v).strip())
        missing = labels.isna() & frame["perturbation"].notna()
        if missing.sum() == frame["perturbation"].notna().sum():
            raise SourceError(path, f"obs['{replicate_column}'] gives no cell a replicate label")
        if missing.any():
            log(f"left out {int(missing.sum())} cells without a replicate label in obs['{replicate_column}']")
            frame.loc[missing.to_numpy(), "perturbation"] = None
        frame["replicate"] = labels
    return frame


def sorted_labels(labels) -> list[str]:
    """Replicate labels in natural order (`rep2` before `rep10`), as dataset_report.replicate_halves orders them."""
    def key(label):
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(label))]
    return sorted({str(label) for label in labels}, key=key)


def _left_out_message(groups: pd.DataFrame, sizes: np.ndarray, dropped: np.ndarray, reason: str) -> str:
    names = [f"{'/'.join(map(str, row))} ({int(n)} cells)" for row, n in
             zip(groups[dropped].itertuples(index=False), sizes[dropped])][:EXAMPLES]
    n_control = int((groups.loc[dropped, "perturbation"] == CONTROL).sum())
    more = f", ... {int(dropped.sum()) - EXAMPLES} more" if dropped.sum() > EXAMPLES else ""
    return (f"left out {int(dropped.sum())} of {len(groups)} conditions ({int(sizes[dropped].sum())} cells"
            f"{f', {n_control} of them controls' if n_control else ''}): {reason}: {', '.join(names)}{more}")


def assign_profiles(cells: pd.DataFrame, *, seed: int, min_cells: int, log=print) -> tuple[np.ndarray, pd.DataFrame]:
    """Profile index of every cell (-1 = left out) and the profiles' obs (see the module docstring).

    With a `replicate` column in `cells` (labels; None = left out) profiles follow its labels, else the cells
    of each (perturbation, cell_type, condition) are split at random into `r1` (the larger on odd counts)
    and `r2`. `profiles.attrs['left_out']`: conditions and replicate profiles left out for too few cells.
    """
    minimum = max(1, int(min_cells))
    biological = "replicate" in cells.columns
    keep = cells["perturbation"].notna().to_numpy()
    if biological:
        keep &= cells["replicate"].notna().to_numpy()
    keys = ["perturbation", "cell_type", "condition"]
    grouped = cells.loc[keep, keys].astype(str).groupby(keys, sort=True)
    group_codes = grouped.ngroup().to_numpy()
    groups = grouped.size().index.to_frame(index=False)
    sizes = np.bincount(group_codes, minlength=len(groups))
    left_out = {"n_conditions": 0, "n_control_conditions": 0, "n_cells": 0, "n_replicate_profiles": 0}

    if biological:
        labels = sorted_labels(pd.unique(cells.loc[keep, "replicate"]))
        label_codes = pd.Categorical(cells.loc[keep, "replicate"].astype(str), categories=labels).codes.astype(np.int64)
        pair = group_codes * len(labels) + label_codes
        pair_sizes = np.bincount(pair, minlength=len(groups) * len(labels)).reshape(len(groups), len(labels))
        big = pair_sizes >= minimum
        enough = big.sum(axis=1) >= 2
        small = (pair_sizes > 0) & ~big & enough[:, None]
        if small.any():
            log(f"left out {int(small.sum())} replicate profiles of kept conditions with fewer than {minimum} cells "
                f"({int(pair_sizes[small].sum())} cells)")
        left_out["n_replicate_profiles"] = int(small.sum())
        if not enough.all():
            log(_left_out_message(groups, sizes, ~enough, f"fewer than two replicates with at least {minimum} cells"))
        chosen = big & enough[:, None]  # (group, label) pairs that become profiles, in group-then-label order
        profile_of_pair = np.full(chosen.size, -1, dtype=np.int64)
        profile_of_pair[np.flatnonzero(chosen.reshape(-1))] = np.arange(int(chosen.sum()))
        profile_codes = profile_of_pair[pair]
        pair_group, pair_label = np.nonzero(chosen)
        replicate_names = np.asarray(labels, dtype=object)[pair_label]
    else:
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(len(group_codes)), group_codes))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank = np.empty(len(group_codes), dtype=np.int64)
        rank[order] = np.arange(len(group_codes)) - np.repeat(starts, sizes)
        half = (rank >= (sizes[group_codes] + 1) // 2).astype(np.int64)  # 0 -> r1, 1 -> r2
        enough = sizes // 2 >= minimum
        if not enough.all():
            log(_left_out_message(groups, sizes, ~enough, f"fewer than {minimum} cells per random half "
                                                          f"(at least {2 * minimum} cells needed)"))
        new_index = np.full(len(groups), -1, dtype=np.int64)
        new_index[enough] = np.arange(int(enough.sum()))
        profile_of_group = new_index[group_codes]
        profile_codes = np.where(profile_of_group >= 0, profile_of_group * 2 + half, -1)
        pair_group = np.repeat(np.flatnonzero(enough), 2)
        replicate_names = np.tile(np.asarray(HALF_LABELS, dtype=object), int(enough.sum()))
    left_out.update(n_conditions=int((~enough).sum()), n_cells=int(sizes[~enough].sum()),
                    n_control_conditions=int((groups.loc[~enough, "perturbation"] == CONTROL).sum()))
    if not enough.any():
        raise ValueError(f"no condition has at least {minimum} cells in each of two "
                         f"{'replicates' if biological else 'random halves'} (lower --min_cells_per_half?)")
    codes = np.full(len(cells), -1, dtype=np.int64)
    codes[keep] = profile_codes

    # A condition's modality: the most common one among its cells (one, in every source seen so far).
    tally = (pd.DataFrame({"group": group_codes, "kind": cells.loc[keep, "perturbation_type"].astype(str).to_numpy()})
             .value_counts().reset_index().sort_values(["group", "count", "kind"], ascending=[True, False, True]))
    kinds = tally.drop_duplicates("group").set_index("group")["kind"]
    profiles = groups.loc[pair_group].reset_index(drop=True)
    profiles["replicate"] = replicate_names
    profiles["perturbation_type"] = kinds.loc[pair_group].to_numpy()
    profiles["is_control"] = (profiles["perturbation"] == CONTROL).to_numpy()
    profiles["n_targets"] = profiles["perturbation"].map(lambda p: len(split_targets(p))).astype(np.int64)
    profiles["n_cells"] = np.bincount(codes[codes >= 0], minlength=len(profiles)).astype(np.int64)
    profiles.index = profiles[["perturbation", "cell_type", "condition", "replicate"]].agg(ID_SEPARATOR.join, axis=1).to_numpy()
    profiles = profiles[["perturbation", "is_control", "perturbation_type", "n_targets", "cell_type", "condition",
                         "replicate", "n_cells"]]
    codes, profiles = split_control_parts(codes, profiles, seed, minimum)
    profiles.attrs["left_out"] = left_out
    profiles.attrs["replicate_kind"] = BIOLOGICAL if biological else RANDOM_HALF
    profiles.attrs["min_cells_per_half"] = minimum
    return codes, profiles


def split_control_parts(codes: np.ndarray, profiles: pd.DataFrame, seed: int, minimum: int):
    """Cut each control profile with at least 2 * `minimum` cells into two profiles of random halves of its
    cells (`control_part` 1 and 2, the larger first on odd counts); see the module docstring. Returns the
    cells' new profile codes and the new profiles (controls' parts next to each other, names `...|p1`)."""
    n_cells = profiles["n_cells"].to_numpy()
    cut = profiles["is_control"].to_numpy() & (n_cells >= 2 * minimum)
    width = np.where(cut, 2, 1)
    first = np.concatenate([[0], np.cumsum(width)[:-1]])  # new index of each old profile's (first) part
    assigned = np.flatnonzero(codes >= 0)
    old = codes[assigned]
    new_codes = codes.copy()
    new_codes[assigned] = first[old]
    in_cut = assigned[cut[old]]
    if len(in_cut):
        rng = np.random.default_rng([int(seed), 1])  # its own stream: the replicate halves stay as they were
        group = codes[in_cut]
        order = np.lexsort((rng.random(len(in_cut)), group))
        sizes = np.bincount(group, minlength=len(profiles))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank = np.empty(len(in_cut), dtype=np.int64)
        rank[order] = np.arange(len(in_cut)) - starts[group[order]]
        new_codes[in_cut] += (rank >= (sizes[group] + 1) // 2).astype(np.int64)
    rows = np.repeat(np.arange(len(profiles)), width)
    parts = profiles.iloc[rows].copy()
    part = np.zeros(len(parts), dtype=np.int64)
    part[first[cut]], part[first[cut] + 1] = 1, 2
    parts["control_part"] = part
    parts["n_cells"] = np.bincount(new_codes[new_codes >= 0], minlength=len(parts)).astype(np.int64)
    parts.index = [name + (f"{ID_SEPARATOR}p{k}" if k else "") for name, k in zip(profiles.index[rows], part)]
    return new_codes, parts
