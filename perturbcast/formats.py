"""Output validation against the API formats, using the components' own checker (`src/utils/formats.py`).

The contract has one implementation, which components ship as a viash resource; perturbcast loads
that same file from the package so the runner and the components can never disagree.
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from .config import ComponentConfig


@lru_cache(maxsize=None)
def checker(package_root: str):
    path = Path(package_root) / "src" / "utils" / "formats.py"
    spec = importlib.util.spec_from_file_location("perturbcast_contract_formats", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_names(module, path: str):
    adata = module.read_h5ad(path, backed=True)
    try:
        return adata.obs_names.copy(), adata.var_names.copy()
    finally:
        if adata.isbacked:
            adata.file.close()


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
            adata = module.read_h5ad(path, backed=True)
            try:
                found += module.check_anndata(adata, argument.file_format)
                for axis in ("obs", "var"):
                    reference = argument.info.get(f"same_{axis}_names_as")
                    reference_path = values.get(reference) if reference else None
                    if not reference_path or not os.path.exists(reference_path):
                        continue
                    obs_names, var_names = _read_names(module, reference_path)
                    expected = obs_names if axis == "obs" else var_names
                    what = "rows (obs_names)" if axis == "obs" else "genes (var_names)"
                    found += module.alignment_problems(getattr(adata, f"{axis}_names"), expected, what, f"--{reference}")
            finally:
                if adata.isbacked:
                    adata.file.close()
        except module.FormatError as error:
            found += error.problems
        if found:
            problems[argument.name] = found
    return problems
