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
import splits  # noqa: E402
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


def two_group_moments(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of standardised squared deviations u = d^2 / v (chi-square with 1 df where a gene does not
    depart from the centre), the share pi of genes that depart and their variance kappa in units of the
    noise, by the method of moments of the two-group model d ~ (1 - pi) N(0, v) + pi N(0, v (1 + kappa)):
    E[u] - 1 = pi kappa, E[u^2] - 3 = 6 pi kappa + 3 pi kappa^2. pi is capped at 1 (then kappa = E[u] - 1);
    rows without excess get pi = 0."""
    m1 = u.mean(axis=1) - 1.0
    m2 = (u ** 2).mean(axis=1) - 3.0
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(m1 > 0, (m2 - 6.0 * m1) / (3.0 * m1), 0.0)
        pi = np.where(kappa > 0, m1 / kappa, 0.0)
    dense = (m1 > 0) & ((kappa <= 0) | (pi > 1.0))
    kappa = np.where(dense, np.maximum(m1, 0.0), np.maximum(kappa, 0.0))
    pi = np.where(dense, 1.0, np.clip(pi, 0.0, 1.0))
    return pi, kappa


def split_half_signal(A, B, centre_A, centre_B, half_variance, centre_variance) -> np.ndarray:
    """Per condition, the z-score of its departure from the training mean measured by its two replicate
    halves, each against the training mean of its own half: sum_g (A_g - a_g)(B_g - b_g), whose expectation
    is the squared departure of the true profile and which carries no noise term (the halves' noises, and the
    two half centres' noises, are independent), over its standard deviation without a departure,
    sqrt(sum_g (v_half + v_centre)^2). The variance of a product of independent noises needs their variances
    only, so the test holds for heavy-tailed count noise (a chi-square test on X alone, which needs Gaussian
    fourth moments, passed null conditions of 20 cells)."""
    product = (A - centre_A) * (B - centre_B)
    return product.sum(axis=1) / np.sqrt(((half_variance + centre_variance) ** 2).sum(axis=1))


def ceiling_draws(X, variance, centre, centre_variance, n_draws: int, rng, signal_z=None):
    """Draws of each condition's true profile mu given X = mu + N(0, variance), around `centre`.

    The centre is the training mean of the row's context (what `train_mean` predicts), built from training
    rows only, so it shares no noise with X; its own sampling variance `centre_variance` counts as noise of
    the deviation d = X - centre. Prior, per condition: a share pi of its genes departs from the centre with
    variance kappa times the noise, the others do not (a perturbation moves some genes, not all); pi and
    kappa by the method of moments (two_group_moments), and only where the condition's excess over noise
    has a z-score above SIGNAL_Z (else it is drawn as the training mean). Each gene is drawn from its
    posterior: with the posterior probability that it departs, from N(centre + s d, s v) with
    s = kappa / (1 + kappa), else as the centre. If the model holds, a draw and X have the joint law of the
    true mean and X, so a metric's expectation over draws is a true-mean oracle's. With no signal every draw
    is the training mean and the ceiling cannot beat the baseline. Shrinking toward the training mean rather
    than toward the other test conditions keeps a fully shrunk condition at the baseline instead of at
    -1/(k-1) times its own observed deviation (which gave Systema -1 and discrimination below chance); a
    gene-by-gene two-group posterior rather than one Gaussian prior per condition keeps the genes a
    perturbation does not move from carrying their own observation's noise into the draw.
    """
    deviation = X - centre
    v = variance + centre_variance
    u = deviation ** 2 / v
    z = (u - 1.0).sum(axis=1) / np.sqrt(2.0 * u.shape[1]) if signal_z is None else signal_z
    pi, kappa = two_group_moments(u)
    signal = (z > SIGNAL_Z) & (pi > 0) & (kappa > 0)
    draws = np.repeat(centre[None], n_draws, axis=0)
    if not signal.any():
        return draws, signal
    rows = np.flatnonzero(signal)
    pi, kappa, d, v_rows, u_rows = pi[rows, None], kappa[rows, None], deviation[rows], v[rows], u[rows]
    with np.errstate(divide="ignore", over="ignore"):
        log_odds = (np.log(pi) - np.log1p(-np.minimum(pi, 1 - 1e-12)) - 0.5 * np.log1p(kappa)
                    + 0.5 * u_rows * kappa / (1.0 + kappa))
    departs = 1.0 / (1.0 + np.exp(-np.clip(log_odds, -50, 50)))
    shrink = kappa / (1.0 + kappa)
    for k in range(n_draws):
        moved = rng.random(d.shape) < departs
        sample = shrink * d + np.sqrt(shrink * v_rows) * rng.standard_normal(d.shape)
        draws[k, rows] = centre[rows] + np.where(moved, sample, 0.0)
    return draws, signal


def training_centre(train, test):
    """Per test row, the training mean of its context (train_mean's prediction), that mean within each
    replicate half (the centre of each of the row's halves: halves carry their replicates' batch effects,
    and a half compared with a centre of the other batch mix departs from it by their difference), and the
    mean's sampling variance factor: sum over the averaged training conditions of 1 / n_cells, divided by
    their number squared (times a gene's per-cell noise variance it is the centre's noise variance)."""
    profiles = baselines.TrainingProfiles(train)
    obs = train.obs
    perturbed = ~obs["is_control"].to_numpy().astype(bool)
    keys = [obs[c].astype(str).to_numpy() for c in ("perturbation", "perturbation_type", "cell_type", "condition")]
    frame = pd.DataFrame({"key": pd.Series(list(zip(*keys))), "n_cells": obs["n_cells"].to_numpy(dtype=np.float64),
                          "half": obs["replicate"].astype(str).map(splits.replicate_half_of_labels(obs["replicate"])).to_numpy()})
    cells = frame[perturbed].groupby("key", sort=False)["n_cells"].sum()
    order = list(zip(profiles.obs["perturbation"], profiles.obs["perturbation_type"], profiles.obs["cell_type"],
                     profiles.obs["condition"]))
    inverse_cells = 1.0 / np.maximum(cells.reindex(order).to_numpy(dtype=np.float64), 1.0)
    X = train.X
    halves = {}
    for half in (1, 2):
        rows = np.flatnonzero(perturbed & (frame["half"].to_numpy() == half))
        contexts = list(zip(obs["cell_type"].astype(str).to_numpy()[rows], obs["condition"].astype(str).to_numpy()[rows]))
        by_context = {}
        for row, context in zip(rows, contexts):
            by_context.setdefault(context, []).append(int(row))
        halves[half] = {c: baselines.group_mean(X, [np.array(r)])[0] for c, r in by_context.items()}
    centre, centre_halves, factor = [], ([], []), []
    for context in baselines.test_contexts(test):
        rows, _ = profiles.rows_or_all(context)
        mean = profiles.X[rows].mean(axis=0)
        centre.append(mean)
        for half in (1, 2):
            centre_halves[half - 1].append(halves[half].get(tuple(context), mean))
        factor.append(inverse_cells[rows].sum() / len(rows) ** 2)
    return np.vstack(centre), np.vstack(centre_halves[0]), np.vstack(centre_halves[1]), np.array(factor)


io = ComponentIO(par, meta)
train, test, solution = baselines.read_control_inputs(io)  # rows and genes aligned (comp_control_method.yaml)
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
centre, centre_A, centre_B, centre_factor = training_centre(train, test)
if sigma2 is None:
    # Without two differing replicate halves anywhere there is no noise estimate and so no telling signal
    # from noise: the ceiling is the training mean (no scale, nothing calibrated), and the log says so.
    log("replicate_ceiling: no condition has two differing replicate halves; predicting the training mean "
        "(no noise estimate, so no scale to calibrate on)")
    draws = np.repeat(centre[None], n_draws, axis=0)
else:
    sigma2 = np.maximum(sigma2, 0.0)[None, :]
    draws, signal = ceiling_draws(X, sigma2 / n_cells[:, None] + 1e-12, centre, sigma2 * centre_factor[:, None],
                                  n_draws, rng, signal_z=split_half_signal(
                                      A, B, centre_A, centre_B, 2 * sigma2 / n_cells[:, None],
                                      2 * sigma2 * centre_factor[:, None]))
    log(f"replicate_ceiling: {n_draws} draws from the posterior of each of {test.n_obs} test conditions' true "
        f"profile around the training mean (noise variance from {n_informative} conditions' replicate halves); "
        f"{int(signal.sum())} conditions depart from the training mean beyond noise (z > {SIGNAL_Z:g}), the "
        "others are drawn as the training mean")
prediction = baselines.prediction(train, test, draws[0], meta["name"])
# The draws as their distinct rows plus the row each condition takes in each draw (metric_utils' indexed draws,
# as random_perturbation stores them): a condition drawn as the training mean is the same row in every draw, and
# on a weak screen nearly all are (20 dense draws were 184 MB per fold at 400 conditions x 8,000 genes).
stored = np.ascontiguousarray(draws, dtype=np.float32).reshape(-1, draws.shape[-1])
_, first, inverse = np.unique(stored.view(np.int32), axis=0, return_index=True, return_inverse=True)
order = np.argsort(first)  # distinct rows in order of first appearance: draw 0's rows come first
position = np.empty(len(order), dtype=np.int64)
position[order] = np.arange(len(order))
prediction.uns["draw_profiles"] = stored[first[order]]
prediction.uns["draw_rows"] = position[inverse.ravel()].reshape(n_draws, draws.shape[1]).astype(np.int32)
prediction.uns["n_draws"] = n_draws


def half_cells():
    """Observed cells of replicate half 1, marked so that they are scored against half 2 only."""
    X_cells, ids, halves, lacking = cd.observed_cells(io.read("input_solution_cells", lazy=True), test, half=1, seed=seed)
    if lacking:
        log(f"replicate_ceiling: {len(lacking)} test conditions have no cell in half 1; their cells are written "
            f"unmarked and are scored against themselves (e.g. {lacking[0]!r})")
    return cd.prediction_cells(X_cells, ids, prediction, replicate_half=halves)


cd.write_prediction(io, par, prediction, half_cells, needs=("input_solution_cells",))
