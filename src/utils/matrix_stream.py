"""Streaming of an h5ad cell matrix (X or a layer; CSR, CSC or dense) into per-profile sums, in bounded memory.

Included as a viash resource by the dataset loaders beside `pseudobulk.py` (which re-exports `stream_sums`,
`matrix_layout` and `SourceError`); needs numpy, scipy and h5py.

How it stays small: the cell matrix is never loaded. `stream_sums` reads `X` with h5py in blocks of stored
values (CSR: blocks of cells, CSC: blocks of genes, dense: blocks of cells) and adds each block into a
(profiles x genes) float64 accumulator: the product indicator(profiles x cells of the block) @ block,
computed for sparse blocks as a scatter-add of the block's values into their profile's row, cells grouped by
profile first (scipy's general sparse product builds a dense-sized sparse result per block and was 5-10x
slower). Blocks shrink so that accumulator plus block stay within MEMORY_BUDGET: peak memory does not grow
with the number of cells. The same pass can return each cell's total over all genes (`cell_totals`), and a
second pass can sum log1p(value x a per-cell factor) instead of the values (`cell_scale`): with the factor
1e4 / total that is the per-cell log1p(cp10k) that count profiles average (`log_cp10k_cell_mean`); zeros
stay zeros under log1p, so sparse blocks stay sparse. Problems of the source raise `SourceError`, whose
message names the file and the problem.
"""
from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

try:  # compiled kernels behind scipy's coo/csr_matrix.toarray() (they add into a dense array) and csr[rows]
    from scipy.sparse._sparsetools import coo_todense as _coo_todense
    from scipy.sparse._sparsetools import csr_row_index as _csr_row_index
    from scipy.sparse._sparsetools import csr_todense as _csr_todense
except ImportError:  # pragma: no cover - private API; the numpy fallbacks below are slower but equal
    _coo_todense = _csr_row_index = _csr_todense = None

from profiles import SourceError

try:  # ISA-L's inflate for shuffle+deflate chunks (~3x HDF5's zlib filter: most of a genome-scale loader's read)
    import deflate_chunks
except ImportError:  # a loader that does not ship it reads through h5py as before
    deflate_chunks = None


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
CHUNK_ROWS = 200_000

def _open(path):
    import h5py

    path = str(path)
    if not os.path.exists(path):
        raise SourceError(path, "file does not exist")
    if os.path.isdir(path):
        raise SourceError(path, "is a directory, expected an .h5ad file")
    if not os.path.isfile(path):  # reading a FIFO would block, a device never ends
        raise SourceError(path, "is not a regular file (a device, pipe or socket), expected an .h5ad file")
    if os.path.getsize(path) == 0:
        raise SourceError(path, "file is empty (0 bytes), expected an .h5ad file")
    with open(path, "rb") as handle:
        if handle.read(8) != HDF5_SIGNATURE:
            raise SourceError(path, "not an HDF5/h5ad file (no HDF5 signature)")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise SourceError(path, f"cannot be opened as HDF5 ({error})") from None


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
        self.readers = {}

    def get(self, name: str, size: int, dtype) -> np.ndarray:
        array = self.arrays.get(name)
        if array is None or array.size < size or array.dtype != np.dtype(dtype):
            array = self.arrays[name] = np.empty(max(size, 1), dtype=dtype)
        return array[:size]

    def reader(self, dataset):
        """A deflate_chunks.Reader of the dataset when it can decode its chunks, else None (one per dataset)."""
        if dataset.name not in self.readers:
            reader = deflate_chunks.Reader(dataset) if deflate_chunks is not None and dataset.ndim == 1 else None
            self.readers[dataset.name] = reader if reader is not None and reader.filters is not None else None
        return self.readers[dataset.name]


def _read(dataset, low: int, high: int, out: np.ndarray, buffers: _Buffers | None = None) -> np.ndarray:
    """dataset[low:high] into `out` (converted to its dtype), without a temporary where h5py reads it."""
    if high > low:
        reader = buffers.reader(dataset) if buffers is not None else None
        if reader is not None:
            out[...] = reader.range(low, high)
        else:
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
                chunk_nnz: int | None = None, chunk_rows: int = CHUNK_ROWS, cell_totals: bool = False,
                cell_scale: np.ndarray | None = None, held_bytes: int = 0, log=None):
    """Per-profile sums of the matrix (n_profiles x n_genes, float64); cells with code -1 are skipped.

    counts=True checks that every stored value is a non-negative integer (raw counts). CSR blocks of cells
    are grouped by profile before the scatter-add, so that consecutive additions hit the same accumulator
    row (several times faster than adding cells in file order); CSC blocks of genes are added into a
    genes x profiles accumulator for the same reason. chunk_nnz (stored values per block) defaults to what
    fits beside the accumulator (and `held_bytes` the caller already holds) in MEMORY_BUDGET.
    cell_totals=True: returns (sums, totals), totals = each cell's sum over all genes (float64, one per row of
    the matrix; 0 for the cells of CSR or dense blocks that hold no cell of a profile, which are not read).
    cell_scale (one factor per row of the matrix): the sums are of log1p(value x the cell's factor) instead.
    """
    try:
        return _stream_sums(path, np.asarray(codes, dtype=np.int64), n_profiles, layer, counts, chunk_nnz, chunk_rows,
                            cell_totals, cell_scale, held_bytes)
    except (OSError, ValueError, KeyError) as error:  # a damaged file (truncated download, broken chunks)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SourceError(path, f"cannot read the expression matrix ({detail})") from None


def _log_scaled(values: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """log1p(values x factors) in place (values: a float64 work buffer)."""
    np.multiply(values, factors, out=values)
    return np.log1p(values, out=values)


def _stream_sums(path, codes, n_profiles, layer, counts, chunk_nnz, chunk_rows, want_totals, cell_scale, held_bytes):
    buffers = _Buffers()

    def check(values):
        if counts:
            _check_counts(values, path, where)

    with _open(path) as handle:
        kind, (n_cells, n_genes), node = matrix_layout(handle, path, layer)
        where = f"layers['{layer}']" if layer else "X"
        if n_cells != len(codes):
            raise SourceError(path, f"{where} has {n_cells} rows but obs has {len(codes)} cells")
        if cell_scale is not None and len(cell_scale) != n_cells:
            raise ValueError(f"cell_scale has {len(cell_scale)} factors for {n_cells} cells")
        if chunk_nnz is None:  # a per-value factor, or the running sum of the totals, costs 8 bytes more per value
            spare = MEMORY_BUDGET - 8 * n_profiles * n_genes - held_bytes
            per_value = BYTES_PER_VALUE + (8 if cell_scale is not None else 0) + (8 if want_totals else 0)
            chunk_nnz = int(min(CHUNK_NNZ, max(MIN_CHUNK_NNZ, spare // per_value)))
        totals = np.zeros(n_cells, dtype=np.float64) if want_totals else None

        def result(sums):
            sums = _finite(sums, path, where, counts)
            return (sums, totals) if want_totals else sums
        if kind == "csr":
            sums = np.zeros((n_profiles, n_genes), dtype=np.float64)
            indptr = node["indptr"][:].astype(np.int64)
            for start, stop in _blocks(indptr, chunk_nnz, chunk_rows):
                if not (codes[start:stop] >= 0).any():
                    continue
                low, high = int(indptr[start]), int(indptr[stop])
                data = _read(node["data"], low, high, buffers.get("data", high - low, np.float64), buffers)
                indices = _read(node["indices"], low, high, buffers.get("indices", high - low, np.int32), buffers)
                check(data)
                block_indptr = indptr[start:stop + 1] - low
                if totals is not None:  # each cell's values are consecutive: one sum per non-empty cell
                    filled = np.flatnonzero(np.diff(block_indptr) > 0)
                    totals[start:stop] = 0.0
                    if len(filled):
                        totals[start + filled] = np.add.reduceat(data, block_indptr[filled])
                if cell_scale is not None:
                    _log_scaled(data, np.repeat(cell_scale[start:stop], np.diff(block_indptr)))
                _csr_block_sums(sums, data, indices, block_indptr, codes[start:stop], buffers)
            return result(sums)
        if kind == "csc":
            # genes x profiles, plus a last column that collects the left-out cells (code -1) unread
            sums_t = np.zeros((n_genes, n_profiles + 1), dtype=np.float64)
            profile_of_cell = np.where(codes >= 0, codes, n_profiles).astype(np.int32)
            indptr = node["indptr"][:].astype(np.int64)
            for start, stop in _blocks(indptr, chunk_nnz, n_genes):
                low, high = int(indptr[start]), int(indptr[stop])
                data = _read(node["data"], low, high, buffers.get("data", high - low, np.float64), buffers)
                check(data)
                cells = _read(node["indices"], low, high, buffers.get("indices", high - low, np.int32), buffers)
                if totals is not None:
                    totals += np.bincount(cells, weights=data, minlength=n_cells)
                if cell_scale is not None:
                    _log_scaled(data, cell_scale[cells])
                profile = np.take(profile_of_cell, cells, out=buffers.get("profile", high - low, np.int32))
                block_indptr = indptr[start:stop + 1] - low
                if _csr_todense is not None:  # each gene's values added into its row, at their profiles
                    _csr_todense(stop - start, n_profiles + 1, block_indptr.astype(np.int32), profile, data,
                                 sums_t[start:stop].reshape(-1))
                else:
                    genes = np.repeat(np.arange(start, stop), np.diff(block_indptr))
                    _scatter_add(sums_t, genes, profile, data)
            return result(np.ascontiguousarray(sums_t[:, :n_profiles].T))
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
            if totals is not None:
                totals[start:stop] = block.sum(axis=1)
            if cell_scale is not None:
                _log_scaled(block, cell_scale[start:stop, None])
            profiles, local = _present(block_codes[inside], n_profiles)
            indicator = sp.csr_matrix((np.ones(len(local)), (local, np.flatnonzero(inside))),
                                      shape=(len(profiles), stop - start))
            sums[profiles] += indicator @ block
        return result(sums)


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
