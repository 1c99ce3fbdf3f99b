"""Leakage checks of a split's cells files (`train_cells.h5ad`, `solution_cells.h5ad`), used by
`perturbcast.leakage.check_split` when a task wrote them.

- train_cells: every cell belongs to a training profile (`obs['profile_id']` in train's obs_names), no cell has
  the perturbation x cell_type x condition of a test condition, and no training cell's expression equals a
  solution cell's (a content check that does not trust the labels);
- solution_cells: every cell names a test condition (`condition_id`) whose labels it carries, every test
  condition has cells, in both replicate halves when it has two or more profiles;
- with the dataset cells (`cells_path`): train_cells are exactly the dataset cells of training profiles and
  solution_cells exactly those of the test conditions (by `source_index`), so no cell is lost or invented;
- both files agree with the split on genes and on uns task_id / dataset_id / split_seed / n_folds / fold.

Matrices are read a block of cells at a time (h5py), so the check's memory does not grow with the cells.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .formats import chunk_reader

KEYS = ("perturbation", "cell_type", "condition")
UNS_KEYS = ("task_id", "dataset_id", "split_seed", "n_folds", "fold")
BLOCK = 20_000


def _read_elem(node):
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(node)


def _open(path, role: str):
    """(obs, var_names, uns) of a cells file, or a problem sentence."""
    import h5py

    if not os.path.isfile(path):
        return None, f"{role}: '{path}' does not exist"
    try:
        with h5py.File(path, "r") as handle:
            return (_read_elem(handle["obs"]), _read_elem(handle["var"]).index,
                    _read_elem(handle["uns"]) if "uns" in handle else {}), None
    except Exception as error:  # not HDF5, damaged, not AnnData
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"{role}: '{path}' cannot be read as a cells file ({detail})"


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 values (wrapping): a well-spread 64-bit hash of each."""
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def row_hashes(path) -> np.ndarray:
    """One 64-bit hash per cell of `X`: of its set of (stored gene, value to 4 decimals), block by block.

    Vectorised (each stored value hashed, summed per row): a loop over cells with Python's hash took ~10 s per
    genome-scale training file in the engine's process, beside reading it through HDF5's zlib filter."""
    import h5py

    chunks = chunk_reader()
    with np.errstate(over="ignore"), h5py.File(path, "r") as handle:
        node = handle["X"]
        on_disk = chunks.CsrOnDisk(node) if chunks and node.attrs.get("encoding-type") == "csr_matrix" else None
        indptr = node["indptr"][:].astype(np.int64)
        hashes = np.empty(len(indptr) - 1, dtype=np.uint64)
        for start in range(0, len(hashes), BLOCK):
            stop = min(len(hashes), start + BLOCK)
            low, high = int(indptr[start]), int(indptr[stop])
            if on_disk is not None:
                block = on_disk.span(start, stop)
                indices, data = block.indices, block.data
            else:
                indices, data = node["indices"][low:high], node["data"][low:high]
            # the value in units of 1e-4 (to 4 decimals), beside its gene in the upper bits
            units = np.rint(np.multiply(data, 1e4, dtype=np.float64)).astype(np.int64).view(np.uint64)
            pairs = _mix((np.asarray(indices, dtype=np.uint64) << np.uint64(40)) ^ (units & np.uint64((1 << 40) - 1)))
            sums = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(pairs, dtype=np.uint64)])
            bounds = indptr[start:stop + 1] - low
            hashes[start:stop] = _mix(sums[bounds[1:]] - sums[bounds[:-1]] + np.diff(bounds).astype(np.uint64))
    return hashes.view(np.int64)


def _keys(obs: pd.DataFrame) -> pd.Series:
    columns = [obs[column].astype(str) for column in KEYS]
    return columns[0].str.cat(columns[1:], sep="|")


def check_split_cells(train, test, solution, train_cells_path=None, solution_cells_path=None,
                      cells_path=None) -> list[str]:
    """Problems of the cells files of a split (train/test/solution: loaded AnnData objects)."""
    problems = []
    files = {}
    for role, path in (("train_cells", train_cells_path), ("solution_cells", solution_cells_path)):
        if path is None:
            continue
        loaded, problem = _open(os.fspath(path), role)
        if problem:
            problems.append(problem)
        else:
            files[role] = loaded
    if problems:
        return problems
    test_keys = set(_keys(solution.obs)) if all(c in solution.obs for c in KEYS) else set()
    for role, (obs, var_names, uns) in files.items():
        if list(var_names) != list(train.var_names):
            problems.append(f"{role}: genes (var_names) differ from train's or are in another order")
        for key in UNS_KEYS:
            if str(uns.get(key)) != str(train.uns.get(key)):
                problems.append(f"{role}: uns['{key}'] is {uns.get(key)!r}, train's {train.uns.get(key)!r}")
        missing = [c for c in KEYS + ("profile_id",) if c not in obs.columns]
        if missing:
            problems.append(f"{role}: obs['{missing[0]}'] is missing")
    if problems:
        return problems

    if "train_cells" in files:
        obs = files["train_cells"][0]
        foreign = ~obs["profile_id"].astype(str).isin(train.obs_names)
        if foreign.any():
            problems.append(f"train_cells: {int(foreign.sum())} cells belong to profiles that are not in training, "
                            f"e.g. {obs['profile_id'][foreign].astype(str).iloc[0]!r}")
        held = _keys(obs).isin(test_keys)
        if held.any():
            problems.append(f"train_cells: {int(held.sum())} cells of held-out conditions, e.g. "
                            f"{_keys(obs)[held].iloc[0]!r}")
    if "solution_cells" in files:
        obs = files["solution_cells"][0]
        for column in ("condition_id", "replicate_half"):
            if column not in obs.columns:
                problems.append(f"solution_cells: obs['{column}'] is missing")
        if not problems:
            condition = obs["condition_id"].astype(str)
            unknown = ~condition.isin(solution.obs_names)
            if unknown.any():
                problems.append(f"solution_cells: {int(unknown.sum())} cells name no test condition, e.g. "
                                f"{condition[unknown].iloc[0]!r}")
            else:
                expected = _keys(solution.obs.loc[condition.to_numpy()]).to_numpy()
                wrong = expected != _keys(obs).to_numpy()
                if wrong.any():
                    problems.append(f"solution_cells: {int(wrong.sum())} cells carry labels other than their "
                                    f"condition_id's")
            empty = sorted(set(solution.obs_names) - set(condition))
            if empty:
                problems.append(f"solution_cells: {len(empty)} test conditions have no cells, e.g. {empty[0]!r}")
            halves = obs["replicate_half"].astype(int)
            if not halves.isin([1, 2]).all():
                problems.append("solution_cells: obs['replicate_half'] holds values other than 1 and 2")
            per_condition = pd.DataFrame({"c": condition.to_numpy(), "h": halves.to_numpy(),
                                          "p": obs["profile_id"].astype(str).to_numpy()}).groupby("c")
            one_half = [c for c, g in per_condition if g["h"].nunique() < 2 and len(g) > 1]
            if one_half:
                problems.append(f"solution_cells: {len(one_half)} conditions have cells in one replicate half only, "
                                f"e.g. {one_half[0]!r}")
    if len(files) == 2 and not problems:
        train_hashes = row_hashes(train_cells_path)
        shared = np.isin(row_hashes(solution_cells_path), train_hashes)
        if shared.any():
            problems.append(f"train_cells: {int(shared.sum())} solution cells have an identical cell (expression to "
                            "4 decimals) in training")
    if cells_path is not None:
        problems += _completeness(files, train, solution, os.fspath(cells_path))
    return problems


def _completeness(files, train, solution, cells_path) -> list[str]:
    loaded, problem = _open(cells_path, "dataset_cells")
    if problem:
        return [problem]
    obs = loaded[0]
    if "source_index" not in obs.columns:
        return []
    problems = []
    profile = obs["profile_id"].astype(str)
    expected = {"train_cells": set(obs["source_index"][profile.isin(train.obs_names)].astype(int)),
                "solution_cells": set(obs["source_index"][_keys(obs).isin(set(_keys(solution.obs)))].astype(int))}
    for role, (role_obs, _, _) in files.items():
        if "source_index" not in role_obs.columns:
            problems.append(f"{role}: obs['source_index'] is missing; cannot compare with the dataset cells")
            continue
        got = set(role_obs["source_index"].astype(int))
        lost, extra = expected[role] - got, got - expected[role]
        if lost or extra:
            problems.append(f"{role}: {len(lost)} cells of the dataset cells missing and {len(extra)} unexpected "
                            f"(expected exactly the cells of {'training profiles' if role == 'train_cells' else 'the test conditions'})")
    return problems
