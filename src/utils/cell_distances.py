"""Distances between sets of cells, and the predicted cells of the control methods.

Included as a viash resource by `src/metrics/distribution_distance` and by the controls that write
`--output_cells` (ground_truth, no_change, train_mean, replicate_ceiling); needs numpy, pandas, scipy.

    pca = fit_pca(train_cells.X, seed=0)                 # training cells only, at most MAX_PCA_CELLS
    Z = pca.project(cells.X, drop=target_columns)         # one condition's cells, its targets left out
    h = median_bandwidth(pca.project(train_cells.X), seed=0)
    energy_distance(Zpred, Zobs), mmd2(Zpred, Zobs, h)

Both statistics are U-statistics: the within-set means run over pairs of distinct cells, the cross
mean over all pairs. This is the unbiased estimator (scPerturb's `sample_correct`); a V-statistic
(diagonal zeros included) is biased by E|X-X'|/n + E|Y-Y'|/m, so its value would depend on how many
cells a method chooses to output. Unbiased values can be slightly negative when two sets come from one
distribution. A set of one cell is taken as a point mass (its within-set term is that of the V-statistic:
distance 0, kernel 1), the only value defined for it.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

# Cap on the training cells the PCA is fitted on (seeded subsample): enough for 50 stable axes.
MAX_PCA_CELLS = 5000
N_COMPONENTS = 50
# Cap on the training cells whose pairwise distances give the median-heuristic bandwidth.
MAX_BANDWIDTH_CELLS = 1000
# Cap on the cells per set (per condition, per replicate-half part) the distances are computed on, and on
# the cells a control writes per condition (see shifted_control_cells): pairwise matrices of at most 500 x 500.
MAX_CELLS = 500


# --------------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------------

def pairwise_sq_distances(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of A and of B (float64, clipped at 0)."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    d = (A * A).sum(axis=1)[:, None] + (B * B).sum(axis=1)[None, :] - 2.0 * A @ B.T
    return np.maximum(d, 0.0)


def _within_mean(K: np.ndarray, diagonal_value: float) -> float:
    """Mean over pairs of distinct cells of a square matrix; a single cell gives `diagonal_value`."""
    n = K.shape[0]
    if n < 2:
        return float(diagonal_value)
    return float((K.sum() - np.trace(K)) / (n * (n - 1)))


def energy_distance(X: np.ndarray, Y: np.ndarray) -> float:
    """E-distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| with Euclidean distances (U-statistic)."""
    return set_distances(X, Y, bandwidth=1.0)[0]  # (the energy part does not depend on the bandwidth)


def mmd2(X: np.ndarray, Y: np.ndarray, bandwidth: float) -> float:
    """Squared MMD with the RBF kernel exp(-|x-y|^2 / (2 bandwidth^2)), unbiased (Gretton et al. 2012,
    MMD^2_u): E k(X,X') + E k(Y,Y') - 2 E k(X,Y)."""
    return set_distances(X, Y, bandwidth)[1]


def set_distances(X: np.ndarray, Y: np.ndarray, bandwidth: float, within_y: tuple | None = None) -> tuple:
    """(energy_distance(X, Y), mmd2(X, Y, bandwidth)), each pairwise matrix computed once for both (the same
    values as the two functions give). `within_y`: Y's own terms, `within_terms(Y, bandwidth)`, when known."""
    if len(X) == 0 or len(Y) == 0:
        raise ValueError("a distance between sets of cells needs at least one cell in each set")
    scale = -0.5 / float(bandwidth) ** 2
    distance_xx, kernel_xx = within_terms(X, bandwidth)
    distance_yy, kernel_yy = within_y if within_y is not None else within_terms(Y, bandwidth)
    squared = pairwise_sq_distances(X, Y)
    energy = 2.0 * np.sqrt(squared).mean() - distance_xx - distance_yy
    mmd = kernel_xx + kernel_yy - 2.0 * np.exp(scale * squared).mean()
    return float(energy), float(mmd)


def within_terms(Z: np.ndarray, bandwidth: float) -> tuple[float, float]:
    """A set's own terms of the two U-statistics: E|Z-Z'| and E k(Z,Z') over pairs of distinct cells."""
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    squared = pairwise_sq_distances(Z, Z)
    return (_within_mean(np.sqrt(squared), 0.0),
            _within_mean(np.exp((-0.5 / float(bandwidth) ** 2) * squared), 1.0))


def median_bandwidth(Z: np.ndarray, seed: int = 0, max_cells: int = MAX_BANDWIDTH_CELLS) -> float:
    """Median heuristic: the median Euclidean distance between distinct cells of (a seeded subsample of)
    Z. Computed once from training cells, so it is the same for every condition and every method."""
    rows = subsample(len(Z), max_cells, seed, "bandwidth")
    d = np.sqrt(pairwise_sq_distances(Z[rows], Z[rows]))
    upper = d[np.triu_indices(len(rows), k=1)]
    positive = upper[upper > 0]
    if len(positive) == 0:
        raise ValueError("the training cells are all identical in the PCA space; no bandwidth")
    return float(np.median(positive))


# The PCA space of a fold's training cells, per process: a worker scores every prediction of a fold in one
# session (perturbcast/engine_run.py), and the axes and bandwidth depend only on the training cells and the
# seed; at genome scale reading and fitting them costs more than scoring a prediction.
_AXES: dict = {}
# The observed cells of each condition in those axes: every prediction of the fold is scored against the same
# subsample of them, so a session projects them once (cleared with the axes).
_PROJECTED: dict = {}


def _file_identity(cells) -> tuple | None:
    """(path, size, mtime) of a cells file on disk; None for cells in memory."""
    import os

    if not getattr(cells, "filename", None):
        return None
    stat = os.stat(cells.filename)
    return os.path.realpath(cells.filename), stat.st_size, stat.st_mtime_ns


def training_axes(train_cells, seed: int) -> tuple:
    """(PCA, RBF bandwidth) of a cells file's training cells (read from disk once per file and seed in a
    process): the PCA fitted on at most MAX_PCA_CELLS of them, the bandwidth from MAX_BANDWIDTH_CELLS."""
    identity = _file_identity(train_cells)
    key = identity + (int(seed),) if identity else None
    if key is None or key not in _AXES:
        # fit_pca and median_bandwidth draw these very rows from all training cells; given only them, they keep all
        pca = fit_pca(cell_rows(train_cells, subsample(train_cells.n_obs, MAX_PCA_CELLS, seed, "pca")), seed=seed)
        rows = subsample(train_cells.n_obs, MAX_BANDWIDTH_CELLS, seed, "bandwidth")
        axes = (pca, median_bandwidth(pca.project(cell_rows(train_cells, rows)), seed=seed))
        if key is None:
            return axes
        _AXES.clear()  # one fold's axes at a time: a session scores one fold
        _PROJECTED.clear()
        _AXES[key] = axes
    return _AXES[key]


def projected_set(pca: "PCA", cells, rows: np.ndarray, drop, bandwidth: float) -> tuple:
    """(Z, within_terms(Z, bandwidth)) for Z = pca.project(rows of `cells`, drop); kept for the process when the
    cells are a file on disk and `pca` the current training axes (a fold's observed cells, met again by every
    prediction of the fold)."""
    identity = _file_identity(cells)
    if identity is None or not any(axes[0] is pca and axes[1] == bandwidth for axes in _AXES.values()):
        Z = pca.project(cell_rows(cells, rows), drop)
        return Z, within_terms(Z, bandwidth)
    drop = np.zeros(0, dtype=np.int64) if drop is None else np.asarray(drop, dtype=np.int64)
    key = (identity, np.asarray(rows, dtype=np.int64).tobytes(), drop.tobytes())
    if key not in _PROJECTED:
        Z = pca.project(cell_rows(cells, rows), drop)
        _PROJECTED[key] = (Z, within_terms(Z, bandwidth))
    return _PROJECTED[key]


# --------------------------------------------------------------------------------------------------
# Subsampling and the PCA space
# --------------------------------------------------------------------------------------------------

def subsample(n: int, cap: int, seed: int, key: str) -> np.ndarray:
    """Sorted indices of at most `cap` of n items; the draw depends only on (seed, key, n), so the same
    set of cells is drawn whatever else is in the file (every method meets the same observed cells)."""
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng([int(seed), zlib.crc32(str(key).encode("utf-8"))])
    return np.sort(rng.choice(n, size=int(cap), replace=False))


def _rows(matrix, rows: np.ndarray):
    return matrix[rows] if not sp.issparse(matrix) else sp.csr_matrix(matrix)[rows]


def cell_rows(cells, rows: np.ndarray):
    """Rows of a cells file's X, whether it is in memory (AnnData) or on disk (formats.LazyAnnData)."""
    return cells.rows(rows) if hasattr(cells, "rows") else _rows(cells.X, rows)


# rows summed at once when the cells are on disk: ~20k cells x 8,000 genes at ~25% non-zero is ~0.5 GB of
# work arrays; a smaller file is one block, whose sums are those of the in-memory product bit for bit
SUM_BLOCK_ROWS = 20_000


@dataclass
class PCA:
    mean: np.ndarray        # genes, centre of the training cells
    components: np.ndarray  # genes x k, orthonormal axes
    explained: np.ndarray   # k, variance of the training cells along each axis

    def project(self, X, drop=None) -> np.ndarray:
        """Coordinates of cells (dense or sparse, cells x genes) on the axes, the genes in `drop`
        (column indices) left out: their loadings are set to zero, which equals giving those genes one
        constant value in every cell, a shift that cancels in every distance."""
        V = self.components
        if drop is not None and len(drop):
            V = V.copy()
            V[np.asarray(drop, dtype=np.int64)] = 0.0
        # dense rows through BLAS: scipy's sparse-times-dense loop ran at ~1 GFLOP/s and was most of scoring a
        # prediction's cells; a condition's cells (at most MAX_CELLS) are small dense, the sums' order differs
        Z = (X.toarray() if sp.issparse(X) else np.asarray(X)).astype(np.float64, copy=False) @ V
        return np.asarray(Z, dtype=np.float64) - self.mean @ V


def fit_pca(X, seed: int = 0, n_components: int = N_COMPONENTS, max_cells: int = MAX_PCA_CELLS) -> PCA:
    """PCA of (a seeded subsample of at most `max_cells` of) the cells X, centred, not scaled (scaling
    would give noisy lowly expressed genes the weight of the genes that carry the signal). Sparse input
    stays sparse: the centring is implicit in a linear operator solved by ARPACK with a seeded start."""
    from scipy.sparse.linalg import LinearOperator, svds

    rows = subsample(X.shape[0], max_cells, seed, "pca")
    A = _rows(X, rows)
    A = sp.csr_matrix(A, dtype=np.float64) if sp.issparse(A) else np.asarray(A, dtype=np.float64)
    n, g = A.shape
    k = int(min(n_components, n - 1, g - 1))
    if k < 1:
        raise ValueError(f"{n} cells x {g} genes are too few for a PCA")
    mean = np.asarray(A.mean(axis=0)).ravel()
    ones = np.ones(n)
    operator = LinearOperator(
        (n, g), dtype=np.float64,
        matvec=lambda v: A @ np.ravel(v) - ones * (mean @ np.ravel(v)),
        rmatvec=lambda u: A.T @ np.ravel(u) - mean * np.ravel(u).sum(),
        matmat=lambda V: A @ V - np.outer(ones, mean @ V),
        rmatmat=lambda U: A.T @ U - np.outer(mean, U.sum(axis=0)))
    v0 = np.random.default_rng([int(seed), 7]).standard_normal(min(n, g))
    _, s, vt = svds(operator, k=k, v0=v0, solver="arpack")
    order = np.argsort(-s)
    return PCA(mean=mean, components=vt[order].T.copy(), explained=s[order] ** 2 / max(n - 1, 1))


# --------------------------------------------------------------------------------------------------
# Predicted cells of the controls (obs `condition_id`, optional `replicate_half`)
# --------------------------------------------------------------------------------------------------

def cells_of_conditions(solution_cells, condition_ids) -> dict[str, np.ndarray]:
    """Row indices of the observed cells of each test condition (`obs['condition_id']`); a condition
    without cells raises ValueError (every held-out condition has cells by the contract)."""
    labels = solution_cells.obs["condition_id"].astype(str).to_numpy()
    index = pd.Series(np.arange(len(labels))).groupby(labels).apply(lambda s: s.to_numpy()).to_dict()
    missing = [c for c in condition_ids if c not in index]
    if missing:
        raise ValueError(f"has no cell of {len(missing)} test conditions (e.g. {missing[0]!r}); "
                         "expected obs['condition_id'] to name every test condition")
    return {c: np.sort(index[c]) for c in condition_ids}


def context_control_cells(train_cells) -> tuple[dict, np.ndarray]:
    """Row indices of the training control cells per (cell_type, condition) context, and of all of them."""
    obs = train_cells.obs
    is_control = obs["is_control"].to_numpy().astype(bool)
    if not is_control.any():
        raise ValueError("has no control cells (obs['is_control'] is never True)")
    keys = list(zip(obs["cell_type"].astype(str), obs["condition"].astype(str)))
    out: dict = {}
    for r in np.flatnonzero(is_control):
        out.setdefault(keys[r], []).append(int(r))
    return {k: np.array(v, dtype=np.int64) for k, v in out.items()}, np.flatnonzero(is_control)


def mean_cell_shifts(train_cells, contexts) -> tuple[dict, list]:
    """The cell-level train_mean shift of each context, in the cells' own log space: the mean over the
    context's training conditions of (the mean of the condition's cells minus the mean of the context's control
    cells). Profiles may live on another scale (log of summed counts), so a shift taken from them does not fit
    the cells. A context without training conditions (or controls) gets the mean over every context's
    conditions; those contexts are returned too."""
    obs = train_cells.obs
    is_control = obs["is_control"].to_numpy().astype(bool)
    context = obs["cell_type"].astype(str).to_numpy().astype(object) + "|" + obs["condition"].astype(str).to_numpy()
    condition = np.where(is_control, "", obs["perturbation"].astype(str).to_numpy().astype(object) + "|"
                         + obs["perturbation_type"].astype(str).to_numpy())
    codes, groups = pd.factorize(pd.MultiIndex.from_arrays([context, condition]))
    indicator = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(groups), len(codes)))
    X = train_cells.X

    def product(part, block):
        sums = part @ (sp.csr_matrix(block, dtype=np.float64) if sp.issparse(block) else np.asarray(block, dtype=np.float64))
        return np.asarray(sums.toarray() if sp.issparse(sums) else sums)

    if hasattr(train_cells, "rows"):  # on disk: block by block
        total = np.zeros((len(groups), train_cells.n_vars))
        for start in range(0, len(codes), SUM_BLOCK_ROWS):
            total += product(indicator[:, start:start + SUM_BLOCK_ROWS], X[start:start + SUM_BLOCK_ROWS])
    else:
        total = product(indicator, X)
    means = total / np.bincount(codes)[:, None]
    control_mean = {ctx: means[i] for i, (ctx, cond) in enumerate(groups) if cond == ""}
    deltas: dict = {}
    for i, (ctx, cond) in enumerate(groups):
        if cond and ctx in control_mean:
            deltas.setdefault(ctx, []).append(means[i] - control_mean[ctx])
    if not deltas:
        raise ValueError("has no context with both control cells and cells of a training condition")
    overall = np.vstack([d for ds in deltas.values() for d in ds]).mean(axis=0)
    shifts, fallback = {}, []
    for key in contexts:
        found = deltas.get("|".join(key))
        shifts[key] = np.mean(found, axis=0) if found else overall
        if not found:
            fallback.append(key)
    return shifts, fallback


def typical_condition_cells(train_cells) -> int:
    """How many cells a measured condition has: the median over the training perturbation conditions
    (perturbation x cell type x condition), at most MAX_CELLS; MAX_CELLS when there is none."""
    obs = train_cells.obs
    perturbed = ~obs["is_control"].to_numpy().astype(bool)
    if not perturbed.any():
        return MAX_CELLS
    keys = obs.loc[perturbed, ["perturbation", "cell_type", "condition"]].astype(str)
    sizes = keys.groupby(list(keys.columns), sort=False).size().to_numpy()
    return int(min(MAX_CELLS, max(2, np.ceil(np.median(sizes)))))


def shifted_control_cells(train_cells, test, shifts: dict | None, seed: int = 0, cap: int | None = None):
    """Per test row, (a seeded subsample of at most `cap` of) the training control cells of its context,
    plus `shifts[context]` (genes) when given. Returns (X, condition_ids, fallback contexts): X is sparse
    when nothing is shifted (the control cells as they are), dense float32 otherwise.

    `cap` None: as many as a measured condition typically has (`typical_condition_cells`). A control's predicted
    population is drawn from one pool of control cells, so cells beyond a measured condition's size add copies,
    not information: the U-statistics of the distribution metrics keep their expectation with fewer cells, while
    a copy of up to MAX_CELLS dense cells per condition made these controls' cells most of a genome-scale
    run's results (benchmarks/SPEED.md, "Scale")."""
    if cap is None:
        cap = typical_condition_cells(train_cells)
    by_context, all_controls = context_control_cells(train_cells)
    contexts = list(zip(test.obs["cell_type"].astype(str), test.obs["condition"].astype(str)))
    drawn, ids, fallback = [], [], set()
    for name, context in zip(test.obs_names.astype(str), contexts):
        pool = by_context.get(context)
        if pool is None:
            pool = all_controls
            fallback.add(context)
        drawn.append(pool[subsample(len(pool), cap, seed, name)])
        ids += [name] * len(drawn[-1])
    # the drawn control cells, read once (from disk when the cells are there), then placed per test row
    needed = np.unique(np.concatenate(drawn))
    X = cell_rows(train_cells, needed)
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    positions = [np.searchsorted(needed, rows) for rows in drawn]
    if shifts is None and sp.issparse(X):
        return sp.vstack([X[p] for p in positions], format="csr").astype(np.float32), ids, sorted(fallback)
    stacked = np.empty((len(ids), X.shape[1]), dtype=np.float32)  # filled in place: one copy of the output
    start = 0
    for p, context in zip(positions, contexts):
        block = X[p]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        if shifts is not None:
            block = (block.astype(np.float64) + shifts[context]).astype(np.float32)
        stacked[start:start + len(p)] = block
        start += len(p)
    return stacked, ids, sorted(fallback)


def observed_cells(solution_cells, test, half: int | None = None, seed: int = 0, cap: int | None = MAX_CELLS):
    """Per test row, (at most `cap` of; None: all) its observed cells, all or those of replicate half `half`.
    Returns (X, condition_ids, replicate_half per cell or None, conditions lacking that half). A condition
    without cells of `half` gives all its cells, unmarked (they are then scored against themselves)."""
    groups = cells_of_conditions(solution_cells, list(test.obs_names.astype(str)))
    halves = solution_cells.obs["replicate_half"].to_numpy() if half is not None else None
    picked, ids, marks, lacking = [], [], [], []
    for name in test.obs_names.astype(str):
        rows = groups[name]
        mark = half
        if half is not None:
            in_half = rows[halves[rows] == half]
            if len(in_half):
                rows = in_half
            else:
                lacking.append(name)
                mark = 0
        if cap is not None:
            rows = rows[subsample(len(rows), cap, seed, f"{name}|{mark}")]
        picked.append(rows)
        ids += [name] * len(rows)
        marks += [mark] * len(rows)
    rows = np.concatenate(picked)
    X = cell_rows(solution_cells, rows)
    X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    return X, ids, (np.array(marks, dtype=np.int64) if half is not None else None), lacking


def prediction_cells(X, condition_ids, prediction, replicate_half=None):
    """The `--output_cells` AnnData: cells x the prediction's genes, obs `condition_id` (and
    `replicate_half` when given), uns ids copied from the profile prediction."""
    import anndata as ad

    obs = pd.DataFrame({"condition_id": pd.Categorical(np.asarray(condition_ids, dtype=object))},
                       index=pd.Index([f"cell{i}" for i in range(len(condition_ids))], dtype=object))
    if replicate_half is not None:
        obs["replicate_half"] = np.asarray(replicate_half, dtype=np.int64)
    var = pd.DataFrame(index=pd.Index(prediction.var_names.astype(str), dtype=object))
    return ad.AnnData(X=X, obs=obs, var=var, uns={k: str(prediction.uns[k]) for k in
                                                  ("dataset_id", "task_id", "method_id")})


def write_prediction(io, par: dict, prediction, make_cells, needs: tuple[str, ...]):
    """Write `--output`, and `--output_cells` when it is requested and the cell inputs in `needs` were
    given (`make_cells()` builds it): both checked first, so a problem leaves neither file behind. The
    engine asks every control that declares `--output_cells` for cells but passes cell inputs only when the
    split has cells; without them no cells are written (logged) and cell metrics are not applicable."""
    from component_io import fail, log

    outputs = {"output": prediction}
    absent = []
    if par.get("output_cells"):
        absent = [f"--{name}" for name in needs if not par.get(name)]
        if absent:
            log(f"{prediction.uns['method_id']}: no predicted cells written ({' and '.join(absent)} not given: "
                "the split has no cells)")
    if par.get("output_cells") and not absent:
        try:
            outputs["output_cells"] = make_cells()
        except ValueError as error:
            fail(f"--{needs[-1]} file '{par[needs[-1]]}': {error}")
    io.write_all(outputs)
