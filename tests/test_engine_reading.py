"""The engine's cheap reading: output validation through `perturbcast.formats.FileView` (h5py) must see
what anndata's backed reader sees, and the processed config text must load as the processed config."""
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from conftest import ROOT
from perturbcast import formats

import sys  # noqa: E402
sys.path.insert(0, str(ROOT / "src" / "utils"))
from component_io import write_plain_h5ad  # noqa: E402
from perturbcast.config import discover_components, load_config
from perturbcast.runner import processed_config, processed_config_text

CHECKER = formats.checker(str(ROOT))


def _example(n_obs=6, n_vars=4, sparse=False) -> ad.AnnData:
    rng = np.random.default_rng(0)
    X = rng.random((n_obs, n_vars)).astype(np.float32)
    obs = pd.DataFrame({
        "stratum": pd.Categorical(["single", "combo"] * (n_obs // 2)),
        "ordered": pd.Categorical(["a", "b", "c"] * (n_obs // 3), categories=["c", "b", "a"], ordered=True),
        "label": np.array([f"p{i}" for i in range(n_obs)], dtype=object),
        "n_cells": np.arange(n_obs, dtype=np.int64),
        "value": rng.random(n_obs),
        "flag": np.arange(n_obs) % 2 == 0,
        "maybe": pd.array([1, None, 3, 4, None, 6], dtype="Int64"),
    }, index=pd.Index([f"row{i}" for i in range(n_obs)], dtype=object))
    var = pd.DataFrame({"gene_symbol": [f"S{i}" for i in range(n_vars)]},
                       index=pd.Index([f"G{i}" for i in range(n_vars)], dtype=object))
    uns = {"dataset_id": "d", "task_id": "t", "n_draws": 2, "scale": 0.5, "flag": True,
           "metric_ids": ["a", "b"], "metric_values": [0.1, 0.2], "nested": {"x": 1, "y": ["u", "v"]}}
    layers = {"draw_1": sp.csr_matrix(X) if sparse else X + 1, "counts": np.ones((n_obs, n_vars), dtype=np.int64)}
    return ad.AnnData(X=sp.csr_matrix(X) if sparse else X, obs=obs, var=var, uns=uns, layers=layers)


def _dense(matrix):
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


@pytest.mark.parametrize("sparse", [False, True])
def test_file_view_reads_what_anndata_reads(tmp_path, sparse):
    path = str(tmp_path / "a.h5ad")
    _example(sparse=sparse).write_h5ad(path)
    view, backed = formats.open_h5ad(CHECKER, path), ad.read_h5ad(path, backed="r")
    try:
        assert isinstance(view, formats.FileView)
        pd.testing.assert_frame_equal(view.obs, backed.obs)
        pd.testing.assert_frame_equal(view.var, backed.var)
        assert view.n_obs == backed.n_obs and view.obs_names.dtype == backed.obs_names.dtype
        assert repr(view.uns) == repr(dict(backed.uns))
        assert set(view.layers) == set(backed.layers)
        for name in view.layers:
            assert view.layers[name].dtype == backed.layers[name].dtype
            np.testing.assert_array_equal(_dense(view.layers[name][0:3]), _dense(backed.layers[name][0:3]))
        assert type(view.X[0:2]) is type(backed.X[0:2])
        np.testing.assert_array_equal(_dense(view.X[0:6]), _dense(backed.X[0:6]))
        for name in ("prediction", "solution", "score"):
            file_format = yaml.safe_load((ROOT / "src" / "api" / f"file_{name}.yaml").read_text())["info"]["format"]
            assert CHECKER.check_anndata(view, file_format) == CHECKER.check_anndata(backed, file_format)
    finally:
        view.close()
        backed.file.close()
    obs_names, var_names = formats.reference_names(CHECKER, path)
    assert list(obs_names) == [f"row{i}" for i in range(6)] and list(var_names) == [f"G{i}" for i in range(4)]


def test_problems_are_found_and_worded_as_with_anndata(tmp_path):
    bad = _example()
    bad.X[1, 2] = np.nan
    bad.layers["draw_1"][0, 0] = np.inf
    del bad.uns["dataset_id"]
    path = str(tmp_path / "bad.h5ad")
    bad.write_h5ad(path)
    spec = {"X": {"type": "double", "required": True}, "uns": [{"name": "dataset_id", "type": "string", "required": True}],
            "layers": [{"name": "draw_1", "type": "double", "required": True}],
            "obs": [{"name": "n_cells", "type": "string", "required": True}]}
    view = formats.open_h5ad(CHECKER, path)
    try:
        problems = CHECKER.check_anndata(view, spec)
    finally:
        view.close()
    assert problems == CHECKER.check_anndata(ad.read_h5ad(path), spec)
    assert "X has 1 NaN values, expected finite numbers" in problems
    assert "layers['draw_1'] has 1 infinite values, expected finite numbers" in problems
    assert any(p.startswith("uns['dataset_id'] is missing") for p in problems)
    assert "obs['n_cells'] has dtype int64, expected strings" in problems


def test_files_the_view_leaves_to_anndata(tmp_path):
    with_obsm = _example()
    with_obsm.obsm["pca"] = np.zeros((6, 2))
    with_obsm.write_h5ad(tmp_path / "obsm.h5ad")
    reader = formats.open_h5ad(CHECKER, str(tmp_path / "obsm.h5ad"))
    assert isinstance(reader, formats._AnnDataFile) and reader.n_obs == 6
    reader.close()
    # X with another number of rows than obs: anndata's backed reader, whatever it makes of it
    _example().write_h5ad(tmp_path / "shape.h5ad")
    with h5py.File(tmp_path / "shape.h5ad", "r+") as handle:
        data = handle["X"][:]
        del handle["X"]
        handle.create_dataset("X", data=data[:5])
        handle["X"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    reader = formats.open_h5ad(CHECKER, str(tmp_path / "shape.h5ad"))
    assert isinstance(reader, formats._AnnDataFile)
    reader.close()
    # an element anndata cannot read: its FormatError, word for word
    _example().write_h5ad(tmp_path / "damaged.h5ad")
    with h5py.File(tmp_path / "damaged.h5ad", "r+") as handle:
        handle["uns/dataset_id"].attrs["encoding-type"] = "no-such-encoding"
    with pytest.raises(CHECKER.FormatError) as error:
        formats.open_h5ad(CHECKER, str(tmp_path / "damaged.h5ad"))
    with pytest.raises(CHECKER.FormatError) as expected:
        CHECKER.read_h5ad(str(tmp_path / "damaged.h5ad"), backed=True)
    assert error.value.problems == expected.value.problems
    assert error.value.problems[0].startswith("cannot be read as AnnData (")
    (tmp_path / "text.h5ad").write_text("not hdf5")
    with pytest.raises(CHECKER.FormatError, match="no HDF5 signature"):
        formats.open_h5ad(CHECKER, str(tmp_path / "text.h5ad"))


def test_reference_names_follow_the_file(tmp_path):
    path = tmp_path / "ref.h5ad"
    _example().write_h5ad(path)
    first = formats.reference_names(CHECKER, str(path))
    assert formats.reference_names(CHECKER, str(path)) is first  # read once per version of the file
    renamed = _example()
    renamed.obs_names = [f"other{i}" for i in range(6)]
    renamed.write_h5ad(path)
    assert list(formats.reference_names(CHECKER, str(path))[0]) == [f"other{i}" for i in range(6)]


def test_processed_config_text_loads_as_the_processed_config():
    components = discover_components(ROOT)
    assert components
    for component in components:
        config = load_config(component.path)
        for build_dir in (Path("/tmp/one"), Path("/tmp/two: with space")):  # the kept part, another build_info
            text = processed_config_text(config, build_dir)
            assert yaml.safe_load(text) == processed_config(config, build_dir), component.name


def _tree(path) -> dict:
    """Every element of an HDF5 file: kind, dtype, shape, attributes and values (for comparing two files)."""
    found = {}

    def plain(value):
        value = np.asarray(value)
        return (value.dtype.str if value.dtype != object else "object", value.tolist())

    def visit(name, node):
        attrs = {key: plain(value) for key, value in node.attrs.items()}
        if isinstance(node, h5py.Dataset):
            strings = h5py.check_string_dtype(node.dtype)
            found[name] = ("dataset", str(node.dtype), strings, node.shape, node.chunks, node.compression, attrs,
                           plain(node.asstr()[()] if strings else node[()]))
        else:
            found[name] = ("group", attrs)

    with h5py.File(path, "r") as handle:
        visit("/", handle)
        handle.visititems(visit)
    return found


def _score_like() -> ad.AnnData:
    n = 7
    obs = pd.DataFrame({"stratum": ["single", "combo", "single", "single", "combo", "x10", "x9"],  # -> categorical
                        "unique": [f"u{i}" for i in range(n)],  # all different: stays strings
                        "spearman_delta": np.linspace(-1, 1, n), "n": np.arange(n), "flag": np.arange(n) > 2,
                        "kind": pd.Categorical(["a", "b"] * 3 + ["a"], categories=["b", "a"], ordered=True)},
                       index=pd.Index([f"c{i}" for i in range(n)], dtype=object))
    uns = {"dataset_id": "d", "method_id": np.str_("m"), "metric_ids": ["a", "b"], "metric_values": [0.5, 1.0],
           "n_draws": 1, "fold": np.int64(2), "scale": 0.25, "flag": True, "ids": np.array(["x", "y"], dtype=object),
           "counts": np.array([1, 2, 3]), "nested": {"k": [1, 2], "s": "t", "deeper": {"f": 1.5}}}
    return ad.AnnData(obs=obs, uns=uns)


def _prediction_like() -> ad.AnnData:
    rng = np.random.default_rng(1)
    return ad.AnnData(X=rng.random((5, 3)).astype(np.float32),
                      obs=pd.DataFrame(index=pd.Index([f"r{i}" for i in range(5)], dtype=object)),
                      var=pd.DataFrame({"gene_symbol": ["A", "B", "C"]}, index=pd.Index(["g1", "g2", "g3"], dtype=object)),
                      uns={"dataset_id": "d", "task_id": "t", "method_id": "m"})


@pytest.mark.parametrize("make", [_score_like, _prediction_like])
def test_plain_writer_writes_what_anndata_writes(tmp_path, make):
    make().write_h5ad(tmp_path / "anndata.h5ad")
    assert write_plain_h5ad(make(), str(tmp_path / "plain.h5ad"))
    assert _tree(tmp_path / "plain.h5ad") == _tree(tmp_path / "anndata.h5ad")
    back, expected = ad.read_h5ad(tmp_path / "plain.h5ad"), ad.read_h5ad(tmp_path / "anndata.h5ad")
    pd.testing.assert_frame_equal(back.obs, expected.obs)
    assert repr(back.uns) == repr(expected.uns)


def test_plain_writer_leaves_the_rest_to_anndata(tmp_path):
    with_layer = _prediction_like()
    with_layer.layers["draw_1"] = with_layer.X.copy()
    sparse_x = _prediction_like()
    sparse_x.X = sp.csr_matrix(sparse_x.X)
    empty_list = _score_like()
    empty_list.uns["metrics_not_computed"] = []
    nullable = _score_like()
    nullable.obs["maybe"] = pd.array([1, None, 3, 4, 5, 6, 7], dtype="Int64")
    for adata in (with_layer, sparse_x, empty_list, nullable):
        assert not write_plain_h5ad(adata, str(tmp_path / "no.h5ad"))
        assert not (tmp_path / "no.h5ad").exists()


@pytest.mark.parametrize("sparse", [False, True])
def test_components_read_what_anndata_reads(tmp_path, sparse):
    path = tmp_path / "a.h5ad"
    _example(sparse=sparse).write_h5ad(path)
    plain, expected = CHECKER.read_h5ad(str(path)), ad.read_h5ad(path)
    assert repr(plain) == repr(expected)
    pd.testing.assert_frame_equal(plain.obs, expected.obs)
    pd.testing.assert_frame_equal(plain.var, expected.var)
    assert repr(dict(plain.uns)) == repr(dict(expected.uns))
    assert type(plain.X) is type(expected.X)
    np.testing.assert_array_equal(_dense(plain.X), _dense(expected.X))
    for name in expected.layers:
        assert type(plain.layers[name]) is type(expected.layers[name])
        np.testing.assert_array_equal(_dense(plain.layers[name]), _dense(expected.layers[name]))


def test_argument_specs_follow_the_config_not_the_last_step(tmp_path):
    from component_io import _argument_specs

    metric = load_config(ROOT / "src" / "metrics" / "delta_error" / "config.vsh.yaml")
    method = load_config(ROOT / "src" / "methods" / "additive" / "config.vsh.yaml")
    paths = []
    for i, config in enumerate((metric, metric, method)):
        paths.append(tmp_path / f"{i}.yaml")
        paths[-1].write_text(processed_config_text(config, tmp_path / f"build_{i}"))
    first, second, other = (_argument_specs({"config": str(path)}) for path in paths)
    assert first == second and first is not second  # the same arguments, each step its own copy
    first["output"]["info"] = None
    assert _argument_specs({"config": str(paths[1])})["output"]["info"] is not None
    assert set(first) == {"input_solution", "input_prediction", "output"}
    assert "input_train" in other and "input_solution" not in other
