import sys

## VIASH START
par = {
    "input": "resources_test/simulated_grn/common_dataset.h5ad",
    "input_reference": "resources_test/simulated_grn/reference_dataset.h5ad",
    "output": "prior.h5ad",
    "n_components": 10,
}
meta = {"name": "other_dataset_pca", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import math  # noqa: E402

import baselines  # noqa: E402
import pca_prior  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable, number_argument  # noqa: E402

NAME = meta.get("name") or "other_dataset_pca"
# At least this share of the dataset's perturbation targets (and at least one) must get an embedding row: the
# methods that read an embedding place a perturbation only through its targets' rows (see the config).
MIN_TARGET_SHARE = 0.10
# Fewer shared genes than this means another organism or gene naming (a PCA row of one gene says nothing).
MIN_SHARED_GENES = 2

n_components = number_argument(par, "n_components", 10, int, low=1)

io = ComponentIO(par, meta)
dataset = io.read("input", required_obs=("perturbation",))
reference = io.read("input_reference", required_obs=pca_prior.REQUIRED_OBS)

dataset_id = str(dataset.uns.get("dataset_id", ""))
reference_id = str(reference.uns.get("dataset_id", ""))
if dataset_id and dataset_id == reference_id:
    # built from the benchmarked dataset, the embedding would have seen the held-out perturbations' responses
    fail(f"--input_reference file '{par['input_reference']}': uns['dataset_id'] is '{reference_id}', the same "
         f"as --input's; the reference must be another dataset (one of info.reference_datasets)")

# The gene universe, names only: measured genes, then every target named in the perturbation labels
measured = [str(g) for g in dataset.var_names]
targets = baselines.target_genes_of_dataset(par, dataset)
reference_genes = {str(g) for g in reference.var_names}
n_measured = sum(g in reference_genes for g in measured)
covered_targets = [t for t in targets if t in reference_genes]
universe = set(measured) | set(targets)
n_shared = len(universe & reference_genes)
log(f"{NAME}: reference {reference_id or par['input_reference']} ({reference.n_vars} genes) covers {n_measured} of "
    f"{len(measured)} measured genes and {len(covered_targets)} of {len(targets)} perturbation targets of "
    f"{dataset_id or par['input']}" + (f" (e.g. {', '.join(covered_targets[:5])})" if covered_targets else ""))

needed = max(1, math.ceil(MIN_TARGET_SHARE * len(targets)))
if n_shared < MIN_SHARED_GENES:
    not_applicable(f"the reference {reference_id} shares {n_shared} genes with the {len(universe)} genes of "
                   f"{dataset_id} (e.g. {', '.join(measured[:3])} vs {', '.join(sorted(reference_genes)[:3])}); "
                   "another organism or gene naming")
if len(covered_targets) < needed:
    not_applicable(f"the reference {reference_id} measures {len(covered_targets)} of the {len(targets)} perturbation "
                   f"targets of {dataset_id} (fewer than {needed}, {MIN_TARGET_SHARE:.0%}): methods would fall back "
                   "for almost every condition")

try:
    prior, n_conditions = pca_prior.pca_prior(reference, n_components, prior_id=NAME)
except baselines.InputError as error:
    fail(f"--input_reference file '{par['input_reference']}': {error}")
k = prior.n_obs
if k < n_components:
    log(f"{NAME}: [warning] --n_components {n_components} capped at {k} (the reference has {n_conditions} "
        f"conditions and {reference.n_vars} genes)")
log(f"{NAME}: embedding of {prior.n_vars} genes x {k} dimensions from {n_conditions} conditions of {reference_id}")

prior.uns.update({
    "prior_id": NAME, "n_components": int(k), "gene_universe_dataset_id": dataset_id,
    "n_measured_genes": int(len(measured)), "n_measured_covered": int(n_measured),
    "n_targets": int(len(targets)), "n_targets_covered": int(len(covered_targets)),
})
io.write("output", prior)
