import sys

## VIASH START
par = {
    "input": "resources_test/simulated_grn/common_dataset.h5ad",
    "input_prior_file": "resources_test/simulated_grn/prior_file.h5ad",
    "output": "prior.h5ad",
    "prior_id": None,
}
meta = {"name": "prior_file", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import os  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, fail, log  # noqa: E402
from formats import FormatError, check_anndata, read_h5ad  # noqa: E402

NAME = meta.get("name") or "prior_file"
path = par["input_prior_file"]
where = f"--input_prior_file file '{path}'"

io = ComponentIO(par, meta)
dataset = io.read("input", required_obs=("perturbation",))

# The slots a method reads (varm['gene_embedding'], var['is_regulator'], varp['network']) are checked as the
# methods check them, so that a file this component accepts is one every method can read ...
try:
    prior = baselines.read_prior(path)
except baselines.InputError as error:
    fail(f"{where}: {error}")
if prior.embedding is None and prior.is_regulator is None and prior.network is None:
    fail(f"{where}: has none of varm['gene_embedding'], var['is_regulator'], varp['network']; a prior needs at "
         "least one (src/api/file_prior.yaml)")
if prior.network is not None and prior.network.shape != (len(prior.genes), len(prior.genes)):
    fail(f"{where}: varp['network'] has shape {prior.network.shape}, expected genes x genes")
# ... and the rest against the contract with the project's format checker (uns ids, column types)
try:
    adata = read_h5ad(path)
    problems = check_anndata(adata, io.specs["output"]["info"]["format"])  # the output merges file_prior.yaml
    if problems:
        raise FormatError(path, problems)
except FormatError as error:
    fail(f"--input_prior_file {error}")

measured = [str(g) for g in dataset.var_names]
targets = baselines.target_genes_of_dataset(par, dataset)
known = set(prior.genes)
n_measured, n_targets = sum(g in known for g in measured), sum(t in known for t in targets)
if n_measured == 0 and n_targets == 0:
    example = ", ".join(list(prior.genes[:3]))
    fail(f"{where}: none of its {len(known)} genes (e.g. {example}) is a gene or perturbation target of the "
         f"dataset (e.g. {', '.join(measured[:3])}); is it for another organism or gene naming?")
slots = [s for s, v in (("varm['gene_embedding']", prior.embedding), ("var['is_regulator']", prior.is_regulator),
                        ("varp['network']", prior.network)) if v is not None]
log(f"{NAME}: {path}: {len(known)} genes with {', '.join(slots)}; covers {n_measured} of {len(measured)} measured "
    f"genes and {n_targets} of {len(targets)} perturbation targets of {dataset.uns.get('dataset_id', 'the dataset')}")

# written as given (no gene is dropped: methods use the overlap); only a missing prior_id is named after the file
if par.get("prior_id"):
    adata.uns["prior_id"] = str(par["prior_id"])
elif "prior_id" not in adata.uns:
    adata.uns["prior_id"] = os.path.splitext(os.path.basename(path))[0]
io.write("output", adata)
