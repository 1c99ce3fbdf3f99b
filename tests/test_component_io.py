"""`component_io`: the shared argument check, outputs that are inputs, write errors; `formats`: log-scale and
alignment checks."""
import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "src" / "utils"))
from component_io import number_argument  # noqa: E402


@pytest.mark.parametrize("given, kind, bounds, expected", [
    (None, int, {"low": 1}, 10),                      # unset: the default
    (3, int, {"low": 1}, 3),
    (0.0, float, {"low": 0.0}, 0.0),
    (0.5, float, {"low": 0.0, "high": 1.0, "high_open": True}, 0.5),
    (1, float, {"low": 0.0}, 1.0),                    # an integer is a number
])
def test_accepted_values(given, kind, bounds, expected):
    value = number_argument({"x": given}, "x", 10 if kind is int else 0.0, kind, **bounds)
    assert value == expected and type(value) is kind


@pytest.mark.parametrize("given, kind, bounds, message", [
    (0, int, {"low": 1}, "--x is 0, expected an integer >= 1"),
    (2.5, int, {"low": 1}, "--x is 2.5, expected an integer >= 1"),
    (True, int, {"low": 0}, "--x is True, expected an integer >= 0"),
    (float("nan"), float, {"low": 0.0}, "--x is nan, expected a number >= 0.0"),
    (1.0, float, {"low": 0.0, "high": 1.0, "high_open": True}, "--x is 1.0, expected a number >= 0.0 and < 1.0"),
    ("7", int, {}, "--x is '7', expected an integer"),
])
def test_refused_values_stop_with_one_line(capsys, given, kind, bounds, message):
    with pytest.raises(SystemExit) as stop:
        number_argument({"x": given}, "x", 1, kind, **bounds)
    assert stop.value.code == 1
    assert capsys.readouterr().err == f"[error] {message}\n"


# ------------------------------------------------------------------ the format checker's holes, closed

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

import formats  # noqa: E402
from component_io import ComponentIO  # noqa: E402

LOG_SCALE = {"type": "double", "log_normalized": True, "max_value": 50, "min_value": -50, "max_negative_mass": 0.5}


@pytest.mark.parametrize("X, fragment", [
    (np.array([[1, 2], [3, 4]], dtype=np.int64), "integer dtype int64"),          # counts stored as integers
    (np.array([[1000.0, 2.0], [3.0, 4.0]]), "reaches 1000, above 50"),
    (np.array([[-60.0, 45.0], [45.0, 45.0]]), "values down to -60, below -50"),
    (np.array([[-1.0, -2.0], [1.0, 2.0]]), "looks centred, scaled or log-fold-change: its negative values sum to 100%"),
    (np.array([[-1.0, -2.0], [0.0, 0.0]]), "sum to more than its positive ones"),
    (np.array([[np.nan, 1.0], [1.0, 1.0]]), "1 NaN values"),
])
def test_log_scale_problems(X, fragment):
    problems = formats._matrix_problems(X, "X", LOG_SCALE)
    assert len(problems) == 1 and fragment in problems[0], problems


def test_log_scale_accepts_the_negative_values_models_produce():
    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(2.0, 1.0, (20, 50)))
    X[rng.random(X.shape) < 0.8] = 0.0                           # most of a real screen is 0
    X[X == 0] = -np.abs(rng.normal(0.0, 0.02, int((X == 0).sum())))  # ~80% of entries slightly negative
    X[0, 0] = -6.1                                                  # ridge_regulators' extreme on Norman 2019
    assert formats._matrix_problems(X.astype(np.float32), "X", LOG_SCALE) == []


@pytest.mark.parametrize("names, expected, fragment", [
    (["a", "b", "b"], ["a", "b"], "not unique (e.g. ['b'] more than once)"),  # a duplicated row: lengths differ
    (["a", "a", "b"], ["a", "b", "c"], "not unique"),
    (["a", "b"], ["a", "b", "b"], "number 2, but --ref has 3"),                # the reference has duplicates
    (["b", "a"], ["a", "b"], "another order"),
])
def test_alignment_problems_with_duplicates_give_a_sentence(names, expected, fragment):
    problems = formats.alignment_problems(pd.Index(names), pd.Index(expected), "rows (obs_names)", "--ref")
    assert len(problems) == 1 and fragment in problems[0], problems


def _component_io(tmp_path, par):
    config = {"arguments": [{"name": "--input", "type": "file", "direction": "input"},
                            {"name": "--output", "type": "file", "direction": "output"},
                            {"name": "--output_b", "type": "file", "direction": "output"}]}
    (tmp_path / ".config.vsh.yaml").write_text(yaml.safe_dump(config))
    return ComponentIO(par, {"config": str(tmp_path / ".config.vsh.yaml")})


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink", "other_output"])
def test_an_output_that_is_an_input_is_refused(tmp_path, capsys, link):
    source = tmp_path / "in.h5ad"
    source.write_bytes(b"input")
    output = {"same": source, "symlink": tmp_path / "link.h5ad", "hardlink": tmp_path / "hard.h5ad",
              "other_output": tmp_path / "b.h5ad"}[link]
    if link == "symlink":
        output.symlink_to(source)
    elif link == "hardlink":
        os.link(source, output)
    par = {"input": str(source), "output": str(output), "output_b": str(tmp_path / "b.h5ad")}
    with pytest.raises(SystemExit):
        _component_io(tmp_path, par)
    other = "--output" if link == "other_output" else "--input"
    line = capsys.readouterr().err
    assert line.startswith("[error] ") and f"is the same file as {other}" in line and line.count("\n") == 1
    assert source.read_bytes() == b"input"


def test_a_write_error_leaves_no_output(tmp_path, capsys, monkeypatch):
    """The second output fails on write (a disk filling up): the first one is removed, one line names the path."""
    import component_io

    io = _component_io(tmp_path, {"input": None, "output": str(tmp_path / "a.h5ad"), "output_b": str(tmp_path / "b.h5ad")})
    real = component_io.write_h5ad_atomic

    def full_disk(adata, path):
        if path.endswith("b.h5ad"):
            raise OSError(28, "No space left on device")
        real(adata, path)
    monkeypatch.setattr(component_io, "write_h5ad_atomic", full_disk)
    adata = ad.AnnData(X=np.ones((2, 2), dtype=np.float32))
    with pytest.raises(SystemExit):
        io.write_all({"output": adata, "output_b": adata})
    assert capsys.readouterr().err == f"[error] cannot write --output_b to '{tmp_path / 'b.h5ad'}': No space left on device\n"
    assert not (tmp_path / "a.h5ad").exists() and not list(tmp_path.glob(".partial-*"))


def test_large_sparse_and_count_matrices_are_stored_compressed_and_read_back_equal(tmp_path):
    """Sparse matrices of >= 1 MiB and dense ones that compress at least 2x (counts, repeated rows) are
    gzip-compressed (component_io.COMPRESSION); continuous dense values and small matrices are not; every
    element reads back as anndata wrote it."""
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from component_io import storage_options, write_h5ad_atomic

    rng = np.random.default_rng(0)
    n_obs, n_vars = 2000, 600
    counts = rng.poisson(2.0, (n_obs, n_vars)).astype(np.float32)          # 4.8 MB, integer-valued
    logged = rng.gamma(2.0, 1.0, (n_obs, n_vars)).astype(np.float32)      # continuous: ~1.2x, stored raw
    control = np.repeat(logged[:1], n_obs, axis=0)                           # one profile per row: ~30x
    adata = ad.AnnData(X=sp.csr_matrix(logged * (rng.random((n_obs, n_vars)) < 0.5)),
                       obs=pd.DataFrame({"perturbation": rng.choice(["A", "B"], n_obs)},
                                        index=[f"cell{i}" for i in range(n_obs)]),
                       layers={"counts": counts, "logged": logged, "control": control},
                       uns={"dataset_id": "d", "n": 3})
    path = tmp_path / "out.h5ad"
    reference = tmp_path / "reference.h5ad"
    write_h5ad_atomic(adata, str(path))
    adata.write_h5ad(reference)
    with h5py.File(path) as handle:
        stored = {name: handle[name].compression for name in
                  ("X/data", "X/indices", "layers/counts", "layers/logged", "layers/control")}
    assert stored == {"X/data": "gzip", "X/indices": "gzip", "layers/counts": "gzip", "layers/logged": None,
                      "layers/control": "gzip"}
    assert storage_options(counts[:400]) == {}  # 960 kB: under the threshold
    assert path.stat().st_size < 0.7 * reference.stat().st_size
    back, expected = ad.read_h5ad(path), ad.read_h5ad(reference)
    assert (back.X != expected.X).nnz == 0
    for name in expected.layers:
        assert np.array_equal(back.layers[name], expected.layers[name])
    pd.testing.assert_frame_equal(back.obs, expected.obs)
    assert dict(back.uns) == dict(expected.uns)


def test_a_lazy_read_checks_the_matrices_as_a_full_read_does(tmp_path):
    """formats.LazyAnnData: matrices stay on disk, scanned block by block; the same problems, the same words."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp
    from formats import check_anndata, read_h5ad, read_h5ad_lazy

    X = sp.random(5000, 30, density=0.2, random_state=0, format="csr", dtype=np.float32)
    X.data[-1] = np.nan  # in the last block of rows
    ad.AnnData(X=X, layers={"counts": X.copy()}).write_h5ad(tmp_path / "cells.h5ad")
    spec = {"X": {"type": "double", "required": True}, "layers": [{"name": "counts", "type": "double"}]}
    lazy, full = read_h5ad_lazy(str(tmp_path / "cells.h5ad")), read_h5ad(str(tmp_path / "cells.h5ad"))
    problems = check_anndata(lazy, spec)
    assert problems == check_anndata(full, spec) and len(problems) == 2 and "NaN" in problems[0]
    assert lazy.n_obs == 5000 and np.array_equal(lazy.rows([4999, 0], "counts").toarray(),
                                                 full.layers["counts"][[4999, 0]].toarray(), equal_nan=True)


def test_a_lazy_file_found_conforming_is_not_scanned_again_until_it_changes(tmp_path, monkeypatch):
    """The scripts of a worker session read the same training cells once per prediction: one scan per file."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    import component_io

    path = tmp_path / "cells.h5ad"
    ad.AnnData(X=sp.random(50, 8, density=0.5, random_state=0, format="csr", dtype=np.float32)).write_h5ad(path)
    scans = []
    monkeypatch.setattr(component_io, "check_anndata", lambda adata, spec: scans.append(spec) or [])
    io = component_io.ComponentIO({"input_cells": str(path)})
    for _ in range(3):
        io.read("input_cells", lazy=True)
    assert len(scans) == 1
    # replaced as the engine's writers replace a file (the open handle keeps the old one)
    ad.AnnData(X=sp.random(60, 8, density=0.5, random_state=1, format="csr", dtype=np.float32)).write_h5ad(
        tmp_path / "new.h5ad")
    os.replace(tmp_path / "new.h5ad", path)
    io.read("input_cells", lazy=True)
    io.read("input_cells")  # a full read is always checked
    assert len(scans) == 3
