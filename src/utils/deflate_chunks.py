"""HDF5 datasets stored with the shuffle + deflate filters (`component_io.COMPRESSION`), written and read chunk
by chunk here instead of through HDF5's filter pipeline.

Why: at genome scale compressing and decompressing cells files is most of a split's and a cell-level step's
time, and HDF5 runs its filters with zlib. The chunks written here are exactly what HDF5's filters write
(the bytes of a chunk shuffled, then a zlib stream), so every HDF5 reader (h5py, anndata, R's hdf5r) reads
them as before; only the deflate implementation differs: ISA-L's (`isal`, when it is installed). Measured by
`benchmarks/deflate.py` on 64 chunks of each matrix of the genome-scale simulated cells file (one core, load ~4):
log-normalised values compressed at 87 -> 378 MB/s (ratio 3.31 -> 3.24), column indices 112 -> 1,098 MB/s (4.76
-> 3.97), counts 105 -> 764 MB/s (7.46 -> 8.01); inflated 1.8-2.5x faster. Without isal
the same code runs with Python's zlib (the speed of HDF5's own filter).

- `create`: a resizable 1-d dataset (or a fixed 2-d one) with HDF5's filters declared.
- `Appender`: values appended to such a 1-d dataset; full chunks are compressed and written as they fill.
- `write_rows`: a dense 2-d matrix into a dataset chunked by whole rows.
- `Reader`: a range of a 1-d dataset, or rows of a 2-d one, decoding each chunk once (the last one kept).
  Datasets with other filters or layouts are read through h5py as before.
- `CsrOnDisk`, `DenseOnDisk`: a matrix of an h5ad file left on disk (formats.LazyAnnData), rows read by spans.
"""
from __future__ import annotations

import numpy as np

try:
    from isal import isal_zlib as _deflate
except ImportError:  # optional accelerator: Python's zlib writes and reads the same streams
    import zlib as _deflate

LEVEL = 1                    # as component_io.COMPRESSION
SHUFFLE, DEFLATE = 2, 1      # HDF5's filter ids (H5Z_FILTER_SHUFFLE, H5Z_FILTER_DEFLATE)
CHUNK_BYTES = 1 << 18        # 256 KiB: the chunk size cells files have always had (65,536 float32 values)


def create(group, name: str, dtype, shape=(0,), chunks=None):
    """A dataset with HDF5's shuffle and deflate filters; 1-d ones resizable (start empty and append)."""
    dtype = np.dtype(dtype)
    if len(shape) == 1:
        chunks = chunks or (max(1, CHUNK_BYTES // dtype.itemsize),)
        return group.create_dataset(name, shape=shape, maxshape=(None,), dtype=dtype, chunks=chunks,
                                    compression="gzip", compression_opts=LEVEL, shuffle=True)
    rows = max(1, min(shape[0], CHUNK_BYTES // max(1, shape[1] * dtype.itemsize)))
    return group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks or (rows, shape[1]),
                                compression="gzip", compression_opts=LEVEL, shuffle=True)


def _encode(chunk: np.ndarray) -> bytes:
    """A full chunk (contiguous) as HDF5's filters store it: bytes shuffled by significance, then deflated."""
    size = chunk.dtype.itemsize
    raw = chunk.reshape(-1).view(np.uint8)
    shuffled = raw.reshape(-1, size).T.tobytes() if size > 1 else raw.tobytes()
    return _deflate.compress(shuffled, LEVEL)


def _decode(stored: bytes, dtype: np.dtype, count: int, shuffled: bool, out: np.ndarray | None = None) -> np.ndarray:
    """A stored chunk's `count` values, written into `out` (contiguous, `count` values) when given."""
    raw = np.frombuffer(_deflate.decompress(stored), dtype=np.uint8)
    if out is None:
        out = np.empty(count, dtype=dtype)
    if shuffled and dtype.itemsize > 1:
        # a byte plane at a time, straight into place: one 2-d strided copy of the planes' transpose is ~5x
        # slower (numpy walks it byte by byte) and was a third of reading a cells file's chunks
        planes, place = raw.reshape(dtype.itemsize, count), out.view(np.uint8).reshape(count, dtype.itemsize)
        for byte in range(dtype.itemsize):
            place[:, byte] = planes[byte]
    else:
        out.view(np.uint8)[...] = raw
    return out


def _filters(dataset) -> tuple | None:
    """(shuffled,) when the dataset is chunked with exactly [shuffle,] deflate; None otherwise."""
    if dataset.chunks is None:
        return None
    plist = dataset.id.get_create_plist()
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if codes == [SHUFFLE, DEFLATE]:
        return (True,)
    if codes == [DEFLATE]:
        return (False,)
    return None


class Appender:
    """Appends to a 1-d dataset made by `create`: whole chunks are encoded here and written as stored
    chunks; `close` writes the last, partial one (padded with zeros, as HDF5 stores an edge chunk)."""

    def __init__(self, dataset):
        self.dataset, self.dtype = dataset, dataset.dtype
        self.chunk = int(dataset.chunks[0])
        self.written = int(dataset.shape[0])
        if self.written % self.chunk:
            raise ValueError("Appender needs a dataset whose length is a whole number of chunks")
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    @property
    def size(self) -> int:
        return self.written + self.n_pending

    def append(self, values):
        values = np.asarray(values, dtype=self.dtype).reshape(-1)
        if not len(values):
            return
        self.pending.append(values)
        self.n_pending += len(values)
        if self.n_pending >= self.chunk:
            buffer = np.concatenate(self.pending)
            full = (len(buffer) // self.chunk) * self.chunk
            self._write(buffer[:full], full)
            self.pending = [buffer[full:]] if full < len(buffer) else []
            self.n_pending = len(buffer) - full

    def _write(self, values: np.ndarray, length: int):
        """Chunks of `values` (a whole number of chunks, zero-padded) as the next `length` elements."""
        self.dataset.resize((self.written + length,))
        for start in range(0, len(values), self.chunk):
            self.dataset.id.write_direct_chunk((self.written + start,), _encode(values[start:start + self.chunk]))
        self.written += length

    def close(self):
        if self.n_pending:
            tail = np.zeros(self.chunk, dtype=self.dtype)
            tail[:self.n_pending] = np.concatenate(self.pending)
            self._write(tail, self.n_pending)
            self.pending, self.n_pending = [], 0


def write_rows(dataset, matrix: np.ndarray):
    """A dense matrix into a 2-d dataset made by `create` (chunks of whole rows; the last one zero-padded)."""
    rows = int(dataset.chunks[0])
    if dataset.chunks[1] != matrix.shape[1] or dataset.shape != matrix.shape:
        raise ValueError("write_rows needs a dataset of the matrix's shape, chunked by whole rows")
    for start in range(0, matrix.shape[0], rows):
        block = np.ascontiguousarray(matrix[start:start + rows], dtype=dataset.dtype)
        if len(block) < rows:
            block = np.concatenate([block, np.zeros((rows - len(block), matrix.shape[1]), dtype=dataset.dtype)])
        dataset.id.write_direct_chunk((start, 0), _encode(block))


class Reader:
    """Ranges of a 1-d dataset or rows of a 2-d one chunked by whole rows, each chunk decoded once in a row
    of requests that move forward (the last decoded chunk is kept)."""

    def __init__(self, dataset):
        self.dataset, self.dtype = dataset, dataset.dtype
        self.filters = _filters(dataset)
        if self.filters is not None and dataset.ndim == 2 and dataset.chunks[1] != dataset.shape[1]:
            self.filters = None
        self.chunk = int(dataset.chunks[0]) if dataset.chunks else 0
        self.width = int(dataset.shape[1]) if dataset.ndim == 2 else 1
        self.kept = (-1, None)

    def _stored(self, index: int):
        """The chunk's stored bytes, or None where HDF5 must decode it (a filter skipped, or never written)."""
        offset = (index * self.chunk,) + ((0,) if self.dataset.ndim == 2 else ())
        try:
            mask, stored = self.dataset.id.read_direct_chunk(offset)
        except (OSError, KeyError, ValueError):  # a chunk never written (fill value)
            return None
        return None if mask else stored

    def _chunk(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Chunk `index`'s values (zero-padded at the edge), into `out` when given (then not kept)."""
        if out is None and self.kept[0] == index:
            return self.kept[1]
        size = self.chunk * self.width
        stored = self._stored(index)
        if stored is None:
            values = np.zeros(size, dtype=self.dtype) if out is None else out
            start = index * self.chunk
            part = np.asarray(self.dataset[start:min(start + self.chunk, self.dataset.shape[0])]).reshape(-1)
            values[:len(part)] = part
        else:
            values = _decode(stored, self.dtype, size, self.filters[0], out)
        if out is None:
            self.kept = (index, values)
        return values

    def range(self, low: int, high: int) -> np.ndarray:
        """Elements [low, high) of a 1-d dataset (rows [low, high) of a 2-d one, flattened)."""
        low, high = int(low), int(high)
        if self.filters is None or high <= low:
            return np.asarray(self.dataset[low:high]).reshape(-1)
        out = np.empty((high - low) * self.width, dtype=self.dtype)
        for index in range(low // self.chunk, (high - 1) // self.chunk + 1):
            first, last = max(low, index * self.chunk), min(high, (index + 1) * self.chunk)
            target = out[(first - low) * self.width:(last - low) * self.width]
            if last - first == self.chunk:  # a whole chunk: decoded in place
                self._chunk(index, target)
            else:
                base = index * self.chunk
                target[...] = self._chunk(index)[(first - base) * self.width:(last - base) * self.width]
        return out

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (increasing) of a 2-d dataset, as a dense array."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.filters is None:
            return np.asarray(self.dataset[rows]) if len(rows) else np.asarray(self.dataset[0:0])
        out = np.empty((len(rows), self.width), dtype=self.dtype)
        chunk_of = rows // self.chunk
        indices, starts = np.unique(chunk_of, return_index=True)
        for index, start, stop in zip(indices, starts, np.append(starts[1:], len(rows))):
            values = self._chunk(int(index))
            out[start:stop] = values.reshape(self.chunk, self.width)[rows[start:stop] - index * self.chunk]
        return out


class CsrOnDisk:
    """A CSR matrix group of an h5ad file left on disk: `rows` and slices read through `Reader`s, so a chunk
    is decoded once per request however many of its rows are wanted (anndata's backed matrices read each
    requested row with its own h5py call, which decodes the row's chunk again)."""

    def __init__(self, group, shape=None):
        self.group = group
        self.shape = tuple(int(n) for n in (group.attrs["shape"] if shape is None else shape))
        self.dtype = group["data"].dtype
        self.indptr = group["indptr"][:].astype(np.int64)
        self.data, self.indices = Reader(group["data"]), Reader(group["indices"])

    def span(self, first: int, last: int, structure=None):
        """Rows [first, last) as a CSR matrix; `structure`: the span of a matrix whose indices and indptr
        this one shares (hard links, cell_files.StreamingCellWriter), so that only the values are read."""
        import scipy.sparse as sp

        low, high = int(self.indptr[first]), int(self.indptr[last])
        if structure is not None:
            return sp.csr_matrix((self.data.range(low, high), structure.indices, structure.indptr),
                                 shape=structure.shape)
        return sp.csr_matrix((self.data.range(low, high), self.indices.range(low, high),
                              self.indptr[first:last + 1] - low), shape=(last - first, self.shape[1]))

    def shares_structure_with(self, other: "CsrOnDisk") -> bool:
        """Whether both are stored with the same indices and indptr datasets (hard links)."""
        return self.group["indices"] == other.group["indices"] and self.group["indptr"] == other.group["indptr"]

    def __getitem__(self, index):
        if isinstance(index, slice) and index.step in (None, 1):
            first, last, _ = index.indices(self.shape[0])
            return self.span(first, max(first, last))
        return self.rows(np.asarray(index))

    def value_blocks(self, n_rows: int):
        """The stored values of each block of `n_rows` rows (what a scan of the values needs; no indices)."""
        for first in range(0, self.shape[0], n_rows):
            last = min(self.shape[0], first + n_rows)
            yield self.data.range(self.indptr[first], self.indptr[last])

    def rows(self, rows: np.ndarray):
        """Rows `rows` (increasing) as a CSR matrix. Requested rows whose stored values lie within a chunk of
        each other are read as one span, so each chunk is decoded once."""
        import scipy.sparse as sp

        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return sp.csr_matrix((0, self.shape[1]), dtype=self.dtype)
        gap = self.indptr[rows[1:]] - self.indptr[rows[:-1] + 1]
        breaks = np.flatnonzero(gap > self.data.chunk) + 1
        pieces = []
        for group in np.split(rows, breaks):
            span = self.span(int(group[0]), int(group[-1]) + 1)
            pieces.append(span[group - group[0]] if len(group) < span.shape[0] else span)
        return pieces[0] if len(pieces) == 1 else sp.vstack(pieces, format="csr")


class DenseOnDisk:
    """A dense 2-d dataset left on disk: slices and rows (increasing) read through a `Reader`."""

    def __init__(self, dataset):
        self.dataset, self.shape, self.dtype, self.ndim = dataset, tuple(dataset.shape), dataset.dtype, 2
        self.reader = Reader(dataset)

    def __getitem__(self, index):
        if isinstance(index, slice) and index.step in (None, 1):
            first, last, _ = index.indices(self.shape[0])
            last = max(first, last)
            return self.reader.range(first, last).reshape(last - first, self.shape[1])
        return self.reader.rows(np.asarray(index))
