import sys

## VIASH START
par = {
    "input_train": "resources_test/norman/unseen_combination/train.h5ad",
    "input_test": "resources_test/norman/unseen_combination/test.h5ad",
    "input_train_cells": "resources_test/norman/unseen_combination/train_cells.h5ad",
    "input_prior": None,
    "go_annotation": None,
    "output": "prediction.h5ad",
    "output_cells": None,
    "epochs": 20,
    "hidden_size": 64,
    "batch_size": 32,
    "learning_rate": 0.001,
    "max_cells_per_condition": 500,
    "seed": 0,
}
meta = {"name": "gears", "resources_dir": "src/utils", "config": None, "cpus": None, "temp_dir": "/tmp"}
## VIASH END

sys.path.append(meta["resources_dir"])

import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import baselines  # noqa: E402
import go_annotation  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable, settings_from_environment  # noqa: E402

from vocabulary import NOT_INSTALLED_EXIT_CODE  # noqa: E402

NAME = meta.get("name") or "gears"

SETTINGS_FROM_ENVIRONMENT = settings_from_environment(par, NAME)
try:
    import anndata as ad
    import torch
    from gears import GEARS, PertData
except ImportError as error:
    print(f"[not installed] {NAME}: needs the 'gears' extra (pip install 'perturbcast[gears]'; {error})",
          file=sys.stderr, flush=True)
    raise SystemExit(NOT_INSTALLED_EXIT_CODE)

# scipy >= 1.15 no longer indexes a sparse matrix by a pandas boolean Series (GEARS does, e.g. in
# `GEARS.__init__`: `adata.X[adata.obs.condition == 'ctrl']`); the Series is handed over as its array.
def _series_as_array(getitem):
    def __getitem__(self, key):
        return getitem(self, key.to_numpy() if hasattr(key, "to_numpy") else key)
    return __getitem__


for _kind in (sp.csr_matrix, sp.csr_array):
    _kind.__getitem__ = _series_as_array(_kind.__getitem__)


io = ComponentIO(par, meta)
train, test, _profiles, test_contexts, test_targets = baselines.read_method_inputs(io)
cells = io.read("input_train_cells", required_obs=("perturbation", "is_control", "cell_type", "condition"))
if list(cells.var_names) != list(train.var_names):
    fail(f"--input_train_cells file '{par['input_train_cells']}': its genes differ from --input_train's; "
         "expected the same genes in the same order")
if not sp.issparse(cells.X):
    cells.X = sp.csr_matrix(cells.X)
rng = np.random.default_rng(par.get("seed") or 0)
torch.manual_seed(par.get("seed") or 0)
np.random.seed(par.get("seed") or 0)  # GEARS draws the control cells it predicts from with np.random
if meta.get("cpus"):
    torch.set_num_threads(int(meta["cpus"]))

# ---------------------------------------------------------------- the gene -> GO map
organism = str(train.uns.get("dataset_organism", "homo_sapiens"))
if organism not in ("homo_sapiens", "human"):
    # GEARS' GO graph is built from human gene annotation: other organisms (the simulator's synthetic genes)
    # cannot be represented, and there is no need to fetch the map to know it
    not_applicable(f"the dataset's organism is '{organism}'; GEARS' perturbation graph is built from human "
                   "GO annotation (Gene Ontology)")
try:
    # the table given, else $PERTURBCAST_GO_ANNOTATION's, else GEARS' published map (download, checked)
    gene2go, _source = go_annotation.load(par.get("go_annotation"), NAME, "--go_annotation", log)
except go_annotation.AnnotationError as error:
    fail(str(error))

cell_targets = [baselines.targets_of(p) if not c else () for p, c in
                zip(cells.obs["perturbation"].astype(str), cells.obs["is_control"].astype(bool))]
all_targets = {t for ts in cell_targets for t in ts} | {t for ts in test_targets for t in ts}
if not all_targets & set(gene2go):
    not_applicable(f"none of the {len(all_targets)} target genes (e.g. {sorted(all_targets)[0]}) has a GO "
                   "annotation; GEARS' perturbation graph cannot represent them")
normalization_id = baselines.cell_normalization(train)  # how its profiles are made from cells


def gears_condition(targets) -> str | None:
    """GEARS' condition label, or None when GEARS cannot represent it (more than two targets, or a
    target outside its GO graph: GEARS' `PertData.load` drops such conditions)."""
    if not targets:
        return "ctrl"
    if len(targets) > 2 or any(t not in gene2go for t in targets):
        return None
    return "+".join(targets) if len(targets) == 2 else f"{targets[0]}+ctrl"


cell_context = list(zip(cells.obs["cell_type"].astype(str), cells.obs["condition"].astype(str)))
labels = np.array([gears_condition(t) or "" for t in cell_targets], dtype=object)
contexts = sorted(set(cell_context))
work = tempfile.mkdtemp(prefix="gears-", dir=meta.get("temp_dir") or None)
os.makedirs(os.path.join(work, "data"), exist_ok=True)
# GEARS' `make_GO` writes ./data/go_essential_<name>.csv, so it runs in its own folder
os.chdir(work)
with open(os.path.join(work, "gene2go_all.pkl"), "wb") as handle:
    pickle.dump(gene2go, handle)  # PertData reads it from its data path instead of downloading


def gears_anndata(rows, name: str):
    obs = cells.obs.iloc[rows][[]].copy()
    obs["condition"] = labels[rows]
    obs["cell_type"] = name
    var = cells.var[[]].copy()
    var["gene_name"] = cells.var_names.astype(str)
    return ad.AnnData(X=sp.csr_matrix(cells.X[rows].astype(np.float32)), obs=obs, var=var)


def train_model(index: int, context):
    in_context = np.array([c == context for c in cell_context])
    rows = []
    for label in sorted(set(labels[in_context]) - {""}):
        members = np.flatnonzero(in_context & (labels == label))
        cap = par["max_cells_per_condition"] * (4 if label == "ctrl" else 1)
        rows.append(np.sort(rng.choice(members, size=min(cap, len(members)), replace=False)))
    rows = np.concatenate(rows) if rows else np.array([], dtype=int)
    if (labels[rows] == "ctrl").sum() == 0 or len(set(labels[rows]) - {"ctrl"}) < 2:
        return None
    adata = gears_anndata(rows, f"context{index}")
    # GEARS' graph covers the genes of its gene set: the measured genes and every target, held-out ones
    # included, so that an unseen target gets its embedding through its GO neighbours (GEARS' own way)
    gene_set = os.path.join(work, "gene_set.pkl")
    with open(gene_set, "wb") as handle:
        pickle.dump(sorted(set(cells.var_names.astype(str)) | all_targets), handle)
    pert_data = PertData(work, gene_set_path=gene_set, default_pert_graph=False)
    pert_data.new_data_process(dataset_name=f"context{index}", adata=adata)
    pert_data.prepare_split(split="no_test", seed=par.get("seed") or 0)
    pert_data.get_dataloader(batch_size=par["batch_size"], test_batch_size=par["batch_size"])
    model = GEARS(pert_data, device="cpu")
    model.model_initialize(hidden_size=par["hidden_size"])
    started = time.perf_counter()
    model.train(epochs=par["epochs"], lr=par["learning_rate"])
    log(f"{NAME}: context {context}: trained on {len(rows)} cells, {len(set(labels[rows])) - 1} conditions "
        f"in {time.perf_counter() - started:.0f} s")
    return model


def predict_cells(model, targets) -> np.ndarray:
    """GEARS.predict's own steps for one perturbation (its graphs of 300 control cells drawn by
    create_cell_graph_dataset_for_prediction, its best model) keeping the predicted cells rather than their mean,
    so that the profile is made from them as the dataset's profiles are made from cells."""
    from gears.utils import create_cell_graph_dataset_for_prediction
    from torch_geometric.loader import DataLoader

    controls = model.adata[(model.adata.obs["condition"] == "ctrl").to_numpy()]
    graphs = create_cell_graph_dataset_for_prediction(list(targets), controls, model.pert_list, model.device)
    batch = next(iter(DataLoader(graphs, 300, shuffle=False))).to(model.device)
    network = model.best_model.to(model.device)
    network.eval()
    with torch.no_grad():
        output = network(batch)
    return (output[0] if model.config["uncertainty"] else output).detach().cpu().numpy()


def control_cells(context):
    rows = np.flatnonzero(np.array([c == context for c in cell_context]) & (labels == "ctrl"))
    return rows


models = {}
for index, context in enumerate(contexts):
    if any(c == context for c in test_contexts):
        models[context] = train_model(index, context)
trained = [m for m in models.values() if m is not None]
if not trained:
    fail(f"--input_train_cells file '{par['input_train_cells']}': no context has controls and at least two "
         "training conditions GEARS can represent")
fallback_model = trained[0]

X = np.empty((test.n_obs, train.n_vars))
n_without_go = 0
fell_back = np.zeros(test.n_obs, dtype=bool)  # predicted as the context's control cells
predicted_cells, predicted_ids = [], []  # kept for --output_cells
for row, (context, targets) in enumerate(zip(test_contexts, test_targets)):
    controls = control_cells(context)
    if len(controls) == 0:
        fail(f"--input_train_cells has no control cells of context {context}, which --input_test needs")
    model = models.get(context) or fallback_model
    if gears_condition(targets) is None or any(t not in model.pert_list for t in targets):
        n_without_go += 1
        fell_back[row] = True
        X[row] = baselines.profile_of_cells(cells.X[controls], normalization_id)
        log(f"{NAME}: {'+'.join(targets)} in {context}: a target is outside GEARS' GO graph (or more than two "
            "targets); predicted as the profile of the context's control cells")
        if par.get("output_cells"):  # its cells: as many of the control cells as GEARS predicts from (300)
            chosen = np.sort(np.random.default_rng(row).choice(controls, min(300, len(controls)), replace=False))
            block = cells.X[chosen]
            predicted_cells.append(np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float32))
            predicted_ids += [test.obs_names[row]] * len(chosen)
        continue
    own_adata = model.adata
    if models.get(context) is None:
        # a context with controls but no trained model (cell_type_transfer): GEARS' network adds the
        # perturbation's effect to each control cell it is given, so it gets this context's controls
        model.adata = gears_anndata(controls, "transfer")
    made = predict_cells(model, targets)
    X[row] = baselines.profile_of_cells(made, normalization_id)
    model.adata = own_adata
    if par.get("output_cells"):
        predicted_cells.append(np.asarray(made, dtype=np.float32))
        predicted_ids += [test.obs_names[row]] * len(made)

log(f"{NAME}: {n_without_go} of {test.n_obs} test conditions have a target outside GEARS' GO graph")
# GEARS adds an unbounded predicted change to each control cell: for lowly expressed genes the result can
# go below 0, which log-normalised expression cannot be (Norman devel, 97% zeros, one epoch: the negatives
# summed to 51% of the positives on one fold and the output failed its format check). Clipped at 0; logged.
# The profiles are clipped after averaging (as baselines.profiles_from_predicted_cells does for CPA and
# scGPT), the written cells each.
share_clipped = float((X < 0).mean())
if share_clipped:
    log(f"{NAME}: {100 * share_clipped:.1f}% of the predicted values were below 0 (most negative {float(X.min()):.3f}); "
        "clipped at 0 (log-normalised expression)")
    X = np.clip(X, 0.0, None)
output = baselines.prediction(train, test, X, NAME, fell_back)
output.uns["n_without_go"] = int(n_without_go)
output.uns["share_clipped_at_zero"] = share_clipped
if SETTINGS_FROM_ENVIRONMENT:
    output.uns["settings_from_environment"] = json.dumps(SETTINGS_FROM_ENVIRONMENT)
outputs = {"output": output}
if par.get("output_cells"):
    cell_obs = pd.DataFrame({"condition_id": np.asarray(predicted_ids, dtype=object)},
                            index=[f"pred{i}" for i in range(len(predicted_ids))])
    outputs["output_cells"] = ad.AnnData(X=np.clip(np.vstack(predicted_cells), 0.0, None), obs=cell_obs,
                                         var=pd.DataFrame(index=train.var_names.astype(str)), uns=dict(output.uns))
io.write_all(outputs)
