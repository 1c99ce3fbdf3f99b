import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_solution": "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
    "output": "prediction.h5ad",
    "n_draws": 20,
    "seed": 0,
}
meta = {"name": "replicate_ceiling", "resources_dir": "src/utils", "config": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import baselines  # noqa: E402
import cell_distances as cd  # noqa: E402
import deltas  # noqa: E402
from component_io import ComponentIO, log, number_argument  # noqa: E402

# The draws of one prediction stay below this many bytes (float32), whatever the size of the split.
MAX_DRAW_BYTES = 200e6


def noise_variance(A, B, n_cells, contexts):
    """Per gene, the sampling variance of one cell's contribution, sigma2_g, from the replicate halves.

    For a condition of n cells split into halves, X = (A + B) / 2 has noise variance sigma2 / n and
    A - B has 4 sigma2 / n. A - B also holds the difference between the two replicates' batch effects
    (and between their controls), the same for every condition of a context, so it is centred within
    the context first (precision-weighted mean m, weights n / 4): E[(D_c - m)^2] = sigma2 (4 / n_c - 1 / W)
    with W the sum of the weights, which makes the pooled ratio below unbiased. Where no context has two
    such conditions, A - B is used uncentred: the batch difference then counts as noise, which can only
    widen the draws (a conservative ceiling). Conditions with a single replicate (A = B) carry no
    information and are left out. Returns sigma2 (genes, or None) and how many conditions informed it.
    """
    informative = np.any(A != B, axis=1)
    numerator = np.zeros(A.shape[1])
    denominator = 0.0
    used = 0
    for context in np.unique(contexts):
        rows = np.flatnonzero((contexts == context) & informative)
        if len(rows) < 2:
            continue
        D = A[rows] - B[rows]
        weights = n_cells[rows] / 4.0
        centre = weights @ D / weights.sum()
        numerator += ((D - centre) ** 2).sum(axis=0)
        denominator += float((4.0 / n_cells[rows]).sum() - len(rows) / weights.sum())
        used += len(rows)
    if used == 0 and informative.any():
        rows = np.flatnonzero(informative)
        numerator = ((A[rows] - B[rows]) ** 2).sum(axis=0)
        denominator, used = float((4.0 / n_cells[rows]).sum()), len(rows)
    if used == 0 or denominator <= 0:
        return None, 0
    return numerator / denominator, used


def leave_one_out_mean(X, contexts):
    """Per row, the mean of the other test profiles of its context (the row itself if it is alone)."""
    centre = X.copy()
    for context in np.unique(contexts):
        rows = np.flatnonzero(contexts == context)
        if len(rows) >= 2:
            centre[rows] = (X[rows].sum(axis=0) - X[rows]) / (len(rows) - 1)
    return centre


def ceiling_draws(X, variance, contexts, n_draws: int, rng):
    """Draws of each condition's true profile mu given X = mu + N(0, variance).

    Prior: mu_cg = c_g + theta_cg, theta_cg ~ N(0, lambda_c tau2_g). c is the mean of the other test
    profiles of the row's context (leaving the row out keeps the centre independent of the profile it
    is applied to); tau2_g how much gene g varies between conditions beyond noise, pooled over the
    contexts; lambda_c how strong condition c is relative to the others. Both are method-of-moments
    estimates floored at 0, from E[(X_c - c)^2] = lambda_c tau2 + v (1 + 1 / (k - 1)) for a centre of
    k - 1 profiles (the centre's own noise counts as noise of the deviation). The per-condition scale
    matters: real screens are mostly perturbations without measurable effect and a few strong ones; with
    one scale for all, a null condition's posterior would keep part of its observed noise, and its draw
    would sit closest to its own observation, the inflation a ceiling must not have. A row alone in its
    context has no centre and gets a flat prior (mu = X + noise).
    """
    draws = np.repeat(X[None], n_draws, axis=0)
    centre = leave_one_out_mean(X, contexts)
    size = pd.Series(contexts).map(pd.Series(contexts).value_counts()).to_numpy()
    alone = size < 2
    if alone.any():
        draws[:, alone] = X[alone] + np.sqrt(variance[alone]) * rng.standard_normal((n_draws, int(alone.sum()), X.shape[1]))
    rows = np.flatnonzero(~alone)
    if len(rows) == 0:
        return draws
    deviation = X[rows] - centre[rows]
    v = variance[rows] * (1.0 + 1.0 / (size[rows, None] - 1))
    excess = deviation ** 2 - v
    tau2 = np.maximum(excess.mean(axis=0), 0.0)
    scale = np.maximum(excess.sum(axis=1) / max(tau2.sum(), 1e-300), 0.0)
    prior = scale[:, None] * tau2[None, :]
    shrink = prior / (prior + v)
    for k in range(n_draws):
        draws[k, rows] = centre[rows] + shrink * deviation + np.sqrt(shrink * v) * rng.standard_normal(deviation.shape)
    return draws


io = ComponentIO(par, meta)
train = io.read("input_train")
test = io.read("input_test")
solution = io.read("input_solution")  # rows and genes aligned with test and train (comp_control_method.yaml)
n_draws = number_argument(par, "n_draws", 20, int, low=1)
seed = number_argument(par, "seed", 0, int, low=0)

X = deltas.as_dense(solution.X)
A = deltas.as_dense(solution.layers["replicate_1"])
B = deltas.as_dense(solution.layers["replicate_2"])
n_cells = np.maximum(solution.obs["n_cells"].to_numpy(dtype=np.float64), 1.0)
contexts = pd.Series(list(zip(solution.obs["cell_type"].astype(str), solution.obs["condition"].astype(str)))
                     ).astype(str).to_numpy()
sigma2, n_informative = noise_variance(A, B, n_cells, contexts)
n_draws = int(max(1, min(n_draws, MAX_DRAW_BYTES // (4 * X.size or 1))))
rng = np.random.default_rng(seed)
if sigma2 is None:
    # Without two differing replicate halves anywhere there is no noise estimate; the observed profile
    # itself is then the only guess left (it flatters the ceiling, and the log says so).
    log("replicate_ceiling: no condition has two differing replicate halves; predicting the observed profiles")
    draws = np.repeat(X[None], n_draws, axis=0)
else:
    draws = ceiling_draws(X, np.maximum(sigma2, 0.0)[None, :] / n_cells[:, None] + 1e-12, contexts, n_draws, rng)
    log(f"replicate_ceiling: {n_draws} draws from the posterior of each of {test.n_obs} test conditions' true "
        f"profile (noise variance from {n_informative} conditions' replicate halves)")
prediction = baselines.prediction(train, test, draws[0], meta["name"])
for k in range(1, n_draws):
    prediction.layers[f"draw_{k}"] = draws[k].astype(np.float32)
prediction.uns["n_draws"] = n_draws


def half_cells():
    """Observed cells of replicate half 1, marked so that they are scored against half 2 only."""
    X_cells, ids, halves, lacking = cd.observed_cells(io.read("input_solution_cells"), test, half=1, seed=seed)
    if lacking:
        log(f"replicate_ceiling: {len(lacking)} test conditions have no cell in half 1; their cells are written "
            f"unmarked and are scored against themselves (e.g. {lacking[0]!r})")
    return cd.prediction_cells(X_cells, ids, prediction, replicate_half=halves)


cd.write_prediction(io, par, prediction, half_cells, needs=("input_solution_cells",))
