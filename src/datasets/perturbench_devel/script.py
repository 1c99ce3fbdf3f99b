import os
import sys

## VIASH START
par = {
    "output": "output/norman2019_devel.h5ad",
    "study": "norman19",
    "input": None,
    "replicate_column": None,
    "seed": 0,
    "n_top_genes": 0,
    "min_cells_per_half": 10,
    "output_cells": None,
    "max_cells_per_condition": 500,
    "max_control_cells": 2000,
    "cells_seed": 0,
}
meta = {"name": "perturbench_devel", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

from cell_files import loader_options  # noqa: E402
from component_io import ComponentIO, fail, log  # noqa: E402
from dataset_report import dataset_report  # noqa: E402
from download import DownloadError, fetch, sha256_file  # noqa: E402
from pseudobulk import SourceError, gene_table, harmonize_cells, obs_columns, pseudobulk, read_obs  # noqa: E402

# Outputs are checked now (not an input, writable), not after the slow part.
outputs = ComponentIO(par, meta)

URL = "https://raw.githubusercontent.com/altoslabs/perturbench/d357dfae/src/perturbench/data/resources/devel.h5ad"
SHA256 = "220998f5630c813228c8661c86dd52244b9ac87127511289af90e0d900d8429b"

STUDIES = {
    "norman19": {
        "dataset_id": "norman2019_devel",
        "dataset_name": "Norman 2019 K562 CRISPRa (PerturBench development subset)",
        "dataset_summary": "CRISPRa in K562 cells with single and double perturbations; a 500-gene development subset.",
        "dataset_description": (
            "Norman et al. 2019 activated single genes and pairs of genes with CRISPRa in K562 cells (Perturb-seq). "
            "PerturBench's development file keeps 33 of its perturbations (15 of them doubles such as KLF1+MAP2K6) "
            "and the controls, about 100 cells each, and 500 genes, log1p(cp10k)-normalised."),
        "dataset_reference": "10.1126/science.aax4438",
    },
    "mcfaline23": {
        "dataset_id": "mcfaline2023_devel",
        "dataset_name": "McFaline-Figueroa 2023 glioma CRISPRi (PerturBench development subset)",
        "dataset_summary": "CRISPRi of 9 genes in three glioblastoma cell lines; a 500-gene development subset.",
        "dataset_description": (
            "McFaline-Figueroa et al. 2023 knocked down genes with CRISPRi in the glioblastoma lines A172, T98G and "
            "U87MG. PerturBench's development file keeps 9 perturbations and the controls in each line and 500 "
            "genes, log1p(cp10k)-normalised; the three lines are the cell types, so the same perturbation can be "
            "transferred between them."),
        "dataset_reference": "10.1016/j.xgen.2023.100487",
    },
}

study = STUDIES.get(par["study"])
if study is None:
    fail(f"--study is '{par['study']}', expected one of {sorted(STUDIES)}")
if not par.get("output"):
    fail("--output was not given")
try:
    cells_options = loader_options(par)
except ValueError as error:
    fail(str(error))

try:
    if par.get("input"):
        path = par["input"]
        if not os.path.isfile(path):
            raise SourceError(path, "file does not exist (--input)")
        source_sha256 = sha256_file(path)
        log(f"using --input {path} (sha256 {source_sha256})")
    else:
        path, source_sha256 = fetch(URL, sha256=SHA256, log=log)
    replicate_column = par.get("replicate_column") or None
    obs = read_obs(path, ["condition", "perturbation_type", "cell_type", "dataset", "treatment", replicate_column]
                   if replicate_column else ["condition", "perturbation_type", "cell_type", "dataset", "treatment"])
    if replicate_column and replicate_column not in obs.columns:
        raise SourceError(path, f"obs has no replicate column '{replicate_column}' (columns: "
                                f"{obs_columns(path)[:12]}); name an existing column with --replicate_column")
    if "dataset" not in obs.columns:
        raise SourceError(path, "obs has no column 'dataset' naming the study of each cell (norman19, mcfaline23)")
    in_study = (obs["dataset"].astype(str) == par["study"]).to_numpy()
    if not in_study.any():
        raise SourceError(path, f"no cell of study '{par['study']}' in obs['dataset'] "
                                f"(values: {sorted(obs['dataset'].astype(str).unique())[:5]})")
    cells = harmonize_cells(
        path, obs, keep=in_study, perturbation_column="condition", perturbation_type_column="perturbation_type",
        cell_type_column="cell_type", condition_column="treatment" if "treatment" in obs.columns else None,
        replicate_column=replicate_column, log=log)
    uns = {
        **{key: value for key, value in study.items()},
        "dataset_description": study["dataset_description"] + " Profiles are the mean log expression of the cells "
                               + (f"of each condition and replicate (obs['{replicate_column}'])." if replicate_column
                                  else "of two seeded random halves of each condition's cells."),
        "dataset_url": URL,
        "dataset_organism": "homo_sapiens",
        "normalization_id": "log_cp10k_cell_mean",
        "source_sha256": source_sha256,
        "replicate_column": replicate_column or "none",
    }
    adata = pseudobulk(path, cells, values="log", seed=int(par["seed"]), min_cells=int(par["min_cells_per_half"]),
                       n_top_genes=int(par["n_top_genes"]), genes=gene_table(path), uns=uns, log=log,
                       cells_output=par.get("output_cells"), cells_options=cells_options)
except (DownloadError, SourceError, OSError) as error:
    fail(str(error))

adata.uns["dataset_report"] = dataset_report(adata, log=log)
outputs.write("output", adata)
