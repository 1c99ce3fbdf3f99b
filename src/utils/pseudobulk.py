"""Cell-level h5ad source -> pseudobulk profiles of the common dataset, streamed in bounded memory.

Included as a viash resource by the dataset loaders (needs numpy, pandas, scipy, h5py, anndata, and
`harmonize.py` and `profiles.py` beside it). A loader does:

    obs = read_obs(path, [columns...])                     # only the obs columns it needs
    cells = harmonize_cells(path, obs, perturbation_column=..., replicate_column=..., ...)  # one row per cell
    adata = pseudobulk(path, cells, values="counts", seed=0, min_cells=10, n_top_genes=2000,
                       genes=gene_table(path), uns={...}, log=log)

Replicates and the minimum number of cells: see `profiles.py`. Gene selection (`n_top_genes`): the genes
most variable across condition means (every perturbation x cell type x condition of the dataset once, over
all its cells, controls included), plus every measured target gene. The rule looks at no split: it is the
same for every split and fold, no condition weighs more for having more replicates or cells, and replicate
batch effects do not pick genes. `uns['gene_selection']` says what was done.

How it stays small: the cell matrix is never loaded. `stream_sums` reads `X` with h5py in blocks of stored
values (CSR: blocks of cells, CSC: blocks of genes, dense: blocks of cells) and adds each block into a
(profiles x genes) float64 accumulator: the product indicator(profiles x cells of the block) @ block,
computed for sparse blocks as a scatter-add of the block's values into their profile's row, cells grouped by
profile first (scipy's general sparse product builds a dense-sized sparse result per block and was 5-10x
slower). Blocks shrink so that accumulator plus block stay within MEMORY_BUDGET: peak memory does not grow
with the number of cells. Problems of the source raise `SourceError`, whose message names the file and the
problem.
"""
from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import scipy.sparse as sp

try:  # compiled kernels behind scipy's coo/csr_matrix.toarray() (they add into a dense array) and csr[rows]
    from scipy.sparse._sparsetools import coo_todense as _coo_todense
    from scipy.sparse._sparsetools import csr_row_index as _csr_row_index
    from scipy.sparse._sparsetools import csr_todense as _csr_todense
except ImportError:  # pragma: no cover - private API; the numpy fallbacks below are slower but equal
    _coo_todense = _csr_row_index = _csr_todense = None

from vocabulary import targets as split_targets
from profiles import SourceError, assign_profiles, harmonize_cells  # noqa: F401 (re-exported)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Stored values per block of the matrix. A block costs about BYTES_PER_VALUE bytes per value (values read as
# float64 and their indices, twice: as read and grouped by profile); blocks shrink
# (down to MIN_CHUNK_NNZ) so that they fit beside the profiles x genes float64 accumulator in MEMORY_BUDGET.
CHUNK_NNZ = 32_000_000
MIN_CHUNK_NNZ = 2_000_000
BYTES_PER_VALUE = 24
# Values at the start of each block checked one by one for being integer counts (all are checked for sign).
COUNT_CHECK_SAMPLE = 1_000_000
MEMORY_BUDGET = 1_500_000_000
GENE_BLOCK = 1024  # genes per step when normalising and ranking the profiles
CHUNK_ROWS = 200_000
COUNTS_PER = 1e4

# ------------------------------------------------------------------------------------------ reading

def _read_elem(node):
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(node)


def _open(path):
    import h5py

    path = str(path)
    if not os.path.exists(path):
        raise SourceError(path, "file does not exist")
    if os.path.isdir(path):
        raise SourceError(path, "is a directory, expected an .h5ad file")
    if os.path.getsize(path) == 0:
        raise SourceError(path, "file is empty (0 bytes), expected an .h5ad file")
    with open(path, "rb") as handle:
        if handle.read(8) != HDF5_SIGNATURE:
            raise SourceError(path, "not an HDF5/h5ad file (no HDF5 signature)")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise SourceError(path, f"cannot be opened as HDF5 ({error})") from None


def _frame(path, handle, key: str, columns=None) -> pd.DataFrame:
    """obs or var as a DataFrame (only `columns` if given), without touching the matrix."""
    if key not in handle:
        raise SourceError(path, f"has no '{key}' group; not an AnnData file")
    group = handle[key]
    try:
        if group.attrs.get("encoding-type") != "dataframe":  # files written before anndata 0.7
            import anndata as ad

            frame = getattr(ad.read_h5ad(str(path), backed="r"), key).copy()
            return frame if columns is None else frame[[c for c in columns if c in frame.columns]]
        index_key = group.attrs.get("_index", "_index")
        order = [str(c) for c in np.atleast_1d(group.attrs.get("column-order", [])) if str(c)]
        wanted = order if columns is None else [c for c in columns if c in group and c != index_key]
        data = {name: _read_elem(group[name]) for name in wanted if name in group}
        if key == "obs":  # cell names are not needed (and slow to read for millions of cells)
            return pd.DataFrame(data, index=pd.RangeIndex(group[index_key].shape[0]))
        return pd.DataFrame(data, index=pd.Index(np.asarray(_read_elem(group[index_key])).astype(str)))
    except SourceError:
        raise
    except Exception as error:  # damaged or unusual encodings
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SourceError(path, f"cannot read {key} ({detail})") from None


def read_obs(path, columns=None) -> pd.DataFrame:
    """The cells' annotation (only `columns` that exist, if given); raises SourceError for unreadable files."""
    with _open(path) as handle:
        obs = _frame(path, handle, "obs", columns)
        if len(obs) == 0:
            raise SourceError(path, "has no cells (obs is empty)")
        return obs


def obs_columns(path) -> list[str]:
    with _open(path) as handle:
        group = handle["obs"] if "obs" in handle else None
        if group is None:
            raise SourceError(path, "has no 'obs' group; not an AnnData file")
        order = [str(c) for c in np.atleast_1d(group.attrs.get("column-order", [])) if str(c)]
        return order or [k for k in group.keys() if k != group.attrs.get("_index", "_index")]


def gene_table(path, symbol_column: str | None = None, id_columns=("gene_id", "ensembl_id", "gene_ids",
                                                                   "ensembl_gene_id")) -> pd.DataFrame:
    """DataFrame with `symbol` and `gene_id` (None when unknown), one row per matrix column, in order.

    symbol_column: var column holding gene symbols (GEARS: `gene_name`, whose var_names are Ensembl ids);
    None = the var_names. Raises SourceError on missing or duplicated symbols.
    """
    with _open(path) as handle:
        var = _frame(path, handle, "var")
    if len(var) == 0:
        raise SourceError(path, "has no genes (var is empty)")
    if symbol_column:
        if symbol_column not in var.columns:
            raise SourceError(path, f"var has no column '{symbol_column}' with gene symbols "
                                    f"(columns: {list(var.columns)[:10]})")
        symbols = var[symbol_column].astype(str).to_numpy()
        ids = var.index.astype(str).to_numpy()
        if not all(re.match(r"^ENS[A-Z]*G\d+", i) for i in ids[:50]):  # var_names are not stable ids
            ids = None
    else:
        symbols = var.index.astype(str).to_numpy()
        id_column = next((c for c in id_columns if c in var.columns), None)
        ids = var[id_column].astype(str).to_numpy() if id_column else None
    missing = pd.isna(symbols) | np.isin(np.char.lower(symbols.astype(str)), ["", "nan", "none"])
    if missing.any():
        raise SourceError(path, f"{int(missing.sum())} gene(s) have no symbol in var")
    duplicated = pd.Index(symbols)[pd.Index(symbols).duplicated()].unique()
    if len(duplicated):
        raise SourceError(path, f"{len(duplicated)} duplicated gene name(s) in var (e.g. {list(duplicated[:3])}); "
                                "genes must be unique")
    return pd.DataFrame({"symbol": symbols, "gene_id": ids if ids is not None else [None] * len(symbols)})


def matrix_layout(handle, path, layer: str | None = None) -> tuple[str, tuple[int, int], object]:
    """('csr' | 'csc' | 'dense', shape, h5py node) of X or a layer."""
    import h5py

    if layer:
        if "layers" not in handle or layer not in handle["layers"]:
            raise SourceError(path, f"has no layer '{layer}'")
        node, where = handle["layers"][layer], f"layers['{layer}']"
    else:
        if "X" not in handle:
            raise SourceError(path, "has no expression matrix X")
        node, where = handle["X"], "X"
    if isinstance(node, h5py.Dataset):
        if node.ndim != 2:
            raise SourceError(path, f"{where} is not a 2-d matrix")
        return "dense", tuple(int(s) for s in node.shape), node
    encoding = str(node.attrs.get("encoding-type", node.attrs.get("h5sparse_format", "")))
    kind = {"csr_matrix": "csr", "csr": "csr", "csc_matrix": "csc", "csc": "csc"}.get(encoding)
    shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    if kind is None or shape is None or not all(k in node for k in ("data", "indices", "indptr")):
        raise SourceError(path, f"{where} is neither a dense matrix nor a CSR/CSC sparse matrix")
    return kind, (int(shape[0]), int(shape[1])), node


# ------------------------------------------------------------------------------------------ streaming

def _blocks(indptr: np.ndarray, chunk_nnz: int, chunk_rows: int):
    """(start, stop) ranges of the compressed axis holding at most chunk_nnz values (at least one row each)."""
    n = len(indptr) - 1
    start = 0
    while start < n:
        stop = int(np.searchsorted(indptr, indptr[start] + chunk_nnz, side="right")) - 1
        stop = min(n, max(start + 1, stop), start + chunk_rows)
        yield start, stop
        start = stop


def _check_counts(values: np.ndarray, path, where: str):
    """Raise SourceError unless the values are non-negative integers: every value for the sign, the first
    COUNT_CHECK_SAMPLE values of each block for integrality (the final sums are checked too, see `_finite`)."""
    if values.size == 0:
        return
    if values.min() < 0:
        raise SourceError(path, f"{where} holds negative values where raw counts are expected")
    head = values[:COUNT_CHECK_SAMPLE]
    bad = head != np.floor(head)  # NaN too
    if bad.any():
        _not_counts(path, where, head[np.flatnonzero(bad)[0]])


def _not_counts(path, where: str, example: float):
    raise SourceError(path, f"{where} holds non-integer values (e.g. {example:g}) where raw counts are expected "
                            "(is it normalised or log-transformed?)")


def _present(codes: np.ndarray, n_profiles: int) -> tuple[np.ndarray, np.ndarray]:
    """(profiles present in `codes`, each code's position among them): a unique-with-inverse for small
    non-negative integers in linear time (numpy's unique sorts, and is very slow on some numpy versions)."""
    present = np.bincount(codes, minlength=n_profiles) > 0
    position = np.cumsum(present) - 1
    return np.flatnonzero(present), position[codes]


class _Buffers:
    """Work arrays reused from block to block: fresh large arrays cost page faults on every block."""

    def __init__(self):
        self.arrays = {}

    def get(self, name: str, size: int, dtype) -> np.ndarray:
        array = self.arrays.get(name)
        if array is None or array.size < size or array.dtype != np.dtype(dtype):
            array = self.arrays[name] = np.empty(max(size, 1), dtype=dtype)
        return array[:size]


def _read(dataset, low: int, high: int, out: np.ndarray) -> np.ndarray:
    """dataset[low:high] into `out` (converted to its dtype by HDF5), without a temporary."""
    if high > low:
        dataset.read_direct(out, np.s_[low:high])
    return out


def _csr_block_sums(sums, data, indices, block_indptr, block_codes, buffers):
    """Add one block of cells of a CSR matrix (its values, indices and indptr from 0) into `sums`: values
    grouped by profile, then added row by row."""
    order = np.argsort(block_codes, kind="stable")
    order = order[np.searchsorted(block_codes[order], 0):]  # left-out cells (-1) sort first
    lengths = np.diff(block_indptr)[order]
    sorted_codes = block_codes[order]
    if _csr_row_index is None or _csr_todense is None:  # plain numpy/scipy (slower)
        block = sp.csr_matrix((data, indices, block_indptr), shape=(len(block_codes), sums.shape[1]))[order]
        np.add.at(sums, (np.repeat(sorted_codes, lengths), block.indices), block.data)
        return
    grouped_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    if len(order) == len(block_codes) and (np.diff(block_codes) >= 0).all():
        grouped_indices, grouped_data = indices, data  # the file is already ordered by profile here
    else:
        n_kept = int(grouped_indptr[-1])
        grouped_indices = buffers.get("grouped_indices", n_kept, np.int32)
        grouped_data = buffers.get("grouped_data", n_kept, np.float64)
        _csr_row_index(len(order), order.astype(np.int32), block_indptr.astype(np.int32), indices, data,
                       grouped_indices, grouped_data)
    # Now the cells of each profile are consecutive: read as a CSR matrix with one row per profile (its cells'
    # values one after the other, repeated genes included), the dense conversion adds them into `sums`.
    first_cell = np.searchsorted(sorted_codes, np.arange(sums.shape[0] + 1))
    _csr_todense(sums.shape[0], sums.shape[1], grouped_indptr[first_cell], grouped_indices, grouped_data,
                 sums.reshape(-1))


def stream_sums(path, codes: np.ndarray, n_profiles: int, *, layer: str | None = None, counts: bool = False,
                chunk_nnz: int | None = None, chunk_rows: int = CHUNK_ROWS, log=None) -> np.ndarray:
    """Per-profile sums of the matrix (n_profiles x n_genes, float64); cells with code -1 are skipped.

    counts=True checks that every stored value is a non-negative integer (raw counts). CSR blocks of cells
    are grouped by profile before the scatter-add, so that consecutive additions hit the same accumulator
    row (several times faster than adding cells in file order); CSC blocks of genes are added into a
    genes x profiles accumulator for the same reason. chunk_nnz (stored values per block) defaults to what
    fits beside the accumulator in MEMORY_BUDGET.
    """
    try:
        return _stream_sums(path, np.asarray(codes, dtype=np.int64), n_profiles, layer, counts, chunk_nnz, chunk_rows)
    except (OSError, ValueError, KeyError) as error:  # a damaged file (truncated download, broken chunks)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SourceError(path, f"cannot read the expression matrix ({detail})") from None


def _stream_sums(path, codes, n_profiles, layer, counts, chunk_nnz, chunk_rows):
    buffers = _Buffers()

    def check(values):
        if counts:
            _check_counts(values, path, where)

    with _open(path) as handle:
        kind, (n_cells, n_genes), node = matrix_layout(handle, path, layer)
        where = f"layers['{layer}']" if layer else "X"
        if n_cells != len(codes):
            raise SourceError(path, f"{where} has {n_cells} rows but obs has {len(codes)} cells")
        if chunk_nnz is None:
            spare = MEMORY_BUDGET - 8 * n_profiles * n_genes
            chunk_nnz = int(min(CHUNK_NNZ, max(MIN_CHUNK_NNZ, spare // BYTES_PER_VALUE)))
        if kind == "csr":
            sums = np.zeros((n_profiles, n_genes), dtype=np.float64)
            indptr = node["indptr"][:].astype(np.int64)
            for start, stop in _blocks(indptr, chunk_nnz, chunk_rows):
                if not (codes[start:stop] >= 0).any():
                    continue
                low, high = int(indptr[start]), int(indptr[stop])
                data = _read(node["data"], low, high, buffers.get("data", high - low, np.float64))
                indices = _read(node["indices"], low, high, buffers.get("indices", high - low, np.int32))
                check(data)
                _csr_block_sums(sums, data, indices, indptr[start:stop + 1] - low, codes[start:stop], buffers)
            return _finite(sums, path, where, counts)
        if kind == "csc":
            # genes x profiles, plus a last column that collects the left-out cells (code -1) unread
            sums_t = np.zeros((n_genes, n_profiles + 1), dtype=np.float64)
            profile_of_cell = np.where(codes >= 0, codes, n_profiles).astype(np.int32)
            indptr = node["indptr"][:].astype(np.int64)
            for start, stop in _blocks(indptr, chunk_nnz, n_genes):
                low, high = int(indptr[start]), int(indptr[stop])
                data = _read(node["data"], low, high, buffers.get("data", high - low, np.float64))
                check(data)
                cells = _read(node["indices"], low, high, buffers.get("indices", high - low, np.int32))
                profile = np.take(profile_of_cell, cells, out=buffers.get("profile", high - low, np.int32))
                block_indptr = indptr[start:stop + 1] - low
                if _csr_todense is not None:  # each gene's values added into its row, at their profiles
                    _csr_todense(stop - start, n_profiles + 1, block_indptr.astype(np.int32), profile, data,
                                 sums_t[start:stop].reshape(-1))
                else:
                    genes = np.repeat(np.arange(start, stop), np.diff(block_indptr))
                    _scatter_add(sums_t, genes, profile, data)
            return _finite(np.ascontiguousarray(sums_t[:, :n_profiles].T), path, where, counts)
        sums = np.zeros((n_profiles, n_genes), dtype=np.float64)
        rows_per_block = max(1, min(chunk_rows, chunk_nnz // max(1, n_genes)))
        for start in range(0, n_cells, rows_per_block):
            stop = min(n_cells, start + rows_per_block)
            block_codes = codes[start:stop]
            inside = block_codes >= 0
            if not inside.any():
                continue
            block = np.asarray(node[start:stop], dtype=np.float64)
            check(block.reshape(-1))
            profiles, local = _present(block_codes[inside], n_profiles)
            indicator = sp.csr_matrix((np.ones(len(local)), (local, np.flatnonzero(inside))),
                                      shape=(len(profiles), stop - start))
            sums[profiles] += indicator @ block
        return _finite(sums, path, where, counts)


def _scatter_add(target: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray):
    """target[rows, cols] += values in place, repeated (row, col) pairs adding up; target: C-contiguous float64.

    scipy's compiled COO-to-dense kernel does exactly this in one pass without a temporary; np.add.at is the
    (slower) fallback should that private kernel move.
    """
    if _coo_todense is not None:
        index = np.int32 if max(target.shape) < 2 ** 31 - 1 else np.int64
        _coo_todense(target.shape[0], target.shape[1], len(values), rows.astype(index, copy=False),
                     cols.astype(index, copy=False), values.astype(target.dtype, copy=False), target.reshape(-1), 0)
    else:
        np.add.at(target, (rows, cols), values)


def _finite(sums: np.ndarray, path, where: str, counts: bool = False) -> np.ndarray:
    if not np.isfinite(sums).all():
        raise SourceError(path, f"{where} holds NaN or infinite values")
    if counts:  # sums of counts are integers; a non-integer value outside the checked samples shows here
        for start in range(0, sums.shape[0], 256):
            block = sums[start:start + 256]
            bad = block != np.floor(block)
            if bad.any():
                _not_counts(path, where, block[bad][0])
    return sums


# ------------------------------------------------------------------------------------------ profiles

def normalize_counts(sums: np.ndarray, genes=slice(None), dtype=np.float32, totals=None) -> np.ndarray:
    """log1p(counts per 10k) of each profile (totals over all genes) for the columns `genes`."""
    totals = sums.sum(axis=1) if totals is None else totals
    scale = COUNTS_PER / np.where(totals > 0, totals, 1.0)
    return np.log1p(sums[:, genes] * scale[:, None]).astype(dtype, copy=False)


def variability_rank(X: np.ndarray, transform=None) -> np.ndarray:
    """Rank of each gene by its variance across the rows of X (0 = most variable; ties in gene order).

    transform(columns) -> the values of those columns, when X itself is not the expression (e.g. counts that
    are normalised a block of genes at a time, so that no normalised copy of all genes is held).
    """
    blocks = [slice(start, start + GENE_BLOCK) for start in range(0, X.shape[1], GENE_BLOCK)]
    variance = np.concatenate([np.asarray(transform(b) if transform else X[:, b], dtype=np.float64).var(axis=0)
                               for b in blocks]) if blocks else np.empty(0)
    rank = np.empty(X.shape[1], dtype=np.int64)
    rank[np.argsort(-variance, kind="stable")] = np.arange(X.shape[1])
    return rank


def condition_indicator(profiles: pd.DataFrame) -> sp.csr_matrix:
    """conditions x profiles 0/1 matrix: which profiles (replicates) make up each perturbation x cell type x
    condition; indicator @ sums adds a condition's replicates up to all its cells."""
    codes = profiles.groupby(["perturbation", "cell_type", "condition"], sort=True, observed=True).ngroup().to_numpy()
    return sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(codes.max() + 1, len(codes)))


def measured_targets(symbols, profiles: pd.DataFrame) -> np.ndarray:
    targets = {t for p in pd.unique(profiles["perturbation"]) for t in split_targets(p)}
    return pd.Index(symbols).isin(targets)


def select_genes(rank: np.ndarray, symbols, profiles: pd.DataFrame, n_top_genes: int) -> np.ndarray:
    """Boolean mask: the `n_top_genes` most variable genes plus every measured target gene (0 = all genes)."""
    if not n_top_genes or n_top_genes >= len(rank):
        return np.ones(len(rank), dtype=bool)
    return (rank < n_top_genes) | measured_targets(symbols, profiles)


def gene_selection_text(n_source: int, n_top_genes: int, keep: np.ndarray, n_targets_added: int) -> str:
    if keep.all():
        return f"all {n_source} genes of the source (no selection by the loader)"
    return (f"{int(keep.sum())} of {n_source} genes: the {n_top_genes} most variable across condition means "
            "(log-normalised expression of each perturbation x cell type x condition over all its cells, every "
            "condition of the dataset counted once, controls included; the same genes for every split and fold) "
            f"plus {n_targets_added} measured target genes outside them")


def pseudobulk(path, cells: pd.DataFrame, *, values: str, seed: int, min_cells: int, n_top_genes: int,
               genes: pd.DataFrame, uns: dict, layer: str | None = None, log=print, chunk_nnz: int | None = None,
               cells_output: str | None = None, cells_options: dict | None = None):
    """The common dataset (AnnData) of a cell-level source.

    values: 'counts' (raw UMI counts: profiles are summed counts, X = log1p(cp10k), layers['counts'] kept) or
    'log' (log-normalised cells: X = mean of the cells' values, no counts layer). genes: `gene_table(path)`.
    cells: `harmonize_cells(...)`; with a `replicate` column profiles follow its labels (see profiles.py).
    uns: dataset metadata (dataset_id, ... normalization_id, replicate_column); the replicate and QC fields
    (replicate_kind, n_replicates, min_cells_per_half, n_conditions_too_few_cells, gene_selection) are added.
    cells_output: also write the dataset cells file there (`cell_files.write_source_cells`; cells_options:
    max_cells, max_control, seed), with the same genes and profile labels.
    Raises SourceError / ValueError with a message.
    """
    import anndata as ad

    if values not in ("counts", "log"):
        raise ValueError(f"values must be 'counts' or 'log', not {values!r}")
    try:
        codes, profiles = assign_profiles(cells, seed=seed, min_cells=min_cells, log=log)
    except ValueError as error:
        raise SourceError(path, str(error)) from None
    facts, profiles.attrs = dict(profiles.attrs), {}
    if not profiles["is_control"].any():
        raise SourceError(path, f"no control condition has at least {facts['min_cells_per_half']} cells in each of "
                                "two replicates (lower --min_cells_per_half?)")
    contexts = profiles.groupby(["cell_type", "condition"])["is_control"].any()
    if not contexts.all():
        log(f"[warning] no control profiles in {', '.join('/'.join(c) for c in contexts.index[~contexts])}")
    sums = stream_sums(path, codes, len(profiles), layer=layer, counts=values == "counts", chunk_nnz=chunk_nnz)
    if len(genes) != sums.shape[1]:
        raise SourceError(path, f"var has {len(genes)} genes but the matrix has {sums.shape[1]} columns")
    # Genes are ranked on condition means (replicates added up), so that neither replicate batch effects nor
    # a condition's number of replicates weighs in. Memory: only the float64 sums for all genes; normalised
    # values are made a block of genes at a time.
    indicator = condition_indicator(profiles)
    counts = None
    if values == "counts":
        totals = sums.sum(axis=1)
        if (totals == 0).any():
            raise SourceError(path, f"{int((totals == 0).sum())} profile(s) have no counts at all "
                                    f"(e.g. {profiles.index[totals == 0][0]})")
        condition_totals = indicator @ totals

        def condition_values(matrix, columns):
            return normalize_counts(indicator @ matrix[:, columns], dtype=np.float64, totals=condition_totals)
        source_rank = variability_rank(sums, lambda columns: condition_values(sums, columns))
        keep = select_genes(source_rank, genes["symbol"], profiles, n_top_genes)
        X = normalize_counts(sums, np.flatnonzero(keep), totals=totals)
        counts = sums[:, keep]
        rank = variability_rank(counts, lambda columns: condition_values(counts, columns))
    else:
        condition_cells = indicator @ profiles["n_cells"].to_numpy(dtype=np.float64)

        def condition_values(matrix, columns):  # matrix: sums of the cells' log values
            return (indicator @ matrix[:, columns]) / condition_cells[:, None]
        source_rank = variability_rank(sums, lambda columns: condition_values(sums, columns))
        keep = select_genes(source_rank, genes["symbol"], profiles, n_top_genes)
        kept_sums = sums[:, keep]
        rank = variability_rank(kept_sums, lambda columns: condition_values(kept_sums, columns))
        X = np.ascontiguousarray(kept_sums / profiles["n_cells"].to_numpy()[:, None], dtype=np.float32)
        del kept_sums
    del sums
    n_targets_added = int((keep & (source_rank >= n_top_genes)).sum())
    var = pd.DataFrame({"highly_variable_rank": rank, "mean_expression": X.mean(axis=0, dtype=np.float64)},
                       index=pd.Index(genes["symbol"].to_numpy()[keep], dtype=object))
    if genes["gene_id"].notna().any():
        var.insert(0, "gene_id", genes["gene_id"].astype(object).where(genes["gene_id"].notna(), "").to_numpy()[keep])
    layers = {}
    if counts is not None:  # float32 holds integers exactly below 2^24
        layers["counts"] = counts.astype(np.float32 if counts.max(initial=0) < 2 ** 24 else np.float64)
    left_out = facts["left_out"]
    uns = {**uns, "replicate_kind": facts["replicate_kind"],
           "n_replicates": int(profiles["replicate"].nunique()),
           "min_cells_per_half": int(facts["min_cells_per_half"]),
           "n_conditions_too_few_cells": int(left_out["n_conditions"]),
           "n_cells_too_few_cells": int(left_out["n_cells"]),
           "n_replicate_profiles_too_few_cells": int(left_out["n_replicate_profiles"]),
           "gene_selection": gene_selection_text(len(genes), n_top_genes, keep, n_targets_added)}
    uns.setdefault("replicate_column", "none")
    adata = ad.AnnData(X=X, obs=profiles, var=var, uns=uns, layers=layers)
    if cells_output:
        from cell_files import write_source_cells

        write_source_cells(path, cells_output, codes=codes, profiles=profiles, keep=keep, var=var[[c for c in ("gene_id",)
                           if c in var.columns]], values=values, layer=layer, log=log, **(cells_options or {}),
                           uns={key: uns[key] for key in ("dataset_id", "normalization_id") if key in uns})
    log(f"{uns.get('dataset_id', 'dataset')}: {adata.n_obs} profiles x {adata.n_vars} genes "
        f"(of {len(genes)}; {int((codes >= 0).sum())} cells used; replicates: {uns['replicate_kind']}, "
        f"{uns['n_replicates']} labels)")
    return adata
