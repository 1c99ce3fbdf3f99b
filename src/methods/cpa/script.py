import sys

## VIASH START
par = {
    "input_train": "resources_test/norman/unseen_combination/train.h5ad",
    "input_test": "resources_test/norman/unseen_combination/test.h5ad",
    "input_train_cells": "resources_test/norman/unseen_combination/train_cells.h5ad",
    "input_prior": None,
    "output": "prediction.h5ad",
    "output_cells": None,
    "max_epochs": 200,
    "early_stopping_patience": 5,
    "batch_size": 128,
    "n_latent": 32,
    "max_cells_per_condition": 500,
    "n_query_cells": 100,
    "seed": 0,
}
meta = {"name": "cpa", "resources_dir": "src/utils", "config": None, "cpus": None, "temp_dir": "/tmp"}
## VIASH END

sys.path.append(meta["resources_dir"])

import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable, settings_from_environment  # noqa: E402

from vocabulary import NOT_INSTALLED_EXIT_CODE, TARGET_SEPARATOR  # noqa: E402

NAME = meta.get("name") or "cpa"

SETTINGS_FROM_ENVIRONMENT = settings_from_environment(par, NAME)
try:
    import anndata as ad
    import torch
    import cpa
except ImportError as error:
    print(f"[not installed] {NAME}: needs its own environment (cpa-tools 0.8.1 with numpy < 2, anndata < 0.10; "
          f"run with PERTURBCAST_ISOLATED_ENVIRONMENTS unset or 1; {error})", file=sys.stderr, flush=True)
    raise SystemExit(NOT_INSTALLED_EXIT_CODE)

# CPA's own label of the control group (the common format's `control` is vocabulary.CONTROL)
CPA_CONTROL = "ctrl"
seed = int(par.get("seed") or 0)
io = ComponentIO(par, meta)
train, test, _profiles, test_contexts, test_targets = baselines.read_method_inputs(io)
cells = io.read("input_train_cells", required_obs=("perturbation", "is_control", "cell_type", "condition"))
if list(cells.var_names) != list(train.var_names):
    fail(f"--input_train_cells file '{par['input_train_cells']}': its genes differ from --input_train's; "
         "expected the same genes in the same order")

cell_targets = [() if c else baselines.targets_of(p) for p, c in
                zip(cells.obs["perturbation"].astype(str), cells.obs["is_control"].astype(bool))]
trained_genes = {t for ts in cell_targets for t in ts}
test_genes = {t for ts in test_targets for t in ts}
if not test_genes & trained_genes:
    not_applicable(f"none of the {len(test_genes)} test target genes was perturbed in the training cells; CPA "
                   "learns one embedding per perturbed gene and cannot predict unseen perturbations")
normalization_id = baselines.cell_normalization(train)  # how its profiles are made from cells
# A target never perturbed in training has no embedding: the condition is decoded with its other targets
# only (with none left, as its context's control cells), as CPA itself cannot represent it.
known_targets = [tuple(t for t in ts if t in trained_genes) for ts in test_targets]
n_partly_unseen = sum(len(k) < len(t) for k, t in zip(known_targets, test_targets))
if n_partly_unseen:
    log(f"{NAME}: {n_partly_unseen} of {len(test_targets)} test conditions have a target never perturbed in "
        "training; it is left out of their CPA prediction")
max_comb = max([len(t) for t in cell_targets + known_targets] + [1])

rng = np.random.default_rng(seed)
torch.manual_seed(seed)
if meta.get("cpus"):
    torch.set_num_threads(int(meta["cpus"]))
label = np.array([TARGET_SEPARATOR.join(t) if t else CPA_CONTROL for t in cell_targets], dtype=object)
context = (cells.obs["cell_type"].astype(str) + "|" + cells.obs["condition"].astype(str)).to_numpy()

# training cells: a seeded sample per condition x context
keep = []
for key, rows in pd.DataFrame({"l": label, "c": context}).groupby(["l", "c"]).indices.items():
    cap = par["max_cells_per_condition"] * (4 if key[0] == CPA_CONTROL else 1)
    keep.append(np.sort(rng.choice(rows, size=min(cap, len(rows)), replace=False)))
keep = np.sort(np.concatenate(keep))
X_cells = cells.X if sp.issparse(cells.X) else sp.csr_matrix(cells.X)

# query cells: control cells of each test condition's context, relabelled with its targets
query_rows, query_labels, query_ids = [], [], []
for obs_name, ctx, targets in zip(test.obs_names.astype(str), test_contexts, known_targets):
    controls = np.flatnonzero((context == "|".join(ctx)) & (label == CPA_CONTROL))
    if len(controls) == 0:
        fail(f"--input_train_cells has no control cells of context {ctx}, which --input_test needs")
    chosen = rng.choice(controls, size=min(par["n_query_cells"], len(controls)), replace=False)
    query_rows.append(chosen)
    query_labels += [TARGET_SEPARATOR.join(targets) or CPA_CONTROL] * len(chosen)
    query_ids += [obs_name] * len(chosen)
query_rows = np.concatenate(query_rows)

obs = pd.DataFrame({
    "perturbation": list(label[keep]) + query_labels,
    "cell_type": list(cells.obs["cell_type"].astype(str).to_numpy()[np.r_[keep, query_rows]]),
    "condition": list(cells.obs["condition"].astype(str).to_numpy()[np.r_[keep, query_rows]]),
})
split = np.where(rng.random(len(keep)) < 0.1, "valid", "train")
obs["split"] = list(split) + ["ood"] * len(query_rows)
# CPA reads a SMILES string per perturbation even for genetic ones ('..'-joined per target)
obs["smiles"] = ["..".join(["C"] * len(p.split(TARGET_SEPARATOR))) for p in obs["perturbation"]]
obs.index = [f"cell{i}" for i in range(len(obs))]
adata = ad.AnnData(X=sp.vstack([X_cells[keep], X_cells[query_rows]]).tocsr().astype(np.float32), obs=obs,
                   var=pd.DataFrame(index=train.var_names.astype(str)))
covariates = [c for c in ("cell_type", "condition") if obs[c].nunique() > 1] or ["cell_type"]

work = tempfile.mkdtemp(prefix="cpa-", dir=meta.get("temp_dir") or None)
os.chdir(work)  # lightning writes its logs to the working directory
cpa.CPA.setup_anndata(adata, perturbation_key="perturbation", control_group=CPA_CONTROL, smiles_key="smiles",
                      is_count_data=False, categorical_covariate_keys=covariates, max_comb_len=max_comb)
model = cpa.CPA(adata, split_key="split", train_split="train", valid_split="valid", test_split="ood",
                n_latent=par["n_latent"], recon_loss="gauss", doser_type="linear", seed=seed)
started = time.perf_counter()
model.train(max_epochs=par["max_epochs"], use_gpu=False, batch_size=par["batch_size"],
            early_stopping_patience=par["early_stopping_patience"], check_val_every_n_epoch=1,
            enable_progress_bar=False)
log(f"{NAME}: trained on {len(keep)} cells in {time.perf_counter() - started:.0f} s")

query = adata[adata.obs["split"].to_numpy() == "ood"].copy()
model.predict(query, batch_size=par["batch_size"])
predicted = np.asarray(query.obsm["CPA_pred"], dtype=np.float32)
if not np.isfinite(predicted).all():
    fail("CPA's predictions hold non-finite values (training diverged); nothing written")
ids = np.array(query_ids, dtype=object)
X, predicted, n_clipped_share, clipped = baselines.profiles_from_predicted_cells(
    predicted, ids, test.obs_names.astype(str), NAME, normalization_id)
if clipped:
    log(clipped)

# a condition with no target CPA learned is decoded from its context's control cells alone: a fallback
fell_back = np.array([len(k) == 0 for k in known_targets], dtype=bool)
outputs = {"output": baselines.prediction(train, test, X, NAME, fell_back)}
outputs["output"].uns["n_with_unseen_target"] = int(n_partly_unseen)
outputs["output"].uns["share_clipped_at_zero"] = n_clipped_share
if SETTINGS_FROM_ENVIRONMENT:
    outputs["output"].uns["settings_from_environment"] = json.dumps(SETTINGS_FROM_ENVIRONMENT)
if par.get("output_cells"):
    cell_obs = pd.DataFrame({"condition_id": ids}, index=[f"pred{i}" for i in range(len(ids))])
    outputs["output_cells"] = ad.AnnData(X=predicted, obs=cell_obs,
                                         var=pd.DataFrame(index=train.var_names.astype(str)),
                                         uns=dict(outputs["output"].uns))
io.write_all(outputs)
