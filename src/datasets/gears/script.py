import atexit
import os
import shutil
import sys
import tempfile

## VIASH START
par = {
    "output": "output/norman2019_gears.h5ad",
    "dataset": "norman",
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
meta = {"name": "gears", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

from archives import archive_kind, extract_member  # noqa: E402
from cell_files import loader_options  # noqa: E402
from component_io import ComponentIO, fail, log  # noqa: E402
from dataset_report import dataset_report  # noqa: E402
from download import DownloadError, cache_root, dataverse_checksum, fetch, sha256_file  # noqa: E402
from pseudobulk import SourceError, gene_table, harmonize_cells, obs_columns, pseudobulk, read_obs  # noqa: E402

# Outputs are checked now (not an input, writable), not after the slow part.
outputs = ComponentIO(par, meta)

URL = "https://dataverse.harvard.edu/api/access/datafile/{file_id}"
MEMBER = "perturb_processed.h5ad"
GEARS_GENES = ("GEARS' processed file holds the genes GEARS' preprocessing chose (about 5,000 highly variable "
               "genes plus the perturbed genes), chosen on the whole screen before any split, perturbed cells "
               "included: the same genes for every split and fold, but chosen having seen every perturbation.")
DATASETS = {
    "norman": {
        "file_id": 6154020, "dataset_id": "norman2019_gears", "perturbation_type": "activation", "cell_type": "K562",
        "dataset_name": "Norman 2019 K562 CRISPRa (GEARS)", "dataset_reference": "10.1126/science.aax4438",
        "dataset_summary": "CRISPRa of single genes and gene pairs in K562 cells, as processed by GEARS.",
        "dataset_description": "Norman et al. 2019 activated 105 single genes and 131 pairs with CRISPRa in K562 "
                               "cells; GEARS' processed file (log-normalised, about 5,000 genes)."},
    "adamson": {
        "file_id": 6154417, "dataset_id": "adamson2016_gears", "perturbation_type": "knockdown", "cell_type": "K562",
        "dataset_name": "Adamson 2016 K562 UPR CRISPRi (GEARS)", "dataset_reference": "10.1016/j.cell.2016.11.048",
        "dataset_summary": "CRISPRi of unfolded-protein-response genes in K562 cells, as processed by GEARS.",
        "dataset_description": "Adamson et al. 2016 knocked down genes of the unfolded protein response with CRISPRi "
                               "in K562 cells; GEARS' processed file (log-normalised, about 5,000 genes)."},
    "dixit": {
        "file_id": 6154416, "dataset_id": "dixit2016_gears", "perturbation_type": "knockout", "cell_type": "K562",
        "dataset_name": "Dixit 2016 K562 knockouts (GEARS)", "dataset_reference": "10.1016/j.cell.2016.11.038",
        "dataset_summary": "CRISPR knockouts of transcription factors in K562 cells, as processed by GEARS.",
        "dataset_description": "Dixit et al. 2016 knocked out transcription factors with CRISPR/Cas9 in K562 cells; "
                               "GEARS' processed file (log-normalised, about 5,000 genes)."},
    "replogle_k562_essential": {
        "file_id": 7458695, "dataset_id": "replogle2022_k562_essential_gears", "perturbation_type": "knockdown",
        "cell_type": "K562", "dataset_name": "Replogle 2022 K562 essential CRISPRi (GEARS subset)",
        "dataset_reference": "10.1016/j.cell.2022.05.013",
        "dataset_summary": "CRISPRi of common essential genes in K562 cells, GEARS' filtered subset.",
        "dataset_description": "Replogle et al. 2022 knocked down common essential genes with CRISPRi in K562 cells; "
                               "GEARS' filtered and processed subset (log-normalised)."},
    "replogle_rpe1_essential": {
        "file_id": 7458694, "dataset_id": "replogle2022_rpe1_essential_gears", "perturbation_type": "knockdown",
        "cell_type": "RPE1", "dataset_name": "Replogle 2022 RPE1 essential CRISPRi (GEARS subset)",
        "dataset_reference": "10.1016/j.cell.2022.05.013",
        "dataset_summary": "CRISPRi of common essential genes in RPE1 cells, GEARS' filtered subset.",
        "dataset_description": "Replogle et al. 2022 knocked down common essential genes with CRISPRi in RPE1 cells; "
                               "GEARS' filtered and processed subset (log-normalised)."},
}


def unpack(path: str, sha256: str, directory: str) -> str:
    """The perturb_processed.h5ad of an archive (unpacked into `directory`), a folder or the file itself."""
    if os.path.isdir(path):
        for candidate in [os.path.join(path, MEMBER)] + sorted(
                os.path.join(path, entry, MEMBER) for entry in os.listdir(path)):
            if os.path.isfile(candidate):
                return candidate
        raise SourceError(path, f"the folder holds no {MEMBER}")
    if archive_kind(path) == "hdf5":
        return path
    return extract_member(path, sha256, MEMBER, os.path.join(directory, MEMBER), log=log)[0]


dataset = DATASETS.get(par["dataset"])
if dataset is None:
    fail(f"--dataset is '{par['dataset']}', expected one of {sorted(DATASETS)}")
if not par.get("output"):
    fail("--output was not given")
try:
    cells_options = loader_options(par)
except ValueError as error:
    fail(str(error))
url = URL.format(file_id=dataset["file_id"])

try:
    if par.get("input"):
        source = par["input"]
        if not os.path.exists(source):
            raise SourceError(source, "does not exist (--input)")
        source_sha256 = sha256_file(source if os.path.isfile(source) else unpack(source, "", ""))
        log(f"using --input {source} (sha256 {source_sha256})")
        # a local archive is unpacked for this run only; a downloaded one beside the download, for reuse
        unpack_into = tempfile.mkdtemp(prefix="gears-", dir=meta.get("temp_dir") or None)
        atexit.register(shutil.rmtree, unpack_into, True)
    else:
        source, source_sha256 = fetch(url, published=dataverse_checksum(dataset["file_id"]), log=log)
        unpack_into = os.path.join(cache_root(), "extracted", source_sha256[:16])
    path = unpack(source, source_sha256, unpack_into)
    replicate_column = par.get("replicate_column") or None
    obs = read_obs(path, ["condition", "cell_type"] + ([replicate_column] if replicate_column else []))
    if replicate_column and replicate_column not in obs.columns:
        raise SourceError(path, f"obs has no replicate column '{replicate_column}' (columns: "
                                f"{obs_columns(path)[:12]}); name an existing column with --replicate_column")
    cells = harmonize_cells(path, obs, perturbation_column="condition", perturbation_type=dataset["perturbation_type"],
                            cell_type_column="cell_type", cell_type=dataset["cell_type"],
                            replicate_column=replicate_column, log=log)
    uns = {
        **{key: value for key, value in dataset.items() if key.startswith("dataset_")},
        "dataset_url": url,
        "dataset_organism": "homo_sapiens",
        "normalization_id": "log_normalized_cell_mean",
        "source_sha256": source_sha256,
        "replicate_column": replicate_column or "none",
    }
    adata = pseudobulk(path, cells, values="log", seed=int(par["seed"]), min_cells=int(par["min_cells_per_half"]),
                       n_top_genes=int(par["n_top_genes"]), genes=gene_table(path, symbol_column="gene_name"),
                       uns=uns, log=log,
                       cells_output=par.get("output_cells"), cells_options=cells_options)
    # The file's genes were chosen by GEARS on the whole screen, before any split: the card says so.
    adata.uns["gene_selection"] = (f"{GEARS_GENES} This loader keeps " + adata.uns["gene_selection"] + ".")
except (DownloadError, SourceError, OSError) as error:
    fail(str(error))

adata.uns["dataset_report"] = dataset_report(adata, log=log)
outputs.write("output", adata)
