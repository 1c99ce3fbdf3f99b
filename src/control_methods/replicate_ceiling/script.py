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
import deltas  # noqa: E402
from component_io import ComponentIO, log, number_argument  # noqa: E402

# The draws of one prediction stay below this many bytes (float32), whatever the size of the split.
MAX_DRAW_BYTES = 200e6
# Prior grid (quantiles of the standardised deviations, so dense where they are), EM steps, entries the
# prior is fitted on (a seeded sample beyond), entries per chunk of the posterior.
GRID_POINTS = 100
EM_ITERATIONS = 200
MAX_FIT = 50_000
CHUNK = 20_000


def noise_variance(A, B, n_cells, contexts):
    """Per gene, the sampling variance of one cell's contribution, sigma2_g, from the replicate halves.

    For a condition of n cells split into halves, X = (A + B) / 2 has noise variance sigma2 / n and
    A - B has 4 sigma2 / n. A - B also holds the difference between the two replicates' batch effects
    (and between their controls), the same for every condition of a context, so it is centred within
    the context first (precision-weighted mean m, weights n / 4): E[(D_c - m)^2] = sigma2 (4 / n_c - 1 / W)
    with W the sum of the weights, which makes the pooled ratio below unbiased. Conditions with a single
    replicate (A = B) carry no information and are left out. Returns sigma2 (genes) and how many
    conditions informed it.
    """
    numerator = np.zeros(A.shape[1])
    denominator = 0.0
    used = 0
    for context in np.unique(contexts):
        rows = np.flatnonzero((contexts == context) & np.any(A != B, axis=1))
        if len(rows) < 2:
            continue
        D = A[rows] - B[rows]
        weights = n_cells[rows] / 4.0
        centre = weights @ D / weights.sum()
        numerator += ((D - centre) ** 2).sum(axis=0)
        denominator += float((4.0 / n_cells[rows]).sum() - len(rows) / weights.sum())
        used += len(rows)
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


def fit_prior(z, grid, iterations: int = EM_ITERATIONS):
    """NPMLE of the distribution of theta in z = theta + N(0, 1) on a fixed grid (EM on the weights)."""
    likelihood = np.exp(-0.5 * (z[:, None] - grid[None, :]) ** 2)
    weights = np.full(len(grid), 1.0 / len(grid))
    for _ in range(iterations):
        posterior = likelihood * weights
        posterior /= posterior.sum(axis=1, keepdims=True) + 1e-300
        weights = posterior.mean(axis=0)
    return weights


def posterior_draws(z, grid, weights, n_draws: int, rng):
    """n_draws values of theta per entry of z from its posterior under the grid prior (chunked)."""
    draws = np.empty((n_draws, len(z)))
    cumulative_weights = np.log(weights + 1e-300)
    for start in range(0, len(z), CHUNK):
        block = z[start:start + CHUNK]
        log_posterior = cumulative_weights[None, :] - 0.5 * (block[:, None] - grid[None, :]) ** 2
        posterior = np.exp(log_posterior - log_posterior.max(axis=1, keepdims=True))
        cumulative = np.cumsum(posterior, axis=1)
        cumulative /= cumulative[:, -1:]
        for k in range(n_draws):
            u = rng.random(len(block))
            index = np.minimum((cumulative < u[:, None]).sum(axis=1), len(grid) - 1)
            draws[k, start:start + len(block)] = grid[index]
    return draws


def ceiling_draws(X, variance, contexts, n_draws: int, rng):
    """Draws of each condition's true profile mu given X = mu + N(0, variance), per context.

    In units of the noise, z = (X - c) / sqrt(v) with c the mean of the context's other test profiles
    (leaving the row out keeps the centre independent of the profile it is applied to), so z = theta +
    N(0, 1) with theta = (mu - c) / sqrt(v). The distribution of theta over the context's genes and
    conditions is estimated nonparametrically (NPMLE on a grid, Koenker & Mizera 2014): real screens are
    mostly perturbations and genes without measurable change and a few large changes, which no normal
    prior describes (a normal prior keeps too much of a null profile's noise, so its draw is closest to
    its own observation: the inflation a ceiling must not have). Each draw is c + sqrt(v) theta, theta
    from its posterior given z. A context with fewer than 3 conditions gets a flat prior (mu = X + noise).
    """
    draws = np.repeat(X[None], n_draws, axis=0)
    scale = np.sqrt(variance)
    centre = leave_one_out_mean(X, contexts)
    for context in np.unique(contexts):
        rows = np.flatnonzero(contexts == context)
        if len(rows) < 3:
            draws[:, rows] = X[rows] + scale[rows] * rng.standard_normal((n_draws, len(rows), X.shape[1]))
            continue
        z = ((X[rows] - centre[rows]) / scale[rows]).ravel()
        fit = z if len(z) <= MAX_FIT else rng.choice(z, MAX_FIT, replace=False)
        grid = np.unique(np.concatenate([np.quantile(fit, np.linspace(0, 1, GRID_POINTS)), [0.0]]))
        theta = posterior_draws(z, grid, fit_prior(fit, grid), n_draws, rng)
        draws[:, rows] = centre[rows] + scale[rows] * theta.reshape(n_draws, len(rows), X.shape[1])
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
io.write("output", prediction)
