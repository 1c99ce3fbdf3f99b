"""A user's own dataset file -> the loader step that brings it into the benchmark.

`perturbcast benchmark --dataset-file PATH [--dataset-id ID] [--dataset-arg KEY=VALUE ...]` and the spec
file's `datasets:` entries with a `file:` call `dataset_step_arguments`, which decides whether the file is
already a common dataset (validated and passed through by the loader) or cell-level (pseudobulked by it),
and builds the arguments of `src/datasets/h5ad_file`. Nothing is read beyond obs column names and uns keys,
so a large file costs nothing here; the loader does the real checks. Errors are one line (UserDataError).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from . import layout

LOADER = "h5ad_file"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# The same marks the loader looks for (src/datasets/h5ad_file/script.py)
COMMON_OBS = ("perturbation", "is_control", "replicate", "n_cells")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Set by dataset_step_arguments itself, never by --dataset-arg
RESERVED = ("input", "output", "input_format", "dataset_id")
# h5ad_file's `input_format` of a file already in the common format: profiles, and no cells to write
COMMON_FORMAT = "common"


def writes_no_cells(arguments: dict) -> bool:
    """Whether a dataset step with these loader arguments has no cells to write (a common-format file)."""
    return arguments.get("input_format") == COMMON_FORMAT


class UserDataError(ValueError):
    """A bad dataset file or argument; str() is one line naming the file or argument and what was expected."""


def _loader_arguments(root: Path | None) -> dict:
    from .config import ConfigError, find_package_root, load_config

    root = root or find_package_root(Path.cwd()) or find_package_root(Path(__file__).resolve().parent)
    if root is None:
        raise UserDataError("no _viash.yaml at or above the current directory: run from the perturbcast project")
    try:
        config = load_config(Path(root) / "src" / "datasets" / LOADER)
    except ConfigError as error:
        raise UserDataError(str(error)) from None
    return {a.plain_name: a for a in config.arguments if a.direction == "input" and a.plain_name not in RESERVED}


def parse_dataset_args(items: list[str] | None) -> dict:
    """`KEY=VALUE` strings (from --dataset-arg) -> dict; a key given twice collects its values in a list."""
    arguments: dict = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise UserDataError(f"--dataset-arg '{item}': expected KEY=VALUE, e.g. perturbation_column=target_gene")
        if key in arguments:
            previous = arguments[key]
            arguments[key] = (previous if isinstance(previous, list) else [previous]) + [value]
        else:
            arguments[key] = value
    return arguments


def _h5ad_layout(path: Path) -> tuple[set, set]:
    """(obs column names, uns keys) of an h5ad file; UserDataError when it is not one."""
    import h5py

    with open(path, "rb") as handle:
        if handle.read(8) != HDF5_SIGNATURE:
            raise UserDataError(f"file '{path}': not an h5ad (HDF5) file; expected AnnData written by write_h5ad")
    try:
        with h5py.File(path, "r") as handle:
            if "obs" not in handle or "X" not in handle and "layers" not in handle:
                raise UserDataError(f"file '{path}': an HDF5 file without AnnData's obs and X; expected an h5ad file")
            obs = handle["obs"]
            columns = {str(c) for c in obs.attrs.get("column-order", [])} or set(obs.keys())
            uns = set(handle["uns"].keys()) if "uns" in handle else set()
    except OSError as error:
        raise UserDataError(f"file '{path}': cannot read it ({str(error).splitlines()[0]})") from None
    return columns, uns


def _value(argument, key: str, value):
    """The argument's value as the loader's command line takes it; checks type and choices."""
    values = value if isinstance(value, list) else [value]
    if len(values) > 1 and not argument.multiple:
        raise UserDataError(f"--dataset-arg {key}: given {len(values)} times but takes one value")
    for one in values:
        text = str(one)
        if argument.type == "integer":
            try:
                number = int(text)
            except ValueError:
                raise UserDataError(f"--dataset-arg {key}={text}: expected an integer") from None
            if argument.min is not None and number < argument.min:
                raise UserDataError(f"--dataset-arg {key}={text}: expected at least {argument.min:g}")
        if argument.choices and text not in [str(c) for c in argument.choices]:
            raise UserDataError(f"--dataset-arg {key}={text}: expected one of {', '.join(map(str, argument.choices))}")
    return argument.multiple_sep.join(str(v) for v in values) if argument.multiple else str(values[0])


def default_dataset_id(path: str | os.PathLike) -> str:
    stem = re.sub(r"[^a-z0-9_]+", "_", Path(path).name.rsplit(".h5ad", 1)[0].lower()).strip("_")
    return stem or "my_dataset"


def dataset_step_arguments(path: str | os.PathLike, dataset_id: str | None = None, dataset_args: dict | None = None,
                           *, root: Path | None = None) -> tuple[str, str, dict]:
    """(loader name, dataset id, loader arguments) for a user's h5ad file.

    A common dataset (obs `perturbation`, `is_control`, `replicate`, `n_cells`; uns `normalization_id`) is
    passed through (its uns dataset_id is the default id); any other AnnData is cell-level. dataset_args:
    the h5ad_file loader's arguments by name (`perturbation_column`, `control_label`, ...), values as
    strings or lists; unknown names and values of the wrong type are refused. The input path is absolute.
    """
    file = Path(path).expanduser()
    problem = layout.not_a_file(file)
    if problem:
        raise UserDataError(f"file '{path}': {problem} (--dataset-file)")
    if dataset_id is not None and not ID_PATTERN.match(dataset_id):
        raise UserDataError(f"--dataset-id '{dataset_id}': expected letters, digits, '_', '.' or '-' (it names folders)")
    known = _loader_arguments(root)
    dataset_args = dict(dataset_args or {})
    reserved = sorted(set(dataset_args) & set(RESERVED))
    if reserved:
        raise UserDataError(f"--dataset-arg {reserved[0]}: set by perturbcast itself; use --dataset-file / --dataset-id")
    unknown = sorted(set(dataset_args) - set(known))
    if unknown:
        raise UserDataError(f"--dataset-arg {unknown[0]}: not an argument of the {LOADER} loader; expected one of "
                            f"{', '.join(sorted(known))}")
    values = {key: _value(known[key], key, value) for key, value in dataset_args.items()}
    columns, uns = _h5ad_layout(file)
    common = all(c in columns for c in COMMON_OBS) and "normalization_id" in uns
    if common:
        pseudobulk_only = sorted(k for k in dataset_args if k != "dataset_name")
        if pseudobulk_only:
            raise UserDataError(f"--dataset-arg {pseudobulk_only[0]}: file '{path}' is already a common dataset "
                                "(profiles, not cells), so only dataset_name applies")
        if dataset_id is None:
            import h5py
            with h5py.File(file, "r") as handle:
                stored = handle["uns"].get("dataset_id")
                stored = stored[()] if stored is not None else None
            stored = stored.decode() if isinstance(stored, bytes) else stored
            dataset_id = str(stored) if stored and ID_PATTERN.match(str(stored)) else default_dataset_id(file)
    else:
        for key in ("perturbation_column", "cell_type_column", "condition_column", "replicate_column",
                    "perturbation_type_column"):
            column = dataset_args.get(key, known[key].default[0] if known[key].default else None)
            explicit = key in dataset_args or key == "perturbation_column"
            if explicit and column and str(column) not in columns:
                raise UserDataError(f"file '{path}': obs has no column '{column}' ({key}); its columns: "
                                    f"{', '.join(sorted(columns)[:15])}")
        dataset_id = dataset_id or default_dataset_id(file)
    arguments = {"input": str(file.resolve()), "input_format": COMMON_FORMAT if common else "cells", "dataset_id": dataset_id}
    arguments.update(values)
    return LOADER, dataset_id, arguments
