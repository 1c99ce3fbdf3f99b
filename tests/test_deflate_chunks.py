"""src/utils/deflate_chunks.py: chunks written and read outside HDF5's filter pipeline are exactly HDF5's.

What must hold: every reader that decodes HDF5's shuffle + deflate filters (h5py, anndata, R's hdf5r) reads
a file written here as the values appended; reading here gives what h5py gives, for files written by h5py's
own filters too (and for layouts it cannot read directly: it falls back); the result does not depend on
which deflate implementation (ISA-L or zlib) wrote or reads a chunk.
"""
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src" / "utils"))
import deflate_chunks as dc  # noqa: E402


def _appended(path, pieces, dtype):
    import h5py

    with h5py.File(path, "w") as handle:
        appender = dc.Appender(dc.create(handle, "values", dtype))
        for piece in pieces:
            appender.append(piece)
        assert appender.size == sum(len(piece) for piece in pieces)
        appender.close()


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
def test_appended_values_read_back_through_hdf5s_own_filters(tmp_path, dtype):
    import h5py

    rng = np.random.default_rng(0)
    chunk = dc.CHUNK_BYTES // np.dtype(dtype).itemsize
    # pieces that end inside a chunk, on a chunk's edge, span several chunks, and an empty one
    sizes = [10, chunk - 10, 1, 3 * chunk + 7, 0, chunk, 5]
    pieces = [(rng.random(n) * 1000).astype(dtype) for n in sizes]
    _appended(tmp_path / "a.h5", pieces, dtype)
    with h5py.File(tmp_path / "a.h5") as handle:
        dataset = handle["values"]
        assert (dataset.compression, dataset.compression_opts, dataset.shuffle) == ("gzip", dc.LEVEL, True)
        assert np.array_equal(dataset[:], np.concatenate(pieces))  # HDF5 decodes every chunk


def test_dense_rows_read_back_through_hdf5_and_by_rows(tmp_path):
    import h5py

    rng = np.random.default_rng(1)
    matrix = (rng.poisson(0.3, (1001, 300))).astype(np.float32)  # 1,001 rows: the last chunk is partial
    with h5py.File(tmp_path / "m.h5", "w") as handle:
        dc.write_rows(dc.create(handle, "m", np.float32, shape=matrix.shape), matrix)
    with h5py.File(tmp_path / "m.h5") as handle:
        assert np.array_equal(handle["m"][:], matrix)
        dense = dc.DenseOnDisk(handle["m"])
        rows = np.array([0, 1, 217, 218, 999, 1000])
        assert np.array_equal(dense[rows], matrix[rows])
        assert np.array_equal(dense[3:900], matrix[3:900]) and dense[5:5].shape == (0, 300)


def test_ranges_read_here_equal_h5pys_for_files_h5py_wrote(tmp_path):
    """A file written by HDF5's own filters (a lab's, anndata's) is read chunk by chunk as well; other
    layouts (no filter, gzip without shuffle, a contiguous dataset) equal h5py's reading."""
    import h5py

    values = np.arange(200_003, dtype=np.int32) * 7
    with h5py.File(tmp_path / "h.h5", "w") as handle:
        handle.create_dataset("shuffled", data=values, chunks=(1000,), compression="gzip", shuffle=True)
        handle.create_dataset("gzip", data=values, chunks=(999,), compression="gzip")
        handle.create_dataset("lzf", data=values, chunks=(1000,), compression="lzf")
        handle.create_dataset("plain", data=values)
    with h5py.File(tmp_path / "h.h5") as handle:
        for name, filters in (("shuffled", (True,)), ("gzip", (False,)), ("lzf", None), ("plain", None)):
            reader = dc.Reader(handle[name])
            assert reader.filters == filters, name
            for low, high in ((0, 1), (998, 2001), (5, 200_003), (199_999, 200_003), (7, 7)):
                assert np.array_equal(reader.range(low, high), values[low:high]), (name, low, high)


def test_chunks_do_not_depend_on_the_deflate_implementation(tmp_path, monkeypatch):
    """Python's zlib (no isal) writes streams the other reads, and the other way round."""
    import h5py

    values = np.random.default_rng(2).random(300_000).astype(np.float32)
    _appended(tmp_path / "fast.h5", [values], np.float32)
    monkeypatch.setattr(dc, "_deflate", zlib)
    _appended(tmp_path / "zlib.h5", [values], np.float32)
    for name in ("fast.h5", "zlib.h5"):
        with h5py.File(tmp_path / name) as handle:
            assert np.array_equal(dc.Reader(handle["values"]).range(0, len(values)), values)
            assert np.array_equal(handle["values"][:], values)


def test_csr_rows_on_disk_equal_the_matrix_in_memory(tmp_path):
    import anndata as ad
    import h5py
    import scipy.sparse as sp

    dense = sp.random(3000, 400, density=0.3, random_state=3, format="csr", dtype=np.float32).toarray()
    dense[100:110] = 0  # empty rows
    matrix = sp.csr_matrix(dense)
    ad.AnnData(X=matrix).write_h5ad(tmp_path / "c.h5ad", compression="gzip")
    rng = np.random.default_rng(4)
    with h5py.File(tmp_path / "c.h5ad") as handle:
        csr = dc.CsrOnDisk(handle["X"])
        for rows in (np.sort(rng.choice(3000, 700, replace=False)), np.arange(95, 120), np.array([2999]),
                     np.array([0, 2999]), np.array([], dtype=np.int64)):
            got = csr.rows(rows)
            assert got.shape == (len(rows), 400) and (got != matrix[rows]).nnz == 0
        assert (csr[10:2000] != matrix[10:2000]).nnz == 0
        assert np.array_equal(np.concatenate(list(csr.value_blocks(512))), matrix.data)


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not on PATH (scripts/install_r.sh installs R)")
def test_r_reads_what_was_written_here(tmp_path):
    """R components read cells and compressed matrices with hdf5r (src/utils/anndata_h5.R)."""
    import h5py

    values = (np.arange(150_000) % 97).astype(np.float32)
    matrix = np.arange(600 * 50, dtype=np.float32).reshape(600, 50) % 13
    with h5py.File(tmp_path / "r.h5", "w") as handle:
        appender = dc.Appender(dc.create(handle, "values", np.float32))
        appender.append(values)
        appender.close()
        dc.write_rows(dc.create(handle, "m", np.float32, shape=matrix.shape), matrix)
    script = (f'library(hdf5r); f <- H5File$new("{tmp_path / "r.h5"}", mode = "r"); v <- f[["values"]]$read(); '
              'm <- f[["m"]]$read(); cat(length(v), sum(v), v[149999], dim(m), sum(m), m[7, 3], "\\n")')
    result = subprocess.run(["Rscript", "-e", script], check=True, capture_output=True, text=True)
    # hdf5r gives the matrix transposed (genes x rows): R is column-major
    assert result.stdout.split() == [str(len(values)), f"{values.sum():.0f}", f"{values[149998]:.0f}", "50", "600",
                                     f"{matrix.sum():.0f}", f"{matrix[2, 6]:.0f}"]


@pytest.mark.parametrize("breaks_at", [None, 0, 2])
def test_a_layer_with_xs_structure_shares_it_and_one_that_breaks_it_gets_its_own(tmp_path, breaks_at):
    """cell_files.StreamingCellWriter: counts with X's non-zeros store only their values (hard links to X's
    indices and indptr); a block whose non-zeros differ (here: a count of 0 stored explicitly) gives the layer
    its own copy of X's structure so far. Read back, every matrix equals what was appended."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from cell_files import StreamingCellWriter

    rng = np.random.default_rng(5)
    blocks = [sp.random(n, 300, density=0.2, random_state=i, format="csr", dtype=np.float32) * 20
              for i, n in enumerate((1500, 1, 900, 400))]  # 90k values: chunks written before a break
    counts = [sp.csr_matrix(np.ceil(block.toarray())) for block in blocks]
    logs = [block.copy() for block in counts]
    for block in logs:
        block.data = np.log1p(block.data)
    if breaks_at is not None:  # an explicit zero in the counts: same values, another structure
        counts[breaks_at] = counts[breaks_at].tocoo()
        counts[breaks_at] = sp.csr_matrix((np.append(counts[breaks_at].data, 0.0), (np.append(counts[breaks_at].row, 0),
                                           np.append(counts[breaks_at].col, 299))), shape=counts[breaks_at].shape)
        counts[breaks_at].sum_duplicates()
    writer = StreamingCellWriter(tmp_path / "cells.h5ad", 300, layers=("counts",))
    for X, raw in zip(logs, counts):
        writer.append(X, counts=raw)
    n = sum(block.shape[0] for block in blocks)
    writer.finish(pd.DataFrame(index=[f"c{i}" for i in range(n)]), pd.DataFrame(index=[f"g{j}" for j in range(300)]), {})
    with h5py.File(tmp_path / "cells.h5ad") as handle:
        linked = handle["X/indices"] == handle["layers/counts/indices"]
    assert linked == (breaks_at is None)
    back = ad.read_h5ad(tmp_path / "cells.h5ad")
    expected_counts = sp.vstack(counts, format="csr")
    assert (back.X != sp.vstack(logs, format="csr")).nnz == 0
    assert (back.layers["counts"] != expected_counts).nnz == 0
    assert np.array_equal(back.layers["counts"].indptr, expected_counts.indptr)
    assert np.array_equal(back.layers["counts"].indices, expected_counts.indices)
