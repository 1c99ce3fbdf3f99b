import os
import sys

## VIASH START
par = {
    "output": "output/datlinger2017.h5ad",
    "study": "DatlingerBock2017",
    "input": None,
    "perturbation_column": "perturbation",
    "cell_type_column": "cell_line",
    "cell_type": None,
    "condition_column": None,
    "control_label": None,
    "perturbation_type": None,
    "replicate_column": None,
    "seed": 0,
    "n_top_genes": 2000,
    "min_cells_per_half": 10,
    "normalization": "log_cp10k_cell_mean",
    "output_cells": None,
    "max_cells_per_condition": 500,
    "max_control_cells": 2000,
    "cells_seed": 0,
}
meta = {"name": "scperturb", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

from cell_files import loader_options  # noqa: E402
from component_io import ComponentIO, fail, log  # noqa: E402
from dataset_report import dataset_report  # noqa: E402
from download import DownloadError, fetch, sha256_file, zenodo_checksum  # noqa: E402
from harmonize import DEFAULT_DROP_PART  # noqa: E402
from pseudobulk import (COUNT_NORMALIZATIONS, SourceError, count_normalization, gene_table, harmonize_cells,  # noqa: E402
                        obs_columns, pseudobulk, read_obs)

# Outputs are checked now (not an input, writable), not after the slow part.
outputs = ComponentIO(par, meta)

RECORD = 13350497
URL = "https://zenodo.org/records/{record}/files/{study}.h5ad"
SCPERTURB_DOI = "10.1038/s41592-023-02144-y"

# What scPerturb's files do not say, or say too coarsely, about the studies listed in info.datasets.
# perturbation_type: the screen's modality (scPerturb writes `CRISPR` for CRISPRi screens such as Adamson's).
# replicate_column / replicate_unit: the obs column whose labels are whole replicates, where one is known
# (sources in the config's description); a file of the study without that column falls back to random halves.
STUDIES = {
    "NormanWeissman2019_filtered": {
        "id": "norman2019", "name": "Norman 2019 K562 CRISPRa (scPerturb)", "doi": "10.1126/science.aax4438",
        "perturbation_type": "activation", "replicate_column": "gemgroup", "replicate_unit": "10x GEM group (lane)",
        "summary": "CRISPRa of 105 genes and 131 gene pairs in K562 cells (Perturb-seq).",
        "description": "Norman et al. 2019 activated single genes and pairs of genes with CRISPRa in K562 cells to "
                       "map genetic interactions; the standard benchmark for combination effects."},
    "AdamsonWeissman2016_GSM2406681_10X010": {
        "id": "adamson2016", "name": "Adamson 2016 K562 UPR CRISPRi (scPerturb)", "doi": "10.1016/j.cell.2016.11.048",
        "perturbation_type": "knockdown", "control_labels": ["62(mod)", "63(mod)"],
        "summary": "CRISPRi of about 90 unfolded-protein-response genes in K562 cells (Perturb-seq).",
        "description": "Adamson et al. 2016 knocked down genes of the unfolded protein response with CRISPRi in "
                       "K562 cells (GSM2406681). Labels are guide identities; plasmid ids are dropped and the "
                       "non-targeting guides 62(mod) and 63(mod) are controls."},
    "ReplogleWeissman2022_K562_essential": {
        "id": "replogle2022_k562_essential", "name": "Replogle 2022 K562 essential CRISPRi (scPerturb)",
        "doi": "10.1016/j.cell.2022.05.013", "perturbation_type": "knockdown",
        "summary": "CRISPRi of about 2,000 common essential genes in K562 cells (Perturb-seq).",
        "description": "Replogle et al. 2022 knocked down every common essential gene with CRISPRi in K562 cells, "
                       "about 300,000 cells."},
    "ReplogleWeissman2022_rpe1": {
        "id": "replogle2022_rpe1", "name": "Replogle 2022 RPE1 essential CRISPRi (scPerturb)",
        "doi": "10.1016/j.cell.2022.05.013", "perturbation_type": "knockdown", "cell_type": "RPE1",
        "summary": "CRISPRi of about 2,000 common essential genes in RPE1 cells (Perturb-seq).",
        "description": "Replogle et al. 2022 knocked down the common essential genes with CRISPRi in "
                       "non-transformed hTERT-RPE1 cells, the same library as in K562, so effects can be "
                       "transferred between the two lines."},
    "ReplogleWeissman2022_K562_gwps": {
        "id": "replogle2022_k562_gwps", "name": "Replogle 2022 K562 genome-wide CRISPRi (scPerturb)",
        "doi": "10.1016/j.cell.2022.05.013", "perturbation_type": "knockdown",
        "summary": "Genome-wide CRISPRi of about 10,000 expressed genes in K562 cells (Perturb-seq).",
        "description": "Replogle et al. 2022 knocked down every expressed gene with CRISPRi in K562 cells, about "
                       "two million cells; the loader streams it in bounded memory."},
    "DixitRegev2016": {
        "id": "dixit2016", "name": "Dixit 2016 K562 transcription-factor knockouts (scPerturb)",
        "doi": "10.1016/j.cell.2016.11.038", "perturbation_type": "knockout",
        "summary": "CRISPR knockouts of transcription factors in K562 cells (Perturb-seq).",
        "description": "Dixit et al. 2016 knocked out transcription factors with CRISPR/Cas9 in K562 cells, some "
                       "cells carrying several guides."},
    "FrangiehIzar2021_RNA": {
        "id": "frangieh2021", "name": "Frangieh 2021 melanoma knockouts under immune pressure (scPerturb)",
        "doi": "10.1038/s41588-021-00779-1", "perturbation_type": "knockout", "condition_column": "perturbation_2",
        "summary": "CRISPR knockouts of 248 genes in melanoma cells alone, with IFN-gamma or with T cells (Perturb-CITE-seq).",
        "description": "Frangieh et al. 2021 knocked out immune-evasion genes in patient-derived melanoma cells "
                       "cultured alone, with interferon-gamma or with autologous tumour-infiltrating lymphocytes "
                       "(the condition)."},
    "TianKampmann2021_CRISPRi": {
        "id": "tian2021_crispri", "name": "Tian 2021 iPSC-derived neuron CRISPRi (scPerturb)",
        "doi": "10.1038/s41593-021-00862-0", "perturbation_type": "knockdown",
        "summary": "CRISPRi in human iPSC-derived neurons (CROP-seq).",
        "description": "Tian et al. 2021 knocked down genes with CRISPRi in iPSC-derived neurons."},
    "TianKampmann2021_CRISPRa": {
        "id": "tian2021_crispra", "name": "Tian 2021 iPSC-derived neuron CRISPRa (scPerturb)",
        "doi": "10.1038/s41593-021-00862-0", "perturbation_type": "activation",
        "summary": "CRISPRa in human iPSC-derived neurons (CROP-seq).",
        "description": "Tian et al. 2021 activated genes with CRISPRa in iPSC-derived neurons."},
    "PapalexiSatija2021_eccite_RNA": {
        "id": "papalexi2021", "name": "Papalexi 2021 THP-1 ECCITE-seq knockouts (scPerturb)",
        "doi": "10.1038/s41588-021-00778-2", "perturbation_type": "knockout",
        "summary": "CRISPR knockouts of immune-checkpoint regulators in stimulated THP-1 cells (ECCITE-seq).",
        "description": "Papalexi et al. 2021 knocked out regulators of PD-L1 in interferon-gamma stimulated THP-1 "
                       "cells and measured RNA and surface proteins."},
    "DatlingerBock2017": {
        "id": "datlinger2017", "name": "Datlinger 2017 Jurkat CROP-seq with and without TCR stimulation (scPerturb)",
        "doi": "10.1038/nmeth.4177", "perturbation_type": "knockout", "cell_type": "Jurkat",
        "condition_column": "perturbation_2", "replicate_column": "replicate", "replicate_unit": "experimental replicate",
        "summary": "CRISPR knockouts of T-cell receptor signalling genes in Jurkat cells, stimulated or not (CROP-seq).",
        "description": "Datlinger et al. 2017 knocked out genes of T-cell receptor signalling with CROP-seq in Jurkat "
                       "cells and measured them with and without TCR stimulation (the condition)."},
}

study_name = str(par["study"]).strip()
if study_name.endswith(".h5ad"):
    study_name = study_name[: -len(".h5ad")]
if not study_name or "/" in study_name:
    fail(f"--study is '{par['study']}', expected a file name of Zenodo record {RECORD}, e.g. NormanWeissman2019_filtered")
if not par.get("output"):
    fail("--output was not given")
try:
    cells_options = loader_options(par)
    normalization = count_normalization(par.get("normalization"))
except ValueError as error:
    fail(str(error))
known = STUDIES.get(study_name, {})
if not known:
    log(f"study '{study_name}' is not one of the listed studies; using the column arguments as given")
url = URL.format(record=RECORD, study=study_name)


def setting(argument: str, key: str):
    """An argument if given, else the known study's value."""
    value = par.get(argument)
    return value if value not in (None, [], "") else known.get(key)


try:
    if par.get("input"):
        path = par["input"]
        if not os.path.isfile(path):
            raise SourceError(path, "file does not exist (--input)")
        source_sha256 = sha256_file(path)
        log(f"using --input {path} (sha256 {source_sha256})")
    else:
        path, source_sha256 = fetch(url, published=zenodo_checksum(RECORD, f"{study_name}.h5ad"), log=log)
    condition_column = setting("condition_column", "condition_column")
    replicate_column = setting("replicate_column", "replicate_column")
    named = par.get("replicate_column") not in (None, "")  # `none` turns a known study's column off
    if str(replicate_column).strip().lower() == "none":
        replicate_column = None
    wanted = [par["perturbation_column"], "perturbation_type", par["cell_type_column"], condition_column,
              replicate_column, "organism"]
    obs = read_obs(path, [c for c in wanted if c])
    if named and replicate_column and replicate_column not in obs.columns:
        raise SourceError(path, f"obs has no replicate column '{replicate_column}' (columns: "
                                f"{obs_columns(path)[:12]}); name an existing column with --replicate_column")
    if replicate_column and replicate_column not in obs.columns:
        log(f"obs has no column '{replicate_column}' with the replicates of study {study_name}; "
            "each condition's cells are split into seeded random halves instead")
        replicate_column = None
    replicate_unit = (known.get("replicate_unit") if replicate_column == known.get("replicate_column")
                      else None) or "the source's replicate label"
    if par["perturbation_column"] not in obs.columns:
        raise SourceError(path, f"obs has no perturbation column '{par['perturbation_column']}' (columns: "
                                f"{obs_columns(path)[:12]}); name it with --perturbation_column")
    perturbation_type = setting("perturbation_type", "perturbation_type")
    cells = harmonize_cells(
        path, obs, perturbation_column=par["perturbation_column"], perturbation_type_column="perturbation_type",
        perturbation_type=perturbation_type, cell_type_column=par["cell_type_column"],
        cell_type=setting("cell_type", "cell_type"), condition_column=condition_column,
        control_labels=list(setting("control_label", "control_labels") or []), separators=("+", "_"),
        drop_part=DEFAULT_DROP_PART, replicate_column=replicate_column, log=log)
    organisms = obs["organism"].dropna().astype(str).str.lower().value_counts() if "organism" in obs else []
    organism = {"human": "homo_sapiens", "homo sapiens": "homo_sapiens", "mouse": "mus_musculus",
                "mus musculus": "mus_musculus"}.get(organisms.index[0] if len(organisms) else "human", "homo_sapiens")
    uns = {
        "dataset_id": known.get("id", f"scperturb_{study_name.lower()}"),
        "dataset_name": known.get("name", f"{study_name} (scPerturb)"),
        "dataset_summary": known.get("summary", f"The scPerturb study {study_name}."),
        "dataset_description": (known.get("description", f"The study {study_name} of the scPerturb RNA collection.")
                                + " Raw UMI counts of scPerturb's harmonised file (Zenodo record "
                                f"{RECORD}) summed per condition and "
                                + (f"replicate (obs['{replicate_column}']: {replicate_unit})" if replicate_column
                                   else "seeded random half of its cells")
                                + f"; {COUNT_NORMALIZATIONS[normalization]} (`{normalization}`)."),
        "dataset_url": url,
        "dataset_reference": known.get("doi", SCPERTURB_DOI),
        "dataset_organism": organism,
        "normalization_id": normalization,
        "source_sha256": source_sha256,
        "replicate_column": replicate_column or "none",
    }
    adata = pseudobulk(path, cells, values="counts", seed=int(par["seed"]), min_cells=int(par["min_cells_per_half"]),
                       n_top_genes=int(par["n_top_genes"]), genes=gene_table(path), uns=uns, log=log,
                       cells_output=par.get("output_cells"), cells_options=cells_options, normalization=normalization)
except (DownloadError, SourceError, OSError) as error:
    fail(str(error))

adata.uns["dataset_report"] = dataset_report(adata, log=log)
outputs.write("output", adata)
