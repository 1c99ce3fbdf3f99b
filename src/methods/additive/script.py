import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_prior": None,
    "output": "prediction.h5ad",
}
meta = {"name": "additive", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, log, not_applicable  # noqa: E402

io = ComponentIO(par, meta)
train, test, profiles, contexts, targets = baselines.read_method_inputs(io)
if not any(len(t) >= 2 for t in targets):
    # a held-out single has no observed single to add: the model would be train_mean under another name
    not_applicable(f"none of the {test.n_obs} test conditions is a combination; on single perturbations the "
                   f"additive model is the training mean (see train_mean)")
if par.get("input_prior"):
    log("additive: --input_prior is ignored (the additive model uses no prior knowledge)")

# single-perturbation profiles per (context, gene): prefer the test row's perturbation type, else any type
singles: dict = {}
for i, (context, row_targets, kind) in enumerate(zip(profiles.obs["context"], profiles.obs["targets"],
                                                     profiles.obs["perturbation_type"])):
    if len(row_targets) == 1:
        singles.setdefault((context, row_targets[0], kind), i)
        singles.setdefault((context, row_targets[0], None), i)

deltas = profiles.deltas()
mean_effect = {}
types = test.obs["perturbation_type"].astype(str).to_numpy()
X = np.empty((test.n_obs, train.n_vars), dtype=np.float64)
counts = {"combination, all singles observed": 0, "combination, some singles replaced by the mean effect": 0,
          "combination, no single observed": 0, "single observed in training": 0,
          "single not in training (training mean)": 0}
n_fallback_context = 0
fell_back = np.zeros(test.n_obs, dtype=bool)  # a single not in training: its prediction is the training mean
for i, (context, row_targets) in enumerate(zip(contexts, targets)):
    if context not in mean_effect:
        rows, all_contexts = profiles.rows_or_all(context)
        n_fallback_context += all_contexts
        mean_effect[context] = deltas[rows].mean(axis=0)
    X[i] = profiles.control_of(context)
    found = 0
    for gene in row_targets:
        j = singles.get((context, gene, types[i]), singles.get((context, gene, None)))
        if j is None:
            X[i] += mean_effect[context]
        else:
            X[i] += deltas[j]
            found += 1
    if len(row_targets) == 1:
        counts["single observed in training" if found else "single not in training (training mean)"] += 1
        fell_back[i] = not found
    elif found == len(row_targets):
        counts["combination, all singles observed"] += 1
    elif found:
        counts["combination, some singles replaced by the mean effect"] += 1
    else:
        counts["combination, no single observed"] += 1

log("additive: " + "; ".join(f"{name}: {n}" for name, n in counts.items() if n)
    + (f"; {n_fallback_context} contexts without training perturbations use all contexts' mean effect"
       if n_fallback_context else ""))
io.write("output", baselines.prediction(train, test, X, meta["name"], fell_back))
