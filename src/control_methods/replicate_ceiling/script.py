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


# A condition's prior scale is estimated only where its excess over noise is beyond chance (one-sided z above
# this): under no effect the floored moment estimate is positive for half the conditions, and a draw that keeps
# part of its own observation shares that observation's noise, the inflation a ceiling must not have.
SIGNAL_Z = 3.0


def ceiling_draws(X, variance, centre, centre_variance, contexts, n_draws: int, rng):
    """Draws of each condition's true profile mu given X = mu + N(0, variance), shrunk toward `centre`.

    Prior: mu_cg = centre_cg + theta_cg, theta_cg ~ N(0, lambda_c tau2_g). The centre is the training mean
    of the row's context (what `train_mean` predicts), built from training rows only, so it shares no noise
    with X; its own sampling variance `centre_variance` counts as noise of the deviation. tau2_g is how much
    gene g departs from the training mean beyond noise, pooled over the test conditions; lambda_c how far
    condition c departs relative to the others, a method-of-moments estimate kept only where its z-score of
    excess over noise reaches SIGNAL_Z (else 0: the condition is drawn as the training mean). With no
    signal every draw is the training mean, so the ceiling cannot beat the baseline; with strong signal a
    draw is X plus noise of X's size, the oracle's relation to X. Shrinking toward the training mean rather
    than toward the other test conditions keeps a fully shrunk condition at the baseline instead of at
    -1/(k-1) times its own observed deviation (which gave Systema -1 and discrimination below chance).
    """
    deviation = X - centre
    v = variance + centre_variance
    excess = deviation ** 2 - v
    z = excess.sum(axis=1) / np.sqrt(2.0 * (v ** 2).sum(axis=1))
    signal = z > SIGNAL_Z
    draws = np.repeat(centre[None], n_draws, axis=0)
    if not signal.any():
        return draws, signal
    tau2 = np.maximum(excess[signal].mean(axis=0), 0.0)
    scale = np.where(signal, np.maximum(excess.sum(axis=1) / max(tau2.sum(), 1e-300), 0.0), 0.0)
    prior = scale[:, None] * tau2[None, :]
    shrink = prior / (prior + v)
    for k in range(n_draws):
        draws[k] = centre + shrink * deviation + np.sqrt(shrink * v) * rng.standard_normal(deviation.shape)
    return draws, signal


def training_centre(train, test):
    """Per test row, the training mean of its context (train_mean's prediction) and that mean's sampling
    variance factor: sum over the averaged training conditions of 1 / n_cells, divided by their number
    squared (times a gene's per-cell noise variance sigma2_g it is the centre's noise variance)."""
    profiles = baselines.TrainingProfiles(train)
    obs = train.obs[~train.obs["is_control"].to_numpy().astype(bool)]
    cells = obs.groupby([obs["perturbation"].astype(str), obs["perturbation_type"].astype(str),
                         obs["cell_type"].astype(str), obs["condition"].astype(str)], sort=True,
                        observed=True)["n_cells"].sum()
    inverse_cells = 1.0 / np.maximum(cells.to_numpy(dtype=np.float64), 1.0)  # in TrainingProfiles' row order
    centre, factor = [], []
    for context in baselines.test_contexts(test):
        rows, _ = profiles.rows_or_all(context)
        centre.append(profiles.X[rows].mean(axis=0))
        factor.append(inverse_cells[rows].sum() / len(rows) ** 2)
    return np.vstack(centre), np.array(factor)


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
centre, centre_factor = training_centre(train, test)
if sigma2 is None:
    # Without two differing replicate halves anywhere there is no noise estimate and so no telling signal
    # from noise: the ceiling is the training mean (no scale, nothing calibrated), and the log says so.
    log("replicate_ceiling: no condition has two differing replicate halves; predicting the training mean "
        "(no noise estimate, so no scale to calibrate on)")
    draws = np.repeat(centre[None], n_draws, axis=0)
else:
    sigma2 = np.maximum(sigma2, 0.0)[None, :]
    draws, signal = ceiling_draws(X, sigma2 / n_cells[:, None] + 1e-12, centre, sigma2 * centre_factor[:, None],
                                  contexts, n_draws, rng)
    log(f"replicate_ceiling: {n_draws} draws from the posterior of each of {test.n_obs} test conditions' true "
        f"profile around the training mean (noise variance from {n_informative} conditions' replicate halves); "
        f"{int(signal.sum())} conditions depart from the training mean beyond noise (z > {SIGNAL_Z:g}), the "
        "others are drawn as the training mean")
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
