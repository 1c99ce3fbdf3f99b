import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_prior": None,
    "output": "prediction.h5ad",
    "num_steps": 1,
}
meta = {"name": "ridge_regulators", "resources_dir": "src/utils", "config": None, "cpus": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, fail, log, not_applicable  # noqa: E402

# PEREGGRN's default regression: RidgeCV over these penalties, chosen per gene by leave-one-out error.
ALPHAS = np.logspace(-2, 2, 5)  # 0.01, 0.1, 1, 10, 100
NAME = meta.get("name") or "ridge_regulators"


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------

def parse_levels(test, genes) -> tuple[list[tuple[str, ...]], list[np.ndarray]]:
    """Targets and revealed post-perturbation levels (float, nan = not measured) of every test row."""
    targets = baselines.test_targets(test)
    levels = []
    for row, (name, ts, text) in enumerate(zip(test.obs_names, targets, test.obs["target_expression"].astype(str))):
        parts = text.split(baselines.TARGET_SEPARATOR)
        if len(parts) != len(ts):
            raise baselines.InputError(
                f"obs['target_expression'] of row '{name}' is {text!r}: {len(parts)} value(s) for {len(ts)} "
                f"target(s) of '{test.obs['perturbation'].iloc[row]}', expected one per target")
        try:
            values = np.array([float(p) for p in parts], dtype=np.float64)
        except ValueError:
            raise baselines.InputError(f"obs['target_expression'] of row '{name}' is {text!r}, expected numbers "
                                       f"or 'nan' joined with '{baselines.TARGET_SEPARATOR}'") from None
        levels.append(values)
    return targets, levels


def dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if sp.issparse(matrix) else matrix, dtype=np.float64)


def centred_training_profiles(train) -> tuple[np.ndarray, dict]:
    """Every training profile (replicates and controls) minus the mean control of its context.

    Regressing deltas rather than raw levels keeps differences between cell types' baselines from
    looking like regulation. Rows of contexts without controls cannot be centred and are left out.
    """
    X = dense(train.X)
    contexts = baselines.contexts_of(train.obs)
    is_control = train.obs["is_control"].to_numpy().astype(bool)
    if not is_control.any():
        raise baselines.InputError("has no control profiles (obs['is_control'] is never True); the regression "
                                   "is fitted on deltas to the control of each context")
    control_rows: dict = {}
    for r in np.flatnonzero(is_control):
        control_rows.setdefault(contexts[r], []).append(int(r))
    controls = {c: X[rows].mean(axis=0) for c, rows in sorted(control_rows.items())}
    keep = np.array([c in controls for c in contexts])
    if not keep.all():
        log(f"{NAME}: {int((~keep).sum())} training profiles are in contexts without control profiles and are "
            "left out of the fit")
    D = X[keep] - np.vstack([controls[c] for c, k in zip(contexts, keep) if k])
    return D, controls


# --------------------------------------------------------------------------------------------------
# Regressions
# --------------------------------------------------------------------------------------------------

def ridge_cv(features: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """Coefficients (features x responses) of one RidgeCV per response column, penalty chosen per column."""
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=ALPHAS, fit_intercept=True, alpha_per_target=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ill-conditioned solves on tiny data are expected and harmless here
        model.fit(features, responses)
    return np.asarray(model.coef_, dtype=np.float64).reshape(responses.shape[1], features.shape[1]).T


def leave_one_regulator_out(R: np.ndarray) -> np.ndarray:
    """Ridge regressions of every regulator on all the others (k x k coefficients, zero diagonal).

    For a fixed penalty a, with centred R and Theta = (R'R + a I)^-1, the ridge regression of column j
    on the other columns has coefficients -Theta[-j, j] / Theta[j, j] and residuals (R Theta)[:, j] /
    Theta[j, j]; the hat matrix without column j is H - u u' / Theta[j, j] (u = (R Theta)[:, j]). So all
    k regressions and their exact leave-one-out errors come from one eigendecomposition, and each
    regulator gets the penalty in ALPHAS with the smallest leave-one-out error, as RidgeCV would choose.
    """
    n, k = R.shape
    if k < 2:
        return np.zeros((k, k))
    Rc = R - R.mean(axis=0, keepdims=True)
    eigenvalues, V = np.linalg.eigh(Rc.T @ Rc)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    RV = Rc @ V
    best_error = np.full(k, np.inf)
    coef = np.zeros((k, k))
    for alpha in ALPHAS:
        theta = (V / (eigenvalues + alpha)) @ V.T
        U = (RV / (eigenvalues + alpha)) @ V.T                 # = Rc @ theta
        d = np.diag(theta)
        hat = np.einsum("ij,ij->i", Rc, U) + 1.0 / n              # diagonal of the full hat matrix (+ intercept)
        leverage = hat[:, None] - U ** 2 / d[None, :]             # hat diagonal without regulator j
        residual = (U / d[None, :]) / np.clip(1.0 - leverage, 1e-12, None)
        error = np.mean(residual ** 2, axis=0)
        better = error < best_error
        if better.any():
            best_error[better] = error[better]
            coef[:, better] = -theta[:, better] / d[better][None, :]
    np.fill_diagonal(coef, 0.0)
    return coef


def fit_all_regulators(D: np.ndarray, regulators: np.ndarray) -> np.ndarray:
    """Coefficients W (regulators x genes): every gene on every regulator other than itself."""
    n_genes = D.shape[1]
    W = np.zeros((len(regulators), n_genes))
    others = np.setdiff1d(np.arange(n_genes), regulators)
    R = D[:, regulators]
    if len(others):
        W[:, others] = ridge_cv(R, D[:, others])
    W[:, regulators] = leave_one_regulator_out(R)
    return W


def fit_network(D: np.ndarray, regulators: np.ndarray, parents: sp.csc_matrix) -> tuple[np.ndarray, int]:
    """Coefficients W (regulators x genes) when each gene may only use its listed regulators.

    `parents[r, g]` != 0 lists regulator r (position in `regulators`) for gene g. Genes with the same
    regulator set share one multi-output RidgeCV. Returns W and the number of genes with no regulator.
    """
    n_genes = D.shape[1]
    W = np.zeros((len(regulators), n_genes))
    groups: dict[tuple[int, ...], list[int]] = {}
    n_without = 0
    for g in range(n_genes):
        rows = parents.indices[parents.indptr[g]:parents.indptr[g + 1]]
        rows = tuple(sorted(int(r) for r in rows if regulators[r] != g))
        if not rows:
            n_without += 1
            continue
        groups.setdefault(rows, []).append(g)
    for rows, genes in groups.items():
        W[np.array(rows)[:, None], np.array(genes)[None, :]] = ridge_cv(D[:, regulators[list(rows)]], D[:, genes])
    return W, n_without


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------

io = ComponentIO(par, meta)
train = io.read("input_train")
test = io.read("input_test")
num_steps = 1 if par.get("num_steps") is None else par["num_steps"]
if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
    fail(f"--num_steps is {num_steps!r}, expected a positive integer")
num_steps = int(num_steps)

try:
    baselines.check_same_split(train, test)
    baselines.check_genes_match(train, test)
    genes = pd.Index(train.var_names.astype(str))
    position = {g: j for j, g in enumerate(genes)}
    test_targets, test_levels = parse_levels(test, genes)
    train_targets = [baselines.targets_of(p) for p in train.obs["perturbation"].astype(str)]
except baselines.InputError as error:
    fail(f"--input_train/--input_test: {error}")

# Candidate regulators: every measured target gene (training or test) ...
perturbed = sorted({t for ts in train_targets + test_targets for t in ts if t in position})
regulator_genes = set(perturbed)
network = None
prior = baselines.read_prior_argument(par)
if prior is not None:
    shared = [g for g in prior.genes if g in position]
    if not shared:
        fail(f"--input_prior file '{par['input_prior']}': none of its {len(prior.genes)} genes "
             f"(e.g. {', '.join(map(str, prior.genes[:3]))}) is among the {len(genes)} training genes "
             f"(e.g. {', '.join(genes[:3])}); is it for another organism or gene naming?")
    if prior.is_regulator is None and prior.network is None:
        log(f"{NAME}: the prior has neither var['is_regulator'] nor varp['network']; it adds nothing here")
    # ... plus the prior's regulators: var['is_regulator'], else every gene with an edge in varp['network']
    if prior.is_regulator is not None:
        flagged = prior.genes[prior.is_regulator]
    elif prior.network is not None:
        flagged = prior.genes[np.asarray(abs(prior.network).sum(axis=1)).ravel() > 0]
    else:
        flagged = []
    added = sorted({g for g in flagged if g in position} - regulator_genes)
    regulator_genes |= set(added)
    log(f"{NAME}: prior shares {len(shared)} of its {len(prior.genes)} genes with the training data; "
        f"it adds {len(added)} regulators to the {len(perturbed)} measured target genes")
    if prior.network is not None:
        network = prior

regulators = np.array(sorted(position[g] for g in regulator_genes), dtype=np.int64)

# Which test targets can be set: measured genes with a finite revealed level.
usable = [[(position[t], float(v)) for t, v in zip(ts, vs) if t in position and np.isfinite(v)]
          for ts, vs in zip(test_targets, test_levels)]
n_usable = sum(len(u) for u in usable)
if n_usable == 0:
    not_applicable(f"no target gene of any of the {test.n_obs} test conditions is measured with a revealed level "
                   f"(among the {len(genes)} genes); the regression has no regulator to set, so it could only "
                   "predict the control profile")
n_unmeasured = sum(1 for ts in test_targets for t in ts if t not in position)
n_nan = sum(1 for ts, vs in zip(test_targets, test_levels) for t, v in zip(ts, vs) if t in position and not np.isfinite(v))
n_unchanged = sum(1 for u in usable if not u)
if n_unmeasured or n_nan:
    log(f"{NAME}: {n_unmeasured} test target(s) are not among the genes and {n_nan} have no revealed level "
        f"(nan); they keep the control level and move nothing ({n_unchanged} of {test.n_obs} test conditions "
        "therefore get the control profile)")

try:
    D, controls = centred_training_profiles(train)
except baselines.InputError as error:
    fail(f"--input_train file '{par['input_train']}': {error}")
if D.shape[0] < 2:
    fail(f"--input_train file '{par['input_train']}': {D.shape[0]} usable training profile(s), the regression "
         "needs at least 2")
contexts = baselines.test_contexts(test)
missing = sorted({c for c in contexts if c not in controls})
if missing:
    fail(f"--input_train file '{par['input_train']}': no control profiles for cell_type '{missing[0][0]}', "
         f"condition '{missing[0][1]}', which test conditions need as their starting point")

if network is None:
    W = fit_all_regulators(D, regulators)
    log(f"{NAME}: regressed {len(genes)} genes on {len(regulators)} regulators (each gene on all regulators "
        f"but itself) over {D.shape[0]} training profiles")
else:
    prior = network
    # parents[r, g]: regulator r (position among `regulators`) is listed for gene g
    adjacency = sp.coo_matrix(prior.network)
    gene_of = genes.get_indexer(prior.genes)                       # prior gene -> training gene (-1: absent)
    regulator_of = np.full(len(genes), -1, dtype=np.int64)
    regulator_of[regulators] = np.arange(len(regulators))
    source = gene_of[adjacency.row]
    target = gene_of[adjacency.col]
    edge = (adjacency.data != 0) & (source >= 0) & (target >= 0)
    edge[edge] &= regulator_of[source[edge]] >= 0
    rows, cols = regulator_of[source[edge]], target[edge]
    parents = sp.csc_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(regulators), len(genes)))
    parents.sum_duplicates()
    W, n_without = fit_network(D, regulators, parents)
    log(f"{NAME}: regressed genes on their listed regulators ({parents.nnz} edges among {len(regulators)} "
        f"regulators); {n_without} of {len(genes)} genes have no listed regulator and keep the control level")

# Prediction: start from the context's control, set the targets to their revealed levels, predict every
# gene from the regulators' changes (num_steps > 1 feeds the predicted regulator levels back in).
control = np.vstack([controls[c] for c in contexts])
clamp_rows = np.array([i for i, u in enumerate(usable) for _ in u], dtype=np.int64)
clamp_genes = np.array([g for u in usable for g, _ in u], dtype=np.int64)
clamp_delta = np.array([v for u in usable for _, v in u]) - control[clamp_rows, clamp_genes]
delta = np.zeros_like(control)
delta[clamp_rows, clamp_genes] = clamp_delta
for _ in range(num_steps):
    delta = delta[:, regulators] @ W
    delta[clamp_rows, clamp_genes] = clamp_delta
prediction = control + delta
if not np.isfinite(prediction).all():
    fail(f"the regression produced {int((~np.isfinite(prediction)).sum())} non-finite values "
         f"(--num_steps {num_steps} may make predictions diverge); try --num_steps 1")

# a condition with no target to set is predicted as its context's control profile: recorded as a fallback
fell_back = np.array([not u for u in usable], dtype=bool)
io.write("output", baselines.prediction(train, test, prediction, NAME, fell_back, prior=prior))
