"""Checks an AnnData object against a file format of `src/api/file_*.yaml` (`info.format`).

This is the one implementation of the contract. Components include it as a viash resource (it needs
only numpy, pandas and anndata); the perturbcast runner loads the same file to validate outputs.
Every problem is a short sentence naming the slot and what was expected, so that a caller can print
`file '<path>': <problem>` and stop.
"""
from __future__ import annotations

import numbers
import os

import numpy as np
import pandas as pd

SLOTS = ("obs", "var", "uns", "layers", "obsm")
# No count (a cell's reads) or expression value comes near this; a value beyond it is a corrupt or foreign file.
ABSURD_VALUE = 1e15
# Rows per block when scanning a matrix for non-finite values: bounds memory on backed files.
_ROW_BLOCK = 2048
# Values per statistic pass within a block (1 MB of float64: in cache for the passes that follow).
_SCAN_VALUES = 1 << 17


class FormatError(ValueError):
    """An input or output file does not match its API format."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        shown = "; ".join(self.problems[:5])
        more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"file '{path}': {shown}{more}")


def h5ad_file_problems(path: str):
    """FormatError if `path` is no file that could hold AnnData (missing, a folder, empty, not HDF5)."""
    if not os.path.exists(path):
        raise FormatError(path, ["file does not exist"])
    if os.path.isdir(path):
        raise FormatError(path, ["is a directory, expected an .h5ad file"])
    if not os.path.isfile(path):  # reading a FIFO would block, a device never ends
        raise FormatError(path, ["is not a regular file (a device, pipe or socket), expected an .h5ad file"])
    if os.path.getsize(path) == 0:
        raise FormatError(path, ["file is empty, expected an .h5ad file"])
    with open(path, "rb") as handle:
        signature = handle.read(8)
    if signature != b"\x89HDF\r\n\x1a\n":
        raise FormatError(path, ["not an HDF5/h5ad file (no HDF5 signature); expected AnnData written by write_h5ad"])


# encodings read here as anndata's registered readers read them (anndata/_io/specs/methods.py), at the
# versions anndata writes; any other element goes to anndata's `read_elem`
_ENCODINGS = {"array": ("0.2.0", False), "string-array": ("0.2.0", False), "numeric-scalar": ("0.2.0", False),
              "string": ("0.2.0", False), "categorical": ("0.2.0", True), "dict": ("0.1.0", True),
              "dataframe": ("0.2.0", True)}


def read_element(element):
    """An element as anndata's `read_elem` returns it, without its per-element dispatch (h5py attribute
    reads dominated: ~50 per small score file)."""
    attrs = element.attrs
    try:
        encoding, version = attrs["encoding-type"], attrs["encoding-version"]
    except KeyError:
        encoding = version = None
    is_group = hasattr(element, "keys")
    if _ENCODINGS.get(encoding) != (version, is_group):
        from anndata.io import read_elem

        return read_elem(element)
    if encoding == "array":
        return element[()]
    if encoding in ("string-array", "string"):
        return element.asstr()[()]
    if encoding == "numeric-scalar":
        return element[()].item()
    if encoding == "categorical":
        return pd.Categorical.from_codes(codes=read_element(element["codes"]),
                                         categories=read_element(element["categories"]),
                                         ordered=bool(attrs["ordered"]))
    if encoding == "dict":
        return {key: read_element(value) for key, value in dict(element).items()}
    return read_dataframe_element(element)


def read_dataframe_element(group, columns: bool = True) -> pd.DataFrame:
    """anndata's `read_dataframe`; with `columns=False` the index alone (reference names)."""
    order = list(group.attrs["column-order"]) if columns else []
    key = group.attrs["_index"]
    if not all(isinstance(name, str) for name in [key, *order]):
        from anndata.io import read_elem

        return read_elem(group) if columns else pd.DataFrame(index=read_elem(group).index)
    frame = pd.DataFrame({name: read_element(group[name]) for name in order}, index=read_element(group[key]),
                         columns=order if order else None)
    if key != "_index":
        frame.index.name = key
    return frame


def read_plain_h5ad(path: str):
    """`anndata.read_h5ad(path)` for files in anndata's current layout, with `read_element` instead of
    anndata's per-element dispatch (which dominated reading the small files of a benchmark); None for
    anything else (legacy layouts, raw), which anndata then reads."""
    import anndata as ad
    import h5py

    parts = {}
    with h5py.File(path, "r") as handle:
        if handle.attrs.get("encoding-type") != "anndata" or handle.attrs.get("encoding-version") != "0.1.0":
            return None
        for key in handle:
            if key not in ("X", "obs", "var", "uns", "layers", "obsm", "varm", "obsp", "varp"):
                return None  # raw and anything unknown: anndata's reader
            parts[key] = read_element(handle[key])
    return ad.AnnData(**parts)


def read_h5ad(path: str, backed: bool = False):
    """Read an h5ad file, turning every low-level failure into a FormatError naming the file."""
    import anndata as ad

    h5ad_file_problems(path)
    try:
        adata = None if backed else read_plain_h5ad(path)
    except Exception:  # a damaged element: anndata reads the file and words the problem
        adata = None
    try:
        return adata if adata is not None else ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as error:  # anndata raises many types for damaged files
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FormatError(path, [f"cannot be read as AnnData ({detail})"]) from None



class LazyAnnData:
    """A file's obs, var and uns in memory, its X and layers left on disk: `rows` reads the rows a component
    asks for, and `check_anndata` scans the matrices block by block. For cells files: tens of GB at genome
    scale, where a component needs a few thousand training cells (a PCA, the control cells)."""

    def __init__(self, path: str):
        import h5py

        self.filename = path
        self._handle = h5py.File(path, "r")
        handle = self._handle
        if handle.attrs.get("encoding-type") != "anndata":
            raise ValueError("no AnnData encoding on its root group")
        self.obs, self.var = read_element(handle["obs"]), read_element(handle["var"])
        self.uns = read_element(handle["uns"]) if "uns" in handle else {}
        self.X = self._on_disk(handle["X"]) if "X" in handle else None
        self.layers = {name: self._on_disk(node) for name, node in handle["layers"].items()} \
            if "layers" in handle else {}
        for name, matrix in {"X": self.X, **self.layers}.items():
            if matrix is not None and tuple(matrix.shape) != (len(self.obs), len(self.var)):
                raise ValueError(f"{name} has shape {tuple(matrix.shape)}, obs and var "
                                 f"{len(self.obs)} x {len(self.var)}")

    @staticmethod
    def _on_disk(node):
        import h5py

        try:
            import deflate_chunks
        except ImportError:  # a component that does not ship it (docs/components.md): h5py and anndata read
            deflate_chunks = None
        if isinstance(node, h5py.Dataset):
            return deflate_chunks.DenseOnDisk(node) if deflate_chunks and node.ndim == 2 else node
        if deflate_chunks and node.attrs.get("encoding-type") == "csr_matrix":  # a condition's rows: one read
            return deflate_chunks.CsrOnDisk(node)
        try:
            from anndata.io import sparse_dataset
        except ImportError:  # anndata < 0.11
            from anndata.experimental import sparse_dataset
        return sparse_dataset(node)

    obs_names = property(lambda self: self.obs.index)
    var_names = property(lambda self: self.var.index)
    n_obs = property(lambda self: len(self.obs))
    n_vars = property(lambda self: len(self.var))

    def rows(self, rows, layer: str | None = None):
        """Rows `rows` (indices) of X or of `layers[layer]`, in the order given, as in memory (CSR or array)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        matrix = self.X if layer is None else self.layers[layer]
        block = matrix[rows[order]] if len(rows) else matrix[0:0]  # on-disk readers take increasing indices
        return block[np.argsort(order, kind="stable")] if len(rows) and (np.diff(rows) < 0).any() else block


def read_h5ad_lazy(path: str) -> LazyAnnData:
    """`LazyAnnData` of `path`, every low-level failure a FormatError naming the file."""
    h5ad_file_problems(path)
    try:
        return LazyAnnData(path)
    except Exception as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FormatError(path, [f"cannot be read as AnnData ({detail})"]) from None

def _is_string_column(series: pd.Series) -> bool:
    if isinstance(series.dtype, pd.CategoricalDtype):
        return all(isinstance(v, str) for v in series.cat.categories)
    if pd.api.types.is_string_dtype(series.dtype):
        return all(isinstance(v, str) for v in series.to_numpy())
    return False


def _column_problems(frame: pd.DataFrame, slot: str, spec: dict) -> list[str]:
    name = spec["name"]
    if name not in frame.columns:
        return [f"{slot}['{name}'] is missing (expected {spec.get('type')}: {spec.get('description', '').strip()})"] \
            if spec.get("required", False) else []
    series = frame[name]
    kind = spec.get("type")
    where = f"{slot}['{name}']"
    if series.isna().any() and kind != "double":
        return [f"{where} has {int(series.isna().sum())} missing values (expected {kind} in every row)"]
    if kind == "string" and not _is_string_column(series):
        return [f"{where} has dtype {series.dtype}, expected strings"]
    if kind == "integer" and not pd.api.types.is_integer_dtype(series.dtype):
        return [f"{where} has dtype {series.dtype}, expected integers"]
    if kind == "boolean" and not pd.api.types.is_bool_dtype(series.dtype):
        return [f"{where} has dtype {series.dtype}, expected booleans"]
    if kind == "double" and not (pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)):
        return [f"{where} has dtype {series.dtype}, expected numbers"]
    if "choices" in spec:
        unexpected = sorted(set(map(str, series.unique())) - set(map(str, spec["choices"])))
        if unexpected:
            return [f"{where} has values {unexpected[:5]}, expected one of {spec['choices']}"]
    if "min_value" in spec and kind in ("integer", "double") and len(series) and (series < spec["min_value"]).any():
        low = series[series < spec["min_value"]]
        return [f"{where} has {len(low)} values below {spec['min_value']} (e.g. {low.iloc[0]} in row {str(low.index[0])!r})"]
    return []


def _target_count_problems(obs: pd.DataFrame) -> list[str]:
    """obs['n_targets'] must count the targets its row's label names (`A+B` -> 2, `control` -> 0): a
    contradiction would put the row in the wrong stratum. Labels are parsed as src/utils/vocabulary.py does;
    malformed labels are that module's to report."""
    if "n_targets" not in obs.columns or "perturbation" not in obs.columns:
        return []
    labels = obs["perturbation"].astype(str)
    named = np.where(labels.to_numpy() == "control", 0, labels.str.count(r"\+").to_numpy() + 1)
    try:
        stated = obs["n_targets"].to_numpy(dtype=np.int64)
    except (TypeError, ValueError):
        return []  # the column's own check reports its dtype
    wrong = np.flatnonzero(stated != named)
    if not len(wrong):
        return []
    row = wrong[0]
    return [f"obs['n_targets'] contradicts obs['perturbation'] in {len(wrong)} rows (e.g. row {str(obs.index[row])!r}: "
            f"{labels.iloc[row]!r} names {named[row]} targets, n_targets is {stated[row]})"]


def _matrix_problems(matrix, where: str, spec: dict) -> list[str]:
    """Dtype, finiteness and scale of a matrix. Scale keys of a spec (see src/api/file_*.yaml):
    `log_normalized` (integers refused: log1p values are never whole counts), `max_value` (above it: raw
    counts), `min_value`, and `max_negative_mass`: the sum of the negative entries' magnitudes as a share of
    the sum of the positive entries. log1p of counts is never negative, but models' predictions dip below 0
    (on PerturBench's Norman 2019 subset, where 79% of the truth is 0: latent_additive 44% of the entries
    negative, median -0.015; ridge_regulators down to -6.1), so neither the share of negative entries nor a
    tight floor tells a sloppy model from data on the wrong scale. The mass does: centred and z-scored data
    have as much negative as positive mass (1), log fold changes about as much, those predictions < 1%."""
    if matrix is None:
        return [f"{where} is missing (expected {spec.get('type', 'double')} matrix)"] if spec.get("required", False) else []
    dtype = matrix.dtype
    if not (np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.bool_)):
        return [f"{where} has dtype {dtype}, expected numbers"]
    if np.issubdtype(dtype, np.complexfloating):  # reading it as real would drop the imaginary part silently
        return [f"{where} has complex dtype {dtype}, expected real numbers"]
    integer = np.issubdtype(dtype, np.integer)
    problems = []
    if integer and spec.get("log_normalized", False):
        problems.append(f"{where} has integer dtype {dtype}: this looks like raw counts, expected floating-point "
                        "log-normalized expression")
    if spec.get("allow_nonfinite", False) and not any(k in spec for k in ("max_value", "min_value", "max_negative_mass")):
        return problems
    n_nan = n_inf = n_absurd = 0
    negative_mass = positive_mass = 0.0
    largest, smallest = -np.inf, np.inf
    # each pass over a block costs a full read of it (a solution has X and up to six layers): only the
    # statistics the spec bounds are computed, and non-finite values are counted only where there are some
    extremes = "max_value" in spec or "min_value" in spec
    mass = "max_negative_mass" in spec
    # a CSR matrix on disk gives its stored values without the indices (the scan needs no more)
    blocks = matrix.value_blocks(_ROW_BLOCK) if hasattr(matrix, "value_blocks") else \
        (matrix[start:start + _ROW_BLOCK] for start in range(0, matrix.shape[0], _ROW_BLOCK))
    for block in blocks:
        values = block.data if hasattr(block, "data") and not isinstance(block, np.ndarray) else np.asarray(block)
        values = values.reshape(-1) if values.flags.c_contiguous else values.ravel()
        # sub-blocks that stay in cache: every statistic is one pass of it, with no matrix-sized temporary
        for part in range(0, values.size, _SCAN_VALUES):
            counts = _scan(values[part:part + _SCAN_VALUES], integer, extremes, mass)
            n_nan, n_inf, n_absurd = n_nan + counts[0], n_inf + counts[1], n_absurd + counts[2]
            largest, smallest = max(largest, counts[3]), min(smallest, counts[4])
            negative_mass, positive_mass = negative_mass + counts[5], positive_mass + counts[6]
    if "max_value" in spec and largest > float(spec["max_value"]):
        problems.append(f"{where} reaches {largest:.4g}, above {spec['max_value']}: this looks like raw counts, "
                        f"expected log-normalized expression")
    if "min_value" in spec and smallest < float(spec["min_value"]):
        problems.append(f"{where} has values down to {smallest:.4g}, below {spec['min_value']}: expected "
                        f"log-normalized expression (log1p of normalized counts is never negative)")
    bound = spec.get("max_negative_mass")
    if bound is not None and negative_mass > float(bound) * positive_mass:
        ratio = f"{negative_mass / positive_mass:.0%} of" if positive_mass else "more than"
        problems.append(f"{where} looks centred, scaled or log-fold-change: its negative values sum to {ratio} its "
                        f"positive ones (at most {float(bound):.0%} for log-normalized expression)")
    if n_absurd:
        problems.append(f"{where} has {n_absurd} values beyond ±{ABSURD_VALUE:.0e}, more than any count or expression "
                        "matrix holds; expected counts or log-normalized expression")
    if n_nan and not spec.get("allow_nonfinite", False):
        problems.append(f"{where} has {n_nan} NaN values, expected finite numbers")
    if n_inf and not spec.get("allow_nonfinite", False):
        problems.append(f"{where} has {n_inf} infinite values, expected finite numbers")
    return problems


def _scan(values: np.ndarray, integer: bool, extremes: bool, mass: bool) -> tuple:
    """(NaN, infinite, absurd counts, largest, smallest, negative mass, positive mass) of a flat block of
    values, the non-finite ones left out of the other statistics. The minimum and maximum are NaN or
    infinite exactly when some value is, so a finite block (the usual case) costs these two passes, plus
    one for the mass; the element-wise masks are built only for a block that needs them."""
    n_nan = n_inf = n_absurd = 0
    if not values.size:
        return 0, 0, 0, -np.inf, np.inf, 0.0, 0.0
    low, high = values.min(), values.max()
    if not integer and not (np.isfinite(low) and np.isfinite(high)):
        finite = np.isfinite(values)
        n_nan, n_inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        values = values[finite]
        if not values.size:
            return n_nan, n_inf, 0, -np.inf, np.inf, 0.0, 0.0
        low, high = values.min(), values.max()
    low, high = float(low), float(high)
    if not integer and max(high, -low) > ABSURD_VALUE:
        n_absurd = int(np.count_nonzero(np.abs(values) > ABSURD_VALUE))
    negative = positive = 0.0
    if mass:
        # the negative and positive sums from the sum and the sum of magnitudes (float64)
        magnitudes = np.abs(values, dtype=np.float64) if integer else np.abs(values)  # (no integer overflow)
        total, size = float(values.sum(dtype=np.float64)), float(magnitudes.sum(dtype=np.float64))
        negative, positive = max((size - total) / 2, 0.0), max((size + total) / 2, 0.0)
    return n_nan, n_inf, n_absurd, (high if extremes else -np.inf), (low if extremes else np.inf), negative, positive


def _uns_problems(uns, spec: dict) -> list[str]:
    name, kind = spec["name"], spec.get("type")
    if name not in uns:
        return [f"uns['{name}'] is missing (expected {kind}: {spec.get('description', '').strip()})"] \
            if spec.get("required", False) else []
    value = uns[name]
    values = list(np.atleast_1d(value)) if spec.get("multiple", False) else [value]
    if spec.get("multiple", False) and isinstance(value, (str, bytes)):
        return [f"uns['{name}'] is a single string, expected a list of {kind}"]
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)),
        "double": lambda v: isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)),
        "boolean": lambda v: isinstance(v, (bool, np.bool_)),
    }
    check = checks.get(kind)
    if check is not None and not all(check(v) for v in values):
        bad = next(v for v in values if not check(v))
        return [f"uns['{name}'] holds {bad!r} ({type(bad).__name__}), expected {kind}"]
    return []


def check_anndata(adata, file_format: dict) -> list[str]:
    """Problems of `adata` against `file_format` (the `info.format` mapping); empty when it conforms."""
    problems: list[str] = []
    if adata.n_obs == 0 and not file_format.get("obs_may_be_empty"):  # a prior's obs has no required meaning
        problems.append("has no rows (obs), expected at least one")
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:3].tolist()
        problems.append(f"var_names are not unique (e.g. {dup}), expected one row per gene")
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()[:3].tolist()
        problems.append(f"obs_names are not unique (e.g. {dup})")
    if "X" in file_format:
        problems += _matrix_problems(adata.X, "X", file_format["X"])
    for spec in file_format.get("layers", []) or []:
        layer = adata.layers[spec["name"]] if spec["name"] in adata.layers else None
        problems += _matrix_problems(layer, f"layers['{spec['name']}']", spec)
    for slot in ("obs", "var"):
        for spec in file_format.get(slot, []) or []:
            problems += _column_problems(getattr(adata, slot), slot, spec)
    if any(spec.get("name") == "n_targets" for spec in file_format.get("obs", []) or []):
        problems += _target_count_problems(adata.obs)
    for spec in file_format.get("uns", []) or []:
        problems += _uns_problems(adata.uns, spec)
        other = spec.get("same_length_as")
        if other and spec["name"] in adata.uns and other in adata.uns:
            if len(np.atleast_1d(adata.uns[spec["name"]])) != len(np.atleast_1d(adata.uns[other])):
                problems.append(f"uns['{spec['name']}'] and uns['{other}'] differ in length, expected one value per id")
    return problems


def alignment_problems(names: pd.Index, expected: pd.Index, what: str, reference: str) -> list[str]:
    """Problems when `names` is not exactly `expected` in the same order (e.g. genes of a prediction)."""
    if len(names) == len(expected) and (np.asarray(names) == np.asarray(expected)).all():
        return []
    if not names.is_unique:
        dup = names[names.duplicated()].unique()[:3].tolist()
        return [f"{what} are not unique (e.g. {dup} more than once), expected each of {reference}'s exactly once"]
    missing, extra = expected.difference(names), names.difference(expected)
    if len(missing) or len(extra):
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} missing (e.g. {list(missing[:3])})")
        if len(extra):
            parts.append(f"{len(extra)} unexpected (e.g. {list(extra[:3])})")
        return [f"{what} do not match {reference}: " + ", ".join(parts)]
    if len(names) != len(expected):  # the reference itself has duplicates
        return [f"{what} number {len(names)}, but {reference} has {len(expected)}"]
    position = int(np.flatnonzero(np.asarray(names) != np.asarray(expected))[0])
    return [f"{what} are in another order than {reference} (first difference at position {position}: "
            f"'{names[position]}' where '{expected[position]}' was expected)"]
