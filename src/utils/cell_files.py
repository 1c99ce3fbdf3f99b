"""Cells files of the contract (`src/api/file_*_cells.yaml`), written by streaming, never densified.

Included as a viash resource by the dataset loaders (beside `pseudobulk.py`) and by the tasks (beside
`splits.py`); needs numpy, pandas, scipy, h5py and anndata.

- `select_cells`: which cells of a source a loader keeps: of the cells summed into a profile, at most
  `max_cells` per perturbed condition (perturbation x cell type x condition) and `max_control` per control
  condition, drawn with `seed`. The draw depends only on the profiles and the seed, never on a split.
- `write_source_cells`: those cells of a cell-level source (CSR, CSC or dense `X`/layer of an h5ad) as a
  dataset cells file: kept genes only, `X` log-normalised as the profiles are, `layers['counts']` for count
  sources.
- `copy_cells`: rows of a cells file (CSR, as written here) into others, with new obs, in one pass (the
  tasks' train and solution cells).

Memory: the output is appended block by block to resizable HDF5 datasets (`StreamingCellWriter`), so peak
memory is one block of the source plus the obs table, whatever the number of cells.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import scipy.sparse as sp

import deflate_chunks
from component_io import write_element

COUNTS_PER = 1e4
BLOCK_NNZ = 1_000_000     # stored values read per block (about 40 MB of work arrays)
BLOCK_ROWS = 50_000
OBS_COLUMNS = ("perturbation", "is_control", "perturbation_type", "n_targets", "cell_type", "condition",
               "replicate")


def _read_elem(node):
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(node)


class StreamingCellWriter:
    """An h5ad file whose CSR `X` (and layers) grow by appended row blocks; obs/var/uns are written at the end.

    A layer with X's sparsity structure (a loader's counts: log1p keeps every non-zero) stores only its
    values; its `indices` and `indptr` are hard links to X's (HDF5 readers see two ordinary datasets), which
    saves a quarter of a cells file and of the work of writing and reading it. A block that breaks the
    structure gives the layer its own copy from then on.

    Written to a temporary file beside `path` and renamed by `finish`, so a failure leaves no partial file.
    """

    STRUCTURE = (("indices", np.int32), ("indptr", np.int64))

    def __init__(self, path: str, n_genes: int, layers=()):
        import h5py

        self.path, self.n_genes, self.n_rows = str(path), int(n_genes), 0
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self.tmp = os.path.join(directory, f".partial-{os.getpid()}-{os.path.basename(self.path)}")
        self.file = h5py.File(self.tmp, "w")
        self.groups = {"X": self._matrix(self.file, "X")}
        self.shared = {name: True for name in layers}  # layer -> its structure is X's so far
        if layers:
            layer_group = self.file.create_group("layers")
            layer_group.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
            for name in layers:
                self.groups[name] = self._matrix(layer_group, name, structure=False)

    @staticmethod
    def _matrix(parent, name, structure=True):
        group = parent.create_group(name)
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0"})
        # cells files are the largest files of a run: stored compressed, chunk by chunk (deflate_chunks says why)
        fields = {"group": group, "data": deflate_chunks.Appender(deflate_chunks.create(group, "data", np.float32))}
        if structure:
            for field, dtype in StreamingCellWriter.STRUCTURE:
                fields[field] = deflate_chunks.Appender(deflate_chunks.create(group, field, dtype))
            fields["indptr"].append([0])
        return fields

    def _unshare(self, name):
        """Give layer `name` its own indices and indptr: X's so far (its rows up to now share them)."""
        fields, x = self.groups[name], self.groups["X"]
        for field, dtype in self.STRUCTURE:
            appender = deflate_chunks.Appender(deflate_chunks.create(fields["group"], field, dtype))
            reader = deflate_chunks.Reader(x[field].dataset)
            for start in range(0, x[field].written, 1 << 24):
                appender.append(reader.range(start, min(x[field].written, start + (1 << 24))))
            for piece in x[field].pending:
                appender.append(piece)
            fields[field] = appender
        self.shared[name] = False

    def append(self, X: sp.csr_matrix, **layers):
        """Add rows: `X` and each layer (CSR, n_genes columns, the same rows)."""
        blocks = {}
        for name, matrix in {"X": X, **layers}.items():
            if matrix.shape[1] != self.n_genes:
                raise ValueError(f"{name} block has {matrix.shape[1]} columns, expected {self.n_genes}")
            matrix = sp.csr_matrix(matrix)
            matrix.sort_indices()
            blocks[name] = matrix
        X = blocks["X"]
        for name, matrix in blocks.items():  # before X's block is appended: an unshared layer copies X's rows so far
            if self.shared.get(name) and not (matrix.nnz == X.nnz and np.array_equal(matrix.indptr, X.indptr)
                                              and np.array_equal(matrix.indices, X.indices)):
                self._unshare(name)
        for name, matrix in blocks.items():
            fields = self.groups[name]
            offset = fields["data"].size
            fields["data"].append(matrix.data)
            if not self.shared.get(name):
                fields["indices"].append(matrix.indices)
                fields["indptr"].append(matrix.indptr[1:].astype(np.int64) + offset)
        self.n_rows += X.shape[0]

    def finish(self, obs: pd.DataFrame, var: pd.DataFrame, uns: dict):
        if len(obs) != self.n_rows:
            raise ValueError(f"obs has {len(obs)} rows, the matrix {self.n_rows}")
        try:
            for name, fields in self.groups.items():
                for field in ("data", "indices", "indptr"):
                    if field in fields:
                        fields[field].close()
                if self.shared.get(name):  # hard links: the same datasets under the layer's names
                    for field, _ in self.STRUCTURE:
                        fields["group"][field] = self.groups["X"]["group"][field]
                fields["group"].attrs["shape"] = np.array([self.n_rows, self.n_genes], dtype=np.int64)
            self.file.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
            obs = obs.copy()
            obs.index = obs.index.astype(str)
            for column in obs.columns:  # strings as categoricals: small files, fast reads
                if obs[column].dtype == object:
                    obs[column] = pd.Categorical(obs[column].astype(str))
            write_element(self.file, "obs", obs)
            write_element(self.file, "var", var)
            write_element(self.file, "uns", uns)
            for key in ("obsm", "varm", "obsp", "varp") + (() if "layers" in self.file else ("layers",)):
                write_element(self.file, key, {})
            self.file.close()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self):
        try:
            self.file.close()
        except Exception:  # already closed
            pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


# ------------------------------------------------------------------------------------------ loaders

def select_cells(codes: np.ndarray, profiles: pd.DataFrame, max_cells: int, max_control: int, seed: int) -> np.ndarray:
    """Sorted source rows of the kept cells (see the module docstring); a cap of 0 keeps every cell."""
    codes = np.asarray(codes, dtype=np.int64)
    rows = np.flatnonzero(codes >= 0)
    condition = profiles.groupby(["perturbation", "cell_type", "condition"], sort=True, observed=True).ngroup()
    condition = condition.to_numpy()[codes[rows]]
    is_control = profiles["is_control"].to_numpy().astype(bool)[codes[rows]]
    cap = np.where(is_control, max_control, max_cells).astype(np.int64)
    # the draw deals a condition's cells round-robin over its profiles (replicates), so that every
    # replicate keeps cells under the cap: rank within the profile first, then at random
    draw = np.random.default_rng(seed).random(len(rows))
    within = np.empty(len(rows), dtype=np.int64)
    by_profile = np.lexsort((draw, codes[rows]))
    sorted_codes = codes[rows][by_profile]
    within[by_profile] = np.arange(len(rows)) - np.searchsorted(sorted_codes, sorted_codes, side="left")
    order = np.lexsort((draw, within, condition))
    sizes = np.bincount(condition)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(len(rows), dtype=np.int64)
    rank[order] = np.arange(len(rows)) - np.repeat(starts, sizes)
    return rows[(cap == 0) | (rank < cap)]


def _cells_obs(rows: np.ndarray, codes: np.ndarray, profiles: pd.DataFrame) -> pd.DataFrame:
    profile = codes[rows]
    obs = pd.DataFrame({column: profiles[column].to_numpy()[profile] for column in OBS_COLUMNS})
    obs["profile_id"] = profiles.index.to_numpy()[profile]
    obs["source_index"] = rows.astype(np.int64)
    obs.index = pd.Index([f"cell_{r}" for r in rows], dtype=object)
    return obs


def _normalised_block(block: sp.csr_matrix, keep_index, counts: bool):
    """(X, counts or None) of a block of source rows (all genes): kept columns; log1p(cp10k) for counts."""
    totals = np.asarray(block.sum(axis=1)).ravel()
    kept = block[:, keep_index] if keep_index is not None else block
    kept = sp.csr_matrix(kept, dtype=np.float64)
    if not counts:
        return kept.astype(np.float32), None
    scale = COUNTS_PER / np.where(totals > 0, totals, 1.0)
    X = kept.copy()
    X.data = np.log1p(X.data * np.repeat(scale, np.diff(X.indptr)))
    return X.astype(np.float32), kept.astype(np.float32)


def _csr_row_blocks(indptr: np.ndarray, rows: np.ndarray):
    """Consecutive groups of `rows` (sorted) whose source span holds about BLOCK_NNZ values."""
    start = 0
    while start < len(rows):
        limit = indptr[rows[start]] + BLOCK_NNZ
        stop = int(np.searchsorted(indptr[rows[start:] + 1], limit, side="right")) + start
        stop = min(len(rows), max(start + 1, stop), start + BLOCK_ROWS)
        yield rows[start:stop]
        start = stop


def _source_blocks(handle, path, layer, rows: np.ndarray):
    """CSR blocks (all genes) of the source rows `rows` (sorted), in order."""
    from matrix_stream import matrix_layout

    kind, (n_cells, n_genes), node = matrix_layout(handle, path, layer)
    if kind == "csr":
        matrix = deflate_chunks.CsrOnDisk(node, shape=(n_cells, n_genes))
        for block_rows in _csr_row_blocks(matrix.indptr, rows):
            yield matrix.span(int(block_rows[0]), int(block_rows[-1]) + 1)[block_rows - block_rows[0]]
    elif kind == "dense":
        step = max(1, min(BLOCK_ROWS, BLOCK_NNZ // max(1, n_genes)))
        for start in range(0, len(rows), step):
            block_rows = rows[start:start + step]
            yield sp.csr_matrix(np.asarray(node[block_rows], dtype=np.float64))  # h5py: increasing rows
    else:  # CSC: cells are columns' indices; several passes over the genes, each collecting a range of rows
        indptr = node["indptr"][:].astype(np.int64)
        position = np.full(n_cells, -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        rows_per_pass = max(1, int(BLOCK_NNZ * n_cells / max(1, int(indptr[-1]))))
        for first in range(0, len(rows), rows_per_pass):
            last = min(len(rows), first + rows_per_pass)
            parts_r, parts_c, parts_v = [], [], []
            for start in range(0, n_genes, 256):
                stop = min(n_genes, start + 256)
                low, high = int(indptr[start]), int(indptr[stop])
                cells = node["indices"][low:high]
                where = position[cells]
                inside = (where >= first) & (where < last)
                if inside.any():
                    genes = np.repeat(np.arange(start, stop), np.diff(indptr[start:stop + 1]))
                    parts_r.append(where[inside] - first)
                    parts_c.append(genes[inside])
                    parts_v.append(node["data"][low:high][inside])
            if parts_r:
                yield sp.csr_matrix((np.concatenate(parts_v).astype(np.float64),
                                     (np.concatenate(parts_r), np.concatenate(parts_c))), shape=(last - first, n_genes))
            else:
                yield sp.csr_matrix((last - first, n_genes))


def write_source_cells(path, output, *, codes, profiles: pd.DataFrame, keep: np.ndarray, var: pd.DataFrame,
                       values: str, uns: dict, max_cells: int, max_control: int, seed: int, layer=None, log=print):
    """The dataset cells file of a cell-level source (see the module docstring); returns the number of cells.

    codes: profile of every source cell (-1 = not in a profile); profiles: the common dataset's obs, same
    order; keep: boolean per source gene (the common dataset's genes); var: the cells file's var (index =
    the common dataset's var_names); values: 'counts' or 'log' as in `pseudobulk`.
    """
    from matrix_stream import _open

    codes = np.asarray(codes, dtype=np.int64)
    rows = select_cells(codes, profiles, max_cells, max_control, seed)
    keep_index = np.flatnonzero(np.asarray(keep, dtype=bool))
    counts = values == "counts"
    writer = StreamingCellWriter(output, len(keep_index), layers=("counts",) if counts else ())
    try:
        with _open(path) as handle:
            for block in _source_blocks(handle, path, layer, rows):
                X, raw = _normalised_block(block, keep_index, counts)
                writer.append(X, **({"counts": raw} if counts else {}))
        writer.finish(_cells_obs(rows, codes, profiles), var,
                      {**uns, "max_cells_per_condition": int(max_cells), "max_control_cells": int(max_control),
                       "cells_seed": int(seed), "n_cells_eligible": int((codes >= 0).sum())})
    except BaseException:
        writer.abort()
        raise
    log(f"cells: {len(rows)} of {int((codes >= 0).sum())} cells x {len(keep_index)} genes written to {output} "
        f"(at most {max_cells or 'all'} per condition, {max_control or 'all'} per control condition, seed {seed})")
    return len(rows)


# ------------------------------------------------------------------------------------------ tasks

def read_cells_obs(path) -> tuple[pd.DataFrame, pd.Index, list[str]]:
    """(obs, var_names, layer names) of a cells file, without reading its matrices."""
    import h5py

    with h5py.File(path, "r") as handle:
        obs = _read_elem(handle["obs"])
        var = _read_elem(handle["var"])
        layers = sorted(handle["layers"].keys()) if "layers" in handle else []
    return obs, var.index, layers


def copy_cells(source, parts: list):
    """Write rows of the cells file `source` (CSR X and layers) to several files in one pass over it.

    parts: (output, rows, obs, uns) per file, `rows` increasing. The source is read once, span by span, and
    every part takes its rows from each span: a task's training and test cells are interleaved in the
    dataset's file, so a pass per part would decompress the whole file once per part (at genome scale, a
    split's largest cost after the compression of what it writes)."""
    import h5py

    parts = [(output, np.asarray(rows, dtype=np.int64), obs, uns) for output, rows, obs, uns in parts]
    for _, rows, _, _ in parts:
        if len(rows) > 1 and (np.diff(rows) <= 0).any():
            raise ValueError("copy_cells needs increasing rows")
    with h5py.File(source, "r") as handle:
        names = ["X"] + (sorted(handle["layers"].keys()) if "layers" in handle else [])
        nodes = {name: handle[name] if name == "X" else handle["layers"][name] for name in names}
        for name, node in nodes.items():
            if not (hasattr(node, "attrs") and node.attrs.get("encoding-type") == "csr_matrix"):
                raise ValueError(f"file '{source}': {name} is not a CSR matrix, expected a cells file written by "
                                 "a loader")
        n_genes = int(nodes["X"].attrs["shape"][1])
        var = _read_elem(handle["var"])
        matrices = {name: deflate_chunks.CsrOnDisk(node) for name, node in nodes.items()}
        shared = {name for name in names[1:] if matrices[name].shares_structure_with(matrices["X"])}
        writers = []
        try:
            for output, *_ in parts:
                writers.append(StreamingCellWriter(output, n_genes, layers=names[1:]))
            wanted = np.unique(np.concatenate([rows for _, rows, _, _ in parts]))
            for block in _csr_row_blocks(matrices["X"].indptr, wanted) if len(wanted) else []:
                first, last = int(block[0]), int(block[-1]) + 1
                spans = {"X": matrices["X"].span(first, last)}
                for name in names[1:]:  # a layer sharing X's indices and indptr (hard links) reads its values only
                    spans[name] = matrices[name].span(first, last, spans["X"] if name in shared else None)
                for writer, (_, rows, _, _) in zip(writers, parts):
                    start, stop = np.searchsorted(rows, (first, last))
                    if stop > start:
                        take = rows[start:stop] - first
                        pieces = {name: span[take] for name, span in spans.items()}
                        writer.append(pieces.pop("X"), **pieces)
            for writer, (_, _, obs, uns) in zip(writers, parts):
                writer.finish(obs, var, uns)
        except BaseException:
            for writer in writers:
                writer.abort()
            raise


def loader_options(par: dict) -> dict:
    """`cells_options` of `pseudobulk` from a loader's --max_cells_per_condition, --max_control_cells, --cells_seed."""
    defaults = {"max_cells_per_condition": ("max_cells", 500), "max_control_cells": ("max_control", 2000),
                "cells_seed": ("seed", 0)}
    options = {}
    for name, (key, default) in defaults.items():
        value = default if par.get(name) is None else par[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"--{name} is {value!r}, expected a non-negative integer")
        options[key] = int(value)
    return options


def _check_input_cells(path, common) -> tuple[pd.DataFrame, list[str]]:
    """obs of the dataset cells file `path`, checked against the common dataset; one-line ValueError otherwise."""
    try:
        obs, var_names, layers = read_cells_obs(path)
    except Exception as error:  # not HDF5, no obs/var
        raise ValueError(f"file '{path}': cannot be read as a cells file ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    problems = []
    if list(var_names) != list(common.var_names):
        problems.append("genes (var_names) differ from the common dataset's (--input) or are in another order")
    for column in OBS_COLUMNS + ("profile_id",):
        if column not in obs.columns:
            problems.append(f"obs['{column}'] is missing")
    if not problems:
        profile = obs["profile_id"].astype(str)
        unknown = ~profile.isin(common.obs_names)
        if unknown.any():
            problems.append(f"{int(unknown.sum())} cells name a profile_id that is not a row of the common dataset "
                            f"(e.g. {profile[unknown].iloc[0]!r}): cells and dataset come from different loader runs")
        else:
            expected = common.obs.loc[profile.to_numpy(), ["perturbation", "cell_type", "condition", "replicate"]]
            for column in expected.columns:
                if (expected[column].astype(str).to_numpy() != obs[column].astype(str).to_numpy()).any():
                    problems.append(f"obs['{column}'] disagrees with the common dataset row named by profile_id")
    if problems:
        raise ValueError(f"file '{path}': " + "; ".join(problems[:3]))
    return obs, layers


def write_split_cells(path, common, assignment: dict, train_output, solution_output, train_uns: dict,
                      solution_uns: dict, log=print) -> tuple[int, int]:
    """A task's train_cells and solution_cells from the dataset cells `path` (see `splits.build_split`'s
    `assignment`). A test profile used as both replicate halves gives its cells alternately to half 1 and 2.
    Returns (training cells, solution cells); raises ValueError for a bad cells file."""
    obs, _ = _check_input_cells(path, common)
    row_of = pd.Series(np.arange(common.n_obs), index=common.obs_names)
    common_row = row_of.loc[obs["profile_id"].astype(str).to_numpy()].to_numpy()
    train_rows = np.flatnonzero(assignment["is_train"][common_row])
    condition = assignment["condition_id"][common_row]
    test_rows = np.flatnonzero(pd.notna(condition))
    half = assignment["half"][common_row[test_rows]].copy()
    both = half == 0
    if both.any():  # alternate the cells of a profile that stands for both halves
        profile = common_row[test_rows][both]
        rank = pd.Series(profile).groupby(profile).cumcount().to_numpy()
        half[both] = 1 + rank % 2
    base = obs.copy()
    base.index = base.index.astype(str)
    solution_obs = base.iloc[test_rows].copy()
    solution_obs.insert(0, "replicate_half", half.astype(np.int64))
    solution_obs.insert(0, "condition_id", condition[test_rows].astype(str))
    if len(test_rows) == 0:
        raise ValueError(f"file '{path}': no cell of any test condition (every condition needs cells)")
    copy_cells(path, [(train_output, train_rows, base.iloc[train_rows], train_uns),
                      (solution_output, test_rows, solution_obs, solution_uns)])
    log(f"cells: train {len(train_rows)}, solution {len(test_rows)} of {len(obs)} dataset cells")
    return len(train_rows), len(test_rows)


def write_task_cells(par: dict, common, assignment: dict, uns: dict, fail, log=print):
    """A task's --output_train_cells / --output_solution_cells from --input_cells (nothing without it).

    Called before the task writes its other outputs, so that a bad cells file stops the task with one line
    (`fail`) and nothing written."""
    wanted = [name for name in ("output_train_cells", "output_solution_cells") if par.get(name)]
    if not par.get("input_cells"):
        if wanted:
            fail(f"--{wanted[0]} was given without --input_cells (the dataset cells to split)")
        return
    missing = [name for name in ("output_train_cells", "output_solution_cells") if not par.get(name)]
    if missing:
        fail(f"--input_cells was given without --{missing[0]}")
    try:
        write_split_cells(par["input_cells"], common, assignment, par["output_train_cells"],
                          par["output_solution_cells"], dict(uns), dict(uns), log=log)
    except ValueError as error:
        fail(f"--input_cells {error}")
