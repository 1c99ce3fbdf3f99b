import os
import re
import sys

## VIASH START
par = {
    "input": "resources_test/loaders/scperturb.h5ad",
    "output": "output/h5ad_file.h5ad",
    "input_format": "auto",
    "dataset_id": None,
    "dataset_name": None,
    "dataset_reference": "",
    "organism": "homo_sapiens",
    "perturbation_column": "perturbation",
    "control_label": None,
    "combination_separator": ["+"],
    "cell_type_column": "cell_line",
    "cell_type": "unspecified",
    "condition_column": None,
    "replicate_column": None,
    "perturbation_type": None,
    "perturbation_type_column": "perturbation_type",
    "counts_layer": None,
    "values": "auto",
    "normalization": "log_cp10k_cell_mean",
    "gene_symbol_column": None,
    "seed": 0,
    "n_top_genes": 2000,
    "min_cells_per_half": 10,
}
meta = {"name": "h5ad_file", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

from cell_files import loader_options  # noqa: E402
from component_io import ComponentIO, fail, log  # noqa: E402
from dataset_report import dataset_report  # noqa: E402
from download import sha256_file  # noqa: E402
from formats import FormatError, check_anndata, read_h5ad  # noqa: E402
from harmonize import DEFAULT_DROP_PART  # noqa: E402
from pseudobulk import (COUNT_NORMALIZATIONS, SourceError, count_normalization, gene_table,  # noqa: E402
                        harmonize_cells, matrix_layout, obs_columns, pseudobulk, read_obs)

# What marks a file as already aggregated: the common dataset's own obs columns and its normalisation note.
COMMON_OBS = ("perturbation", "is_control", "replicate", "n_cells")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SAMPLE_VALUES = 200_000  # stored values looked at to tell raw counts from log-normalised values


def given(name):
    value = par.get(name)
    return None if value in (None, "", []) else value


def default_id(path: str) -> str:
    stem = re.sub(r"[^a-z0-9_]+", "_", os.path.basename(path).rsplit(".h5ad", 1)[0].lower()).strip("_")
    return stem or "my_dataset"


def is_common_dataset(path: str) -> bool:
    import h5py

    columns = set(obs_columns(path))
    with h5py.File(path, "r") as handle:
        uns = set(handle["uns"].keys()) if "uns" in handle else set()
    return all(c in columns for c in COMMON_OBS) and "normalization_id" in uns


def matrix_reading(path: str) -> tuple[str, str | None]:
    """('counts' | 'log', layer or None): which matrix to sum and how to read it."""
    import h5py

    layer, values = given("counts_layer"), par.get("values") or "auto"
    if layer and values == "log":
        raise SourceError(path, f"--counts_layer {layer} names raw counts but --values is log; drop one of them")
    with h5py.File(path, "r") as handle:
        if layer:
            matrix_layout(handle, path, layer)  # raises when the layer is absent
            return "counts", layer
        if values == "log":
            return "log", None
        if "layers" in handle and "counts" in handle["layers"]:
            log("using layers['counts'] as the raw counts")
            return "counts", "counts"
        if values == "counts":
            return "counts", None
        kind, _, node = matrix_layout(handle, path)
        sample = node["data"][:SAMPLE_VALUES] if kind != "dense" else node[: max(1, SAMPLE_VALUES // max(1, node.shape[1]))]
    sample = np.asarray(sample, dtype=np.float64).ravel()
    counts = sample.size > 0 and bool((sample >= 0).all()) and bool((sample == np.round(sample)).all())
    log(f"X holds {'non-negative integers: read as raw counts' if counts else 'non-integer values: read as log-normalised'}"
        " (--values counts|log to say otherwise)")
    return ("counts" if counts else "log"), None


def pass_through(path: str):
    """A file already in the common dataset format, validated; only its id and name may be replaced."""
    try:
        adata = read_h5ad(path)
    except FormatError as error:
        fail(f"--input {error}")
    if given("dataset_id"):
        adata.uns["dataset_id"] = par["dataset_id"]
    if given("dataset_name"):
        adata.uns["dataset_name"] = par["dataset_name"]
    io = ComponentIO(par, meta)
    problems = check_anndata(adata, io._format("output"))
    if problems:
        fail(f"--input file '{path}' looks like a common dataset but does not conform to "
             f"src/api/file_common_dataset.yaml: {'; '.join(problems[:5])}")
    log(f"--input is a common dataset ({adata.n_obs} profiles x {adata.n_vars} genes): validated, passed through")
    io.write("output", adata)


def from_cells(path: str):
    dataset_id = given("dataset_id") or default_id(path)
    values, layer = matrix_reading(path)
    wanted = [par["perturbation_column"], par.get("perturbation_type_column"), par.get("cell_type_column"),
              given("condition_column"), given("replicate_column")]
    obs = read_obs(path, [c for c in wanted if c])
    cells = harmonize_cells(
        path, obs, perturbation_column=par["perturbation_column"],
        perturbation_type_column=par.get("perturbation_type_column"), perturbation_type=given("perturbation_type"),
        cell_type_column=par.get("cell_type_column"), cell_type=given("cell_type") or "unspecified",
        condition_column=given("condition_column"), control_labels=list(given("control_label") or []),
        separators=tuple(given("combination_separator") or ["+"]), drop_part=DEFAULT_DROP_PART,
        replicate_column=given("replicate_column"), log=log)
    name = os.path.basename(path)
    replicates = (f"replicate (obs['{par['replicate_column']}'])" if given("replicate_column")
                  else "seeded random half of its cells")
    normalization = count_normalization(par.get("normalization")) if values == "counts" else "log_normalized_cell_mean"
    reading = ("raw counts" + (f" (layers['{layer}'])" if layer else " (X)") + f" per condition and {replicates}: "
               f"{COUNT_NORMALIZATIONS[normalization]} (`{normalization}`); the summed counts in layers['counts']"
               if values == "counts" else f"log-normalised cell values (X) averaged per condition and {replicates}")
    uns = {
        "dataset_id": dataset_id,
        "dataset_name": given("dataset_name") or f"{dataset_id} (own file {name})",
        "dataset_summary": f"A user's perturbation screen read from {name}.",
        "dataset_description": f"Cells of {name} (obs['{par['perturbation_column']}'] as the perturbation); {reading}.",
        "dataset_url": "",
        "dataset_reference": par.get("dataset_reference") or "",
        "dataset_organism": par.get("organism") or "homo_sapiens",
        "normalization_id": normalization,
        "source_sha256": sha256_file(path),
        "replicate_column": given("replicate_column") or "none",
    }
    adata = pseudobulk(path, cells, values=values, layer=layer, seed=int(par["seed"]),
                       min_cells=int(par["min_cells_per_half"]), n_top_genes=int(par["n_top_genes"]),
                       genes=gene_table(path, symbol_column=given("gene_symbol_column")), uns=uns, log=log,
                       cells_output=par.get("output_cells"), cells_options=loader_options(par),
                       normalization=normalization if values == "counts" else None)
    adata.uns["dataset_report"] = dataset_report(adata, log=log)
    ComponentIO(par, meta).write("output", adata)


path = par.get("input")
if not path or not os.path.isfile(path):
    fail(f"--input '{path}': file does not exist")
if not par.get("output"):
    fail("--output was not given")
if given("dataset_id") and not ID_PATTERN.match(par["dataset_id"]):
    fail(f"--dataset_id '{par['dataset_id']}': expected letters, digits, '_', '.' or '-' (it names folders)")
try:
    kind = par.get("input_format") or "auto"
    if kind == "auto":
        kind = "common" if is_common_dataset(path) else "cells"
    if kind == "common":
        pass_through(path)
    else:
        from_cells(path)
except SourceError as error:
    fail(str(error))
except OSError as error:  # not an HDF5 file at all, or unreadable
    fail(f"file '{path}': cannot read it as an h5ad file ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
