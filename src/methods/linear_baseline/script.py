import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_prior": None,
    "output": "prediction.h5ad",
    "n_components": 10,
    "ridge_penalty": 0.1,
    "min_context_perturbations": 20,
}
meta = {"name": "linear_baseline", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, fail, log, number_argument  # noqa: E402


n_components = number_argument(par, "n_components", 10, int, low=1)
ridge_penalty = number_argument(par, "ridge_penalty", 0.1, float, low=0.0)
min_context = number_argument(par, "min_context_perturbations", 20, int, low=2)

io = ComponentIO(par, meta)
train, test, profiles, contexts, targets = baselines.read_method_inputs(io)
prior = baselines.read_prior_argument(par, need_embedding=True)

genes = profiles.genes
gene_position = {g: i for i, g in enumerate(genes)}
if prior is not None:
    try:
        n_train_overlap, n_test_overlap, n_test_targets = baselines.check_prior_overlap(
            prior, profiles.obs["targets"], targets, genes)
    except baselines.InputError as error:
        fail(f"--input_prior file '{par['input_prior']}': {error}")
    log(f"linear_baseline: prior with {len(prior.genes)} genes x {prior.embedding.shape[1]} dimensions covers "
        f"{n_train_overlap} training targets and {n_test_overlap} of {n_test_targets} test targets")
    if n_test_overlap == 0:
        log("linear_baseline: [warning] the prior has no test target: every test condition gets the training "
            "mean (b + baseline)")

deltas = profiles.deltas()                      # conditions x genes: profile - control of its context
context_mean = {c: deltas[profiles.rows_in(c)].mean(axis=0) for c in profiles.contexts}
pooled_mean = deltas.mean(axis=0)


class Model:
    """One fit of Y ~ G W P on the training conditions `rows` (one or several contexts)."""

    def __init__(self, rows, label):
        # Y: genes x conditions, each condition's delta minus the mean delta of its own context (b).
        Y = (deltas[rows] - np.vstack([context_mean[c] for c in profiles.obs["context"].iloc[rows]])).T
        # G as the authors compute it: PCA of the training pseudobulk *expression* (genes x conditions, the
        # control profile of each context included as a column), each column centred over the genes
        model_contexts = sorted(set(profiles.obs["context"].iloc[rows]))
        expression = np.vstack([profiles.X[rows]] + [profiles.control_of(c)[None, :] for c in model_contexts]).T
        self.G = baselines.gene_pca(expression, n_components)
        if prior is None:
            self.embedding, self.position = self.G, gene_position
        else:
            self.embedding, self.position = prior.embedding, prior.position
        columns = [baselines.embed_targets(t, self.position, self.embedding)[0]
                   for t in profiles.obs["targets"].iloc[rows]]
        self.n_without = sum(1 for p in columns if p is None)
        width = self.embedding.shape[1]
        P = np.column_stack([np.zeros(width) if p is None else p for p in columns])
        self.W = baselines.ridge_bilinear(self.G, Y, P, ridge_penalty)
        self.label, self.n = label, len(rows)
        log(f"linear_baseline: model '{label}': {len(rows)} training conditions, K = {self.G.shape[1]}, "
            f"P width {width}; {self.n_without} training conditions have no target embedding (P = 0)")
        if self.n_without == len(rows):
            log(f"linear_baseline: [warning] model '{label}': no training perturbation targets a gene with an "
                "embedding, so W = 0 and every prediction is the training mean (b + baseline)")


models, pooled = {}, None
for context in sorted(set(contexts)):
    rows = profiles.rows_in(context)
    if len(rows) >= min_context:
        models[context] = Model(rows, "|".join(context))
    else:
        if pooled is None:
            pooled = Model(np.arange(profiles.n_conditions), "pooled")
        models[context] = pooled
        log(f"linear_baseline: context {'|'.join(context)} has {len(rows)} training perturbations "
            f"(< --min_context_perturbations {min_context}); using the model pooled over all contexts")

X = np.empty((test.n_obs, len(genes)), dtype=np.float64)
fell_back = np.zeros(test.n_obs, dtype=bool)
n_partial = n_zero_model = 0
for i, (context, row_targets) in enumerate(zip(contexts, targets)):
    model = models[context]
    b = context_mean.get(context, pooled_mean)
    X[i] = profiles.control_of(context) + b
    p, missing = baselines.embed_targets(row_targets, model.position, model.embedding)
    if p is None or model.n_without == model.n:  # no embedded target, or W = 0: the term below adds nothing
        fell_back[i] = True
        n_zero_model += p is not None
        continue
    n_partial += missing > 0
    X[i] += model.G @ (model.W @ p)

log(f"linear_baseline: predicted {test.n_obs} test conditions; {int(fell_back.sum())} get the training mean "
    f"(b + baseline): {int(fell_back.sum()) - n_zero_model} have no target with an embedding"
    + (f", {n_zero_model} use a model with W = 0" if n_zero_model else "")
    + (f"; {n_partial} combinations use only their targets that have one" if n_partial else ""))
io.write("output", baselines.prediction(train, test, X, meta["name"], fell_back, prior=prior))
