import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_prior": None,
    "output": "prediction.h5ad",
    "n_neighbors": 10,
    "n_components": 10,
}
meta = {"name": "knn_perturbation", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, fail, log, number_argument  # noqa: E402


n_neighbors = number_argument(par, "n_neighbors", 10, int, low=1)
n_components = number_argument(par, "n_components", 10, int, low=1)

io = ComponentIO(par, meta)
train, test, profiles, contexts, targets = baselines.read_method_inputs(io)
prior = baselines.read_prior_argument(par, need_embedding=True)

deltas = profiles.deltas()
context_mean = {c: deltas[profiles.rows_in(c)].mean(axis=0) for c in profiles.contexts}
if prior is None:
    centred = deltas - np.vstack([context_mean[c] for c in profiles.obs["context"]])
    embedding = baselines.gene_pca(centred.T, n_components)
    position = {g: i for i, g in enumerate(profiles.genes)}
    source = f"training-data PCA, {embedding.shape[1]} dimensions"
else:
    try:
        baselines.check_prior_overlap(prior, profiles.obs["targets"], targets, profiles.genes)
    except baselines.InputError as error:
        fail(f"--input_prior file '{par['input_prior']}': {error}")
    embedding, position = prior.embedding, prior.position
    source = f"prior embedding, {embedding.shape[1]} dimensions"


def unit(vector):
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else None


train_units = [unit(p) if p is not None else None for p, _ in
               (baselines.embed_targets(t, position, embedding) for t in profiles.obs["targets"])]
has_embedding = np.array([u is not None for u in train_units])
E = np.vstack([u if u is not None else np.zeros(embedding.shape[1]) for u in train_units])
if not has_embedding.any():
    log("knn_perturbation: [warning] no training perturbation targets a gene with an embedding; every "
        "prediction is the training mean of its context")

X = np.empty((test.n_obs, train.n_vars), dtype=np.float64)
fell_back = np.zeros(test.n_obs, dtype=bool)
n_all_contexts = 0
mean_effects = {}
for i, (context, row_targets) in enumerate(zip(contexts, targets)):
    control = profiles.control_of(context)
    rows, searched_all = profiles.rows_or_all(context)
    n_all_contexts += searched_all
    if context not in mean_effects:
        mean_effects[context] = deltas[rows].mean(axis=0)
    mean_effect = mean_effects[context]
    candidates = rows[has_embedding[rows]]
    query, _ = baselines.embed_targets(row_targets, position, embedding)
    query = unit(query) if query is not None else None
    if query is None or len(candidates) == 0:
        fell_back[i] = True
        X[i] = control + mean_effect
        continue
    similarity = E[candidates] @ query
    k = min(n_neighbors, len(candidates))
    nearest = np.argsort(-similarity, kind="stable")[:k]
    weights = np.clip(similarity[nearest], 0.0, None)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(k, 1.0 / k)
    X[i] = control + weights @ deltas[candidates[nearest]]

log(f"knn_perturbation: {test.n_obs} test conditions from up to {n_neighbors} nearest of "
    f"{int(has_embedding.sum())} embedded training perturbations ({source}); {int(fell_back.sum())} without an "
    f"embedded target get the training mean" + (f"; {n_all_contexts} rows searched all contexts"
                                                  if n_all_contexts else ""))
io.write("output", baselines.prediction(train, test, X, meta["name"], fell_back, prior=prior))
