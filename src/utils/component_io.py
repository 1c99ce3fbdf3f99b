"""Reading, validating and writing a component's files, with one-line errors instead of tracebacks.

Included as a viash resource by every component:

    sys.path.append(meta["resources_dir"])
    from component_io import ComponentIO
    io = ComponentIO(par, meta)
    train = io.read("input_train")          # checked against its API format
    ...
    io.write("output", prediction)          # checked, then written atomically

Formats come from the processed config viash writes beside the executable (`meta["config"]`), where
each file argument carries the `info.format` of its `src/api/file_*.yaml`.
"""
from __future__ import annotations

import os
import sys
import tempfile

from formats import FormatError, alignment_problems, check_anndata, read_h5ad, read_h5ad_lazy

# Exit code of a task (or method) that cannot be applied to a dataset. The engine records the pair
# as "not applicable" instead of as a failure.
from vocabulary import NOT_APPLICABLE_EXIT_CODE  # noqa: E402 (99: one definition, shipped with this file)


def fail(message: str, exit_code: int = 1):
    """Stop the component with one clear line on stderr and no traceback."""
    print(f"[error] {message}", file=sys.stderr, flush=True)
    raise SystemExit(exit_code)


def not_applicable(reason: str):
    """Stop because the component cannot be applied to this input (exit code 99)."""
    print(f"[not applicable] {reason}", file=sys.stderr, flush=True)
    raise SystemExit(NOT_APPLICABLE_EXIT_CODE)


def log(message: str):
    print(message, file=sys.stderr, flush=True)


def settings_from_environment(par: dict, name: str) -> dict:
    """`$PERTURBCAST_<NAME>_ARGS` ("--epochs 2 --max_cells_per_condition 100"): a component's own arguments in
    a benchmark run, whose engine passes none to methods (the engine keys its step cache on this variable too,
    so a changed setting reruns the step). The values replace those in `par`; the ones used are logged and
    returned, for the output's uns['settings_from_environment']."""
    import shlex

    from vocabulary import settings_variable

    variable = settings_variable(name)
    words = shlex.split(os.environ.get(variable, ""))
    if len(words) % 2 or any(not w.startswith("--") or w[2:] not in par for w in words[::2]):
        fail(f"${variable}: expected pairs '--argument value' of this component's arguments, got {words}")
    chosen = {}
    for key, value in zip(words[::2], words[1::2]):
        key = key[2:]
        kind = type(par[key]) if par[key] is not None else str
        par[key] = chosen[key] = kind(value)
    if chosen:
        log(f"{name}: arguments from ${variable}: {chosen}")
    return chosen


def number_argument(par: dict, name: str, default, kind=int, low=None, high=None, high_open: bool = False):
    """`par[name]` (or `default` when unset) as `kind`, within [low, high] (or [low, high) with
    `high_open`). Viash checks type and range already; this also covers runs from the VIASH START block
    and ranges a config cannot state. One-line error otherwise."""
    import math
    from numbers import Integral, Real

    value = default if par.get(name) is None else par[name]
    is_kind = isinstance(value, Integral) if kind is int else isinstance(value, Real)
    in_range = (is_kind and not isinstance(value, bool) and math.isfinite(value)
                and (low is None or value >= low)
                and (high is None or (value < high if high_open else value <= high)))
    if not in_range:
        what = "an integer" if kind is int else "a number"
        bounds = [f">= {low}"] if low is not None else []
        bounds += [f"{'<' if high_open else '<='} {high}"] if high is not None else []
        fail(f"--{name} is {value!r}, expected {what}" + (f" {' and '.join(bounds)}" if bounds else ""))
    return kind(value)


# The last processed config parsed by this process, keyed by its text before `build_info` (written last,
# the only part that differs between steps of one component): the metric steps of one prediction run one
# after another in one process (the engine's session), each from its own build folder.
_SPECS: dict = {}


def _argument_specs(meta: dict) -> dict:
    """Argument name (no dashes) -> argument mapping, from the processed config if there is one."""
    config_path = (meta or {}).get("config")
    if not config_path or not os.path.exists(config_path):
        return {}
    import copy

    import yaml

    with open(config_path) as handle:
        text = handle.read()
    key = text.split("\nbuild_info:", 1)[0]
    if key not in _SPECS:
        # libyaml when present: the processed config is read at every start, and pure-Python parsing costs ~0.1 s
        config = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        arguments = list(config.get("arguments", []) or [])
        for group in config.get("argument_groups", []) or []:
            arguments += group.get("arguments", []) or []
        _SPECS.clear()
        _SPECS[key] = {arg["name"].lstrip("-"): arg for arg in arguments if "name" in arg}
    return copy.deepcopy(_SPECS[key])  # a script may change its copy


# A lazily read file's matrices take a full scan to check (15.7 s of CPU for one fold's training cells of the
# genome-scale screen), and the scripts of one worker session read the same training cells once per prediction:
# a file found conforming (same path, size, modification time and format) is not scanned again in this process.
_CONFORMING: set = set()


def _conformance_key(path: str, file_format: dict) -> tuple:
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns, repr(file_format)


class ComponentIO:
    """Reads a component's input files and writes its outputs, validated against the API formats."""

    def __init__(self, par: dict, meta: dict | None = None):
        self.par = par
        self.specs = _argument_specs(meta or {})
        self._read: dict = {}
        self._refuse_shared_files()
        for name, path in self._files("output"):
            _check_writable(name, path)

    def _files(self, direction: str) -> list[tuple[str, str]]:
        found = []
        for name, spec in self.specs.items():
            if spec.get("type") != "file" or spec.get("direction", "input") != direction:
                continue
            value = self.par.get(name)
            for path in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(path, str) and path:
                    found.append((name, path))
        return found

    def _refuse_shared_files(self):
        """An output that is an input (or another output) would overwrite it: refused before anything runs."""
        def same(a: str, b: str) -> bool:
            if os.path.realpath(a) == os.path.realpath(b):
                return True
            try:
                return os.path.samefile(a, b)  # hard links
            except OSError:
                return False
        outputs = self._files("output")
        for i, (name, path) in enumerate(outputs):
            for other, other_path in self._files("input") + outputs[:i]:
                if same(path, other_path):
                    fail(f"--{name} '{path}' is the same file as --{other} '{other_path}'; "
                         f"expected a separate output file")

    def _format(self, name: str) -> dict:
        return ((self.specs.get(name) or {}).get("info") or {}).get("format") or {}

    def _alignment(self, name: str, adata) -> list[str]:
        info = (self.specs.get(name) or {}).get("info") or {}
        problems = []
        for axis in ("obs", "var"):
            reference = info.get(f"same_{axis}_names_as")
            if reference in self._read:
                problems += alignment_problems(
                    getattr(adata, f"{axis}_names"), getattr(self._read[reference], f"{axis}_names"),
                    "genes (var_names)" if axis == "var" else "rows (obs_names)", f"--{reference}")
        return problems

    def read(self, name: str, required_obs: tuple = (), lazy: bool = False):
        """Read the file given as `--name` and check it; stop with a clear message if it does not conform.
        `lazy`: its matrices stay on disk (`formats.LazyAnnData`: rows read on demand), checked block by block."""
        path = self.par.get(name)
        if path is None:
            fail(f"--{name} was not given")
        known = None
        try:
            adata = read_h5ad_lazy(path) if lazy else read_h5ad(path)
            known = _conformance_key(path, self._format(name)) if lazy else None
            problems = ([] if known in _CONFORMING else check_anndata(adata, self._format(name))) + \
                self._alignment(name, adata)
            problems += [f"obs['{column}'] is missing (this component needs it)"
                         for column in required_obs if column not in adata.obs.columns]
            if problems:
                raise FormatError(path, problems)
        except FormatError as error:
            fail(f"--{name} {error}")
        if known is not None:
            _CONFORMING.add(known)
        self._read[name] = adata
        return adata

    def write(self, name: str, adata):
        """Check `adata` against the format of output `--name`, then write it atomically."""
        self.write_all({name: adata})

    def write_all(self, outputs: dict):
        """Check every output first, then write them all: a bad one means none is written."""
        for name, adata in outputs.items():
            self._read[name] = adata  # later outputs may align with earlier ones
        for name, adata in outputs.items():
            problems = check_anndata(adata, self._format(name)) + self._alignment(name, adata)
            if problems:
                fail(f"--{name} output would not conform, nothing written: {FormatError(self.par.get(name), problems)}")
        for name in outputs:
            if not self.par.get(name):
                fail(f"--{name} was not given")
            _check_writable(name, self.par[name])
        written = []
        for name, adata in outputs.items():
            path = self.par.get(name)
            try:
                write_h5ad_atomic(adata, path)
            except OSError as error:  # e.g. the disk filled up while writing
                for done in written:  # all outputs or none
                    os.remove(done)
                _cannot_write(name, path, error)
            written.append(path)


def _cannot_write(name: str, path: str, error: OSError):
    where = error.filename or path
    reason = error.strerror or (str(error).strip().splitlines() or [type(error).__name__])[0]
    fail(f"cannot write --{name} to '{path}': {reason}" + (f" ('{where}')" if where != path else ""))


def _check_writable(name: str, path: str):
    """Fail now, not after the work, when an output cannot be written (a folder, a read-only place)."""
    if os.path.isdir(path):
        fail(f"cannot write --{name} to '{path}': it is a directory, expected a file path")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".partial-", dir=directory)  # what the real write will need
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        _cannot_write(name, path, error)


def write_h5ad_atomic(adata, path: str):
    """Write to a temporary file beside `path` and rename it, so a crash never leaves a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".partial-", suffix=".h5ad", dir=directory)
    os.close(handle)
    try:
        if not write_plain_h5ad(adata, tmp_path):
            write_h5ad_compressed(adata, tmp_path)
        # mkstemp creates 0600; give the file the mode a plain open() would (other users, e.g. in containers)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise



# ----------------------------------------------------------------------------------------------------
# Matrices that compress well are stored compressed. Measured on the genome-scale screen (8,000 genes,
# 302,669 cells; benchmarks/SPEED.md, "Scale"): gzip level 1 with byte shuffling shrinks a cells file's
# values 3.3x (log-normalised) to 7.5x (counts) and its column indices 5x, a dense count layer 3.6x and the
# solution's control layers (one profile repeated per test row) 26x, each read back at 0.4-0.9 s per 140 MB;
# dense log-normalised profiles shrink only 1.2x for 5x the read time, so they are stored as they are. Which
# dense matrix is which is measured, not assumed: its first rows are compressed as the filter would.
# Every HDF5 reader (h5py, anndata, R's hdf5r) decodes both filters. Compressed X and layers are written
# chunk by chunk by deflate_chunks (the same chunks, ISA-L's faster deflate) where a component ships it.
COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
MIN_COMPRESSED_BYTES = 1 << 20   # below this the filter's overhead outweighs the saving
MIN_COMPRESSION_RATIO = 2.0      # a dense matrix is compressed only if its sample shrinks at least this much


def _compresses_well(matrix) -> bool:
    import zlib

    import numpy as np

    sample = np.ascontiguousarray(matrix[:max(1, MIN_COMPRESSED_BYTES // max(1, matrix[:1].nbytes))])
    shuffled = sample.view(np.uint8).reshape(-1, sample.dtype.itemsize).T.tobytes()  # HDF5's shuffle filter
    return len(shuffled) >= MIN_COMPRESSION_RATIO * len(zlib.compress(shuffled, 1))


def storage_options(matrix) -> dict:
    """How a matrix is stored (h5py dataset options): compressed when it is large and sparse, or dense and
    compressible (counts, repeated rows)."""
    import numpy as np
    import scipy.sparse as sp

    if sp.issparse(matrix):
        return dict(COMPRESSION) if matrix.data.nbytes >= MIN_COMPRESSED_BYTES else {}
    if isinstance(matrix, np.ndarray) and matrix.ndim == 2 and matrix.dtype.kind in "biuf" and \
            matrix.nbytes >= MIN_COMPRESSED_BYTES and _compresses_well(matrix):
        return dict(COMPRESSION)
    return {}


def write_element(group, key, value, **options):
    """anndata's `write_elem` (its import moved in anndata 0.11), `options` for the h5py datasets."""
    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem
    write_elem(group, key, value, dataset_kwargs=options)


def write_matrix(group, key, matrix):
    """A matrix as anndata writes it, stored as `storage_options` says; compressed ones chunk by chunk
    (`deflate_chunks`: the same filters, a faster deflate)."""
    import numpy as np
    import scipy.sparse as sp

    try:
        import deflate_chunks
    except ImportError:  # a component that does not ship it (docs/components.md): HDF5's own filters
        deflate_chunks = None
    options = storage_options(matrix)
    if options != COMPRESSION or deflate_chunks is None or \
            not (isinstance(matrix, np.ndarray) or (sp.issparse(matrix) and matrix.format == "csr")):
        write_element(group, key, matrix, **options)
    elif isinstance(matrix, np.ndarray):
        dataset = deflate_chunks.create(group, key, matrix.dtype, shape=matrix.shape)
        dataset.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        deflate_chunks.write_rows(dataset, matrix)
    else:
        node = group.create_group(key)
        node.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                           "shape": np.array(matrix.shape, dtype=np.int64)})
        for field in ("data", "indices", "indptr"):
            values = getattr(matrix, field)
            appender = deflate_chunks.Appender(deflate_chunks.create(node, field, values.dtype))
            appender.append(values)
            appender.close()


def write_h5ad_compressed(adata, path: str):
    """`adata.write_h5ad(path)`, element by element as anndata lays them out, with `X` and each layer stored
    as `storage_options` says."""
    import h5py

    if adata.isbacked or adata.raw is not None:
        adata.write_h5ad(path)
        return
    adata.strings_to_categoricals()  # what anndata's write_h5ad does to the object first
    with h5py.File(path, "w") as handle:
        handle.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        if adata.X is not None:
            write_matrix(handle, "X", adata.X)
        write_element(handle, "obs", adata.obs)
        write_element(handle, "var", adata.var)
        for slot in ("obsm", "varm", "obsp", "varp"):
            write_element(handle, slot, dict(getattr(adata, slot)))
        write_element(handle, "layers", {})
        for name, layer in adata.layers.items():
            write_matrix(handle["layers"], name, layer)
        write_element(handle, "uns", dict(adata.uns))

# ----------------------------------------------------------------------------------------------------
# A small AnnData (a score file: obs, uns, no X) written with h5py in anndata's on-disk format. anndata's
# writer dispatches every element through its registry: ~35 ms for a 24-row score file, once per metric
# step. Elements are laid out exactly as anndata 0.12's `write_h5ad` lays them out (same encodings, dtypes,
# attributes; tests/test_engine_reading.py compares the two files element by element); anything else is
# left to anndata.

_STRING = None


def _string_dtype():
    global _STRING
    if _STRING is None:
        import h5py

        _STRING = h5py.string_dtype(encoding="utf-8")
    return _STRING


def _encode(node, encoding: str, version: str = "0.2.0"):
    node.attrs["encoding-type"] = encoding
    node.attrs["encoding-version"] = version


def _is_strings(array) -> bool:
    import numpy as np

    return array.dtype.kind == "U" or (array.dtype == object and all(isinstance(v, str) for v in array.ravel())) \
        if isinstance(array, np.ndarray) else False


def _plain_array(array) -> bool:
    import numpy as np

    return isinstance(array, np.ndarray) and type(array) is np.ndarray and array.ndim >= 1 and \
        (array.dtype.kind in "biuf" or _is_strings(array))


def _write_array(group, key: str, array):
    if array.dtype.kind in "biuf":
        group.create_dataset(key, data=array)
        _encode(group[key], "array")
    else:
        group.create_dataset(key, data=array.astype(_string_dtype()), dtype=_string_dtype())
        _encode(group[key], "string-array")


_SCALARS = (bool, int, float)


def _plain_value(value, depth: int = 0) -> bool:
    import numpy as np

    if isinstance(value, (str, np.str_)):
        return True
    if type(value) in _SCALARS or isinstance(value, (np.bool_, np.integer, np.floating)):
        return np.asarray(value).dtype.kind in "biuf"  # not an int beyond 64 bits
    if isinstance(value, list):
        return bool(value) and _plain_array(np.array(value))
    if isinstance(value, dict):
        return depth < 4 and all(isinstance(k, str) and k and "/" not in k and _plain_value(v, depth + 1)
                                 for k, v in value.items())
    return _plain_array(value)


def _write_value(group, key: str, value):
    import numpy as np

    if isinstance(value, dict):
        child = group.create_group(key)
        _encode(child, "dict", "0.1.0")
        for name, item in value.items():
            _write_value(child, name, item)
    elif isinstance(value, (str, np.str_)):
        group.create_dataset(key, data=np.array(value, dtype=_string_dtype()))
        _encode(group[key], "string")
    elif isinstance(value, list):
        _write_array(group, key, np.array(value))
    elif isinstance(value, np.ndarray):
        _write_array(group, key, value)
    else:
        group.create_dataset(key, data=np.array(value))
        _encode(group[key], "numeric-scalar")


def _plain_frame(frame) -> bool:
    import pandas as pd

    if frame.index.name is not None or not frame.columns.is_unique or "_index" in frame.columns:
        return False
    if not all(isinstance(c, str) and c and "/" not in c for c in frame.columns):
        return False
    if frame.index.dtype != object or not _is_strings(frame.index.to_numpy()):
        return False
    for name in frame.columns:
        values = frame[name]._values
        if isinstance(values, pd.Categorical):
            if not _is_strings(values.categories.to_numpy()) or values.codes.dtype.kind != "i":
                return False
        elif not _plain_array(values):
            return False
    return True


def _write_frame(parent, key: str, frame):
    import pandas as pd

    group = parent.create_group(key)
    group.attrs["_index"] = "_index"
    group.attrs["column-order"] = list(frame.columns)  # empty: h5py stores an empty float array, as anndata's
    _encode(group, "dataframe")
    _write_array(group, "_index", frame.index.to_numpy())
    for name in frame.columns:
        values = frame[name]._values
        if isinstance(values, pd.Categorical):
            child = group.create_group(name)
            child.attrs["ordered"] = bool(values.ordered)
            _encode(child, "categorical")
            _write_array(child, "codes", values.codes)
            _write_array(child, "categories", values.categories.to_numpy())
        else:
            _write_array(group, name, values)


def write_plain_h5ad(adata, path: str) -> bool:
    """Write `adata` as anndata would, with h5py, if it is plain (no layers, obsm, varm, obsp, varp or raw;
    X absent or a dense numeric array; obs and var columns of numbers, booleans, strings or categories of
    strings; uns of strings, numbers, non-empty lists or arrays of them, dicts of those). False (nothing
    written) otherwise."""
    import h5py
    import numpy as np

    if adata.isbacked or adata.is_view or adata.raw is not None:
        return False
    if any(len(getattr(adata, slot)) for slot in ("layers", "obsm", "varm", "obsp", "varp")):
        return False
    if adata.X is not None and not (type(adata.X) is np.ndarray and adata.X.dtype.kind in "biuf"):
        return False
    adata.strings_to_categoricals()  # what anndata's write_h5ad does to the object first
    if not (_plain_frame(adata.obs) and _plain_frame(adata.var) and _plain_value(dict(adata.uns))):
        return False
    with h5py.File(path, "w") as handle:
        _encode(handle, "anndata", "0.1.0")
        if adata.X is not None:
            _write_array(handle, "X", adata.X)
        for slot in ("layers", "obsm", "obsp", "varm", "varp"):
            _encode(handle.create_group(slot), "dict", "0.1.0")
        _write_frame(handle, "obs", adata.obs)
        _write_frame(handle, "var", adata.var)
        _write_value(handle, "uns", dict(adata.uns))
    return True
