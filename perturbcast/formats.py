"""Output validation against the API formats, using the components' own checker (`src/utils/formats.py`).

The contract has one implementation, which components ship as a viash resource; perturbcast loads
that same file from the package so the runner and the components can never disagree.

The engine validates every output of every step in its own process, where worker threads share one
GIL, so reading is kept to what the checks look at: `FileView` reads obs, var and uns with the
contract's element reader (`read_element`: anndata's encodings without anndata's per-element dispatch,
whose h5py attribute reads dominated) and leaves X and the layers on disk (the checker scans them in row
blocks), and the names of a reference file (the solution every metric step aligns with) are read once
per file version. Any file the view does not handle plainly (legacy layout, obsm or raw content, shapes
that disagree, an unreadable element) is read by anndata as before, so that problems and messages stay
anndata's.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .config import ComponentConfig


@lru_cache(maxsize=None)
def checker(package_root: str):
    path = Path(package_root) / "src" / "utils" / "formats.py"
    spec = importlib.util.spec_from_file_location("perturbcast_contract_formats", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _NotPlain(Exception):
    """The file needs anndata's full reader (for its exact behaviour and messages)."""


# slots that anndata's backed reader loads but the checks never look at: the view handles them only empty
_UNCHECKED_SLOTS = ("obsm", "varm", "obsp", "varp")
_MATRIX_ENCODINGS = ("array", "string-array")
_SPARSE_ENCODINGS = ("csr_matrix", "csc_matrix")


@lru_cache(maxsize=None)
def _reader():
    """src/utils/formats.py of this source tree (its element reader); None when perturbcast is installed
    without it (then anndata reads everything)."""
    root = Path(__file__).resolve().parent.parent
    return checker(str(root)) if (root / "src" / "utils" / "formats.py").exists() else None


@lru_cache(maxsize=None)
def chunk_reader():
    """src/utils/deflate_chunks.py of this source tree, or None (then h5py and anndata read the matrices).

    Why: the engine checks every output in its own process, and at genome scale reading a cells file's values
    through HDF5's zlib filter was most of that work (a split's outputs: ~23 s of the engine's CPU per fold);
    the components' own chunk reader inflates them with ISA-L and reads a scan's values without the indices."""
    path = Path(__file__).resolve().parent.parent / "src" / "utils" / "deflate_chunks.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("perturbcast_deflate_chunks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _axis_frame(handle, axis: str, columns: bool = True) -> pd.DataFrame:
    group = handle.get(axis)
    if group is None or not hasattr(group, "keys") or group.attrs.get("encoding-type") != "dataframe":
        raise _NotPlain(axis)
    reader = _reader()
    if reader is None:
        raise _NotPlain("no element reader")
    frame = reader.read_dataframe_element(group, columns)
    _check_index(frame.index)
    if not len(frame.columns):  # as AnnData does
        frame.columns = frame.columns.astype(str)
    return frame


def _axis_names(handle, axis: str) -> pd.Index:
    """The obs or var names alone (the `_index` attribute names the index column), as `_axis_frame`'s index."""
    return _axis_frame(handle, axis, columns=False).index


def _check_index(index: pd.Index):
    # AnnData turns a non-string index into strings (with a warning); such files keep anndata's path
    if isinstance(index, pd.MultiIndex) or not pd.api.types.is_string_dtype(index[~index.isna()]):
        raise _NotPlain("index")


def _matrix(element, shape: tuple):
    """X or a layer left on disk: an h5py dataset, or anndata's backed sparse dataset (as backed AnnData's X)."""
    from anndata.io import sparse_dataset

    encoding = element.attrs.get("encoding-type")
    chunks = chunk_reader()
    if hasattr(element, "keys"):
        if encoding not in _SPARSE_ENCODINGS:
            raise _NotPlain("matrix group")
        matrix = chunks.CsrOnDisk(element) if chunks and encoding == "csr_matrix" else sparse_dataset(element)
    elif encoding in _MATRIX_ENCODINGS and element.ndim == 2:
        matrix = chunks.DenseOnDisk(element) if chunks and encoding == "array" else element
    else:
        raise _NotPlain("matrix")
    if tuple(matrix.shape) != shape:
        raise _NotPlain("shape")  # anndata reports the mismatch
    return matrix


class FileView:
    """An open h5ad file with the attributes `check_anndata` reads (`n_obs`, `obs`, `var`, `uns`, `X`,
    `layers`, the names). Raises _NotPlain for files anndata should read; close it when done."""

    def __init__(self, path: str):
        import h5py

        self.file = h5py.File(path, "r")
        try:
            self._read()
        except BaseException:
            self.file.close()
            raise

    def _read(self):
        handle = self.file
        if handle.attrs.get("encoding-type") != "anndata" or "raw" in handle:
            raise _NotPlain("layout")
        for slot in _UNCHECKED_SLOTS:
            if slot in handle and (not hasattr(handle[slot], "keys") or len(handle[slot])):
                raise _NotPlain(slot)
        self.obs, self.var = _axis_frame(handle, "obs"), _axis_frame(handle, "var")
        self.uns = _reader().read_element(handle["uns"]) if "uns" in handle else {}
        if not isinstance(self.uns, dict):
            raise _NotPlain("uns")
        shape = (len(self.obs), len(self.var))
        self.X = _matrix(handle["X"], shape) if "X" in handle else None
        layers = handle.get("layers")
        if layers is not None and not hasattr(layers, "keys"):
            raise _NotPlain("layers")
        self.layers = {name: _matrix(layers[name], shape) for name in (layers or {})}

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def obs_names(self) -> pd.Index:
        return self.obs.index

    @property
    def var_names(self) -> pd.Index:
        return self.var.index

    def close(self):
        self.file.close()


class _AnnDataFile:
    """anndata's backed read, for the files FileView leaves to it (same interface: attributes, close)."""

    def __init__(self, module, path: str):
        self.adata = module.read_h5ad(path, backed=True)

    def __getattr__(self, name):
        return getattr(self.adata, name)

    def close(self):
        if self.adata.isbacked:
            self.adata.file.close()


def open_h5ad(module, path: str):
    """FileView of `path`, or anndata's backed AnnData for what the view does not handle; FormatError
    (the checker's) when the file is no readable h5ad."""
    if not hasattr(module, "h5ad_file_problems"):  # a project with an older checker
        return _AnnDataFile(module, path)
    module.h5ad_file_problems(path)
    try:
        return FileView(path)
    except Exception:  # _NotPlain, or a damaged element: anndata reads it and words the problem
        return _AnnDataFile(module, path)


# (realpath, inode, size, mtime) -> (obs names, var names) of the reference files outputs align with;
# a few files per task and fold, reused by every method and metric step scored against them
_NAMES: dict = {}
_NAMES_LOCK = threading.Lock()
_NAMES_KEPT = 64


def _file_key(path: str) -> tuple:
    stat = os.stat(path)
    return (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def reference_names(module, path: str) -> tuple[pd.Index, pd.Index]:
    """obs and var names of `path`, read once per version of the file (path, inode, size, mtime)."""
    key = _file_key(path)
    with _NAMES_LOCK:
        if key in _NAMES:
            return _NAMES[key]
    try:
        module.h5ad_file_problems(path)  # AttributeError with an older checker: anndata's reader below
        import h5py

        with h5py.File(path, "r") as handle:
            if handle.attrs.get("encoding-type") != "anndata":
                raise _NotPlain("layout")
            names = (_axis_names(handle, "obs"), _axis_names(handle, "var"))
    except Exception:  # anndata's reader, as before (and its FormatError for a damaged reference)
        reader = _AnnDataFile(module, path)
        try:
            names = (reader.obs_names.copy(), reader.var_names.copy())
        finally:
            reader.close()
    with _NAMES_LOCK:
        while len(_NAMES) >= _NAMES_KEPT:
            _NAMES.pop(next(iter(_NAMES)))
        _NAMES[key] = names
    return names


# (realpath, inode, size, mtime) -> (obs, uns) of small files this process has read whole (score files):
# the engine validates each score as its step ends, and aggregation then reads ~1,000 of them again, one
# core working while the other waits; a changed file has another key
_SMALL_FILE_BYTES = 1 << 20
_OBS_UNS: dict = {}
_OBS_UNS_LOCK = threading.Lock()
_OBS_UNS_KEPT = 50_000


def _remember_obs_uns(key: tuple, obs: pd.DataFrame, uns: dict):
    if key[2] > _SMALL_FILE_BYTES:
        return
    with _OBS_UNS_LOCK:
        while len(_OBS_UNS) >= _OBS_UNS_KEPT:
            _OBS_UNS.pop(next(iter(_OBS_UNS)))
        _OBS_UNS[key] = (obs, uns)


def _remembered_obs_uns(path) -> tuple[tuple | None, tuple | None]:
    try:
        key = _file_key(path)
    except OSError:
        return None, None
    with _OBS_UNS_LOCK:
        return key, _OBS_UNS.get(key)


def output_problems(config: ComponentConfig, values: dict) -> dict[str, list[str]]:
    """Problems of each h5ad output of a finished run: its format and its alignment with other files."""
    formatted = [a for a in config.arguments if a.type == "file" and a.direction == "output"
                 and a.file_format.get("type") == "h5ad"]
    if config.package_root is None or not formatted:
        return {}
    module = checker(str(config.package_root))
    problems: dict[str, list[str]] = {}
    for argument in formatted:
        path = values.get(argument.plain_name)
        if not path or not os.path.exists(path):
            continue
        found: list[str] = []
        try:
            key = _file_key(path)
            adata = open_h5ad(module, path)
            try:
                found += module.check_anndata(adata, argument.file_format)
                if not found and isinstance(adata, FileView):
                    _remember_obs_uns(key, adata.obs, adata.uns)
                for axis in ("obs", "var"):
                    reference = argument.info.get(f"same_{axis}_names_as")
                    reference_path = values.get(reference) if reference else None
                    if not reference_path or not os.path.exists(reference_path):
                        continue
                    obs_names, var_names = reference_names(module, reference_path)
                    expected = obs_names if axis == "obs" else var_names
                    what = "rows (obs_names)" if axis == "obs" else "genes (var_names)"
                    found += module.alignment_problems(getattr(adata, f"{axis}_names"), expected, what, f"--{reference}")
            finally:
                adata.close()
        except module.FormatError as error:
            found += error.problems
        if found:
            problems[argument.name] = found
    return problems


def read_obs_uns(path, uns_keys=None) -> tuple[pd.DataFrame, dict]:
    """obs and uns of an h5ad file (score files, by aggregation), as `anndata.read_h5ad` gives them;
    with `uns_keys` only those entries of uns (where present). Files FileView does not handle, and
    damaged ones, go to anndata (whose exception is raised). A small file this process has already read
    (validated as an output, or read here) is not read again while it is unchanged."""
    import h5py

    def chosen(obs, uns):
        return obs.copy(), {k: v for k, v in uns.items() if uns_keys is None or k in uns_keys}

    key, remembered = _remembered_obs_uns(path)
    if remembered is not None:
        return chosen(*remembered)
    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("encoding-type") != "anndata" or "raw" in handle:
                raise _NotPlain("layout")
            obs = _axis_frame(handle, "obs")
            group = handle["uns"] if "uns" in handle else {}
            if hasattr(group, "attrs") and group.attrs.get("encoding-type") != "dict":
                raise _NotPlain("uns")
            uns = {k: _reader().read_element(group[k]) for k in group}
        if key is not None:
            _remember_obs_uns(key, obs, uns)
        return chosen(obs, uns)
    except Exception:
        import anndata as ad

        adata = ad.read_h5ad(path)
        uns = dict(adata.uns) if uns_keys is None else {key: adata.uns[key] for key in uns_keys if key in adata.uns}
        return adata.obs, uns


# uns slot of src/api/file_prediction.yaml: the test conditions a method predicted with its fallback
FALLBACK_CONDITIONS = "fallback_conditions"


def fallback_conditions(path) -> list[str] | None:
    """`uns['fallback_conditions']` of a prediction file (the condition ids the method could not predict from
    their perturbation and gave its fallback), read with h5py without touching X; None when the prediction
    does not say (a control, or a file written before the slot). A value that is not a list of strings
    raises ValueError naming the file."""
    import h5py
    import numpy as np

    with h5py.File(path, "r") as handle:
        if "uns" not in handle or FALLBACK_CONDITIONS not in handle["uns"]:
            return None
        node = handle["uns"][FALLBACK_CONDITIONS]
        if _reader() is not None:
            value = _reader().read_element(node)
        else:  # perturbcast installed without the source tree: anndata's own element reader
            from anndata.io import read_elem
            value = read_elem(node)
    values = np.atleast_1d(np.asarray(value, dtype=object))
    if isinstance(value, (str, bytes)) or values.ndim != 1 or (len(values) and not all(
            isinstance(v, (str, bytes)) for v in values)):
        raise ValueError(f"file '{path}': uns['{FALLBACK_CONDITIONS}'] is {value!r}, expected a list of condition ids")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
