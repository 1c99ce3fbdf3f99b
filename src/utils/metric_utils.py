"""Shared machinery of the metric components: reading the inputs, row-wise statistics on masks, distances
within contexts, ranks with ties, leave-one-out centroids, DEG weights, writing the score.

Included as a viash resource together with `deltas.py`, `component_io.py` and `formats.py`; needs numpy,
pandas, scipy and anndata. Every function works on (rows x genes) float64 arrays, one row per test
condition, and a boolean `keep` matrix of the same shape (True = the gene is scored for that row; the
row's target genes are False), as in `deltas.py`.

    data = read_inputs(par, meta)            # validated solution + prediction, deltas, keep, contexts
    top = top_k_mask(np.abs(data.observed), data.keep, 20)
    ...
    write_score(data, {"metric_id": per_row_values}, log_line="...")

Conventions shared by all metric components (each config's description repeats what applies to it):
- delta = profile minus the solution's `control` layer (same control for prediction and observation);
- a *context* is a cell_type x condition; comparisons between conditions stay inside a context and use
  the genes that are a target of none of the context's test conditions (`context_genes`);
- "constant" means a spread at or below the row's storage resolution, `resolution` = 4 float32 epsilons
  times the largest absolute value of the row in the solution, its control or the prediction;
- no metric value is ever NaN: undefined cases get a documented constant and are counted in the log.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

import deltas

# Two distances (or similarities) closer than this, relative to the largest one of the row, are a tie:
# far above float64 round-off of sums over thousands of genes, far below any difference of profiles
# stored in float32.
TIE_RTOL = 1e-9


# ----------------------------------------------------------------------------------------------------
# Inputs and output
# ----------------------------------------------------------------------------------------------------

@dataclass
class MetricData:
    io: object
    par: dict
    solution: object
    prediction: object
    control: np.ndarray      # rows x genes, the solution's control layer
    truth: np.ndarray        # rows x genes, observed profile (solution X)
    guess: np.ndarray        # rows x genes, predicted profile (prediction X)
    observed: np.ndarray     # truth - control
    predicted: np.ndarray    # guess - control
    keep: np.ndarray         # True = gene scored for the row (not one of its targets)
    resolution: np.ndarray   # per row, the storage resolution (see module docstring)
    contexts: np.ndarray     # per row, integer code of its cell_type x condition

    @property
    def n_rows(self) -> int:
        return self.truth.shape[0]


def storage_resolution(*arrays, factor: float = 4.0) -> np.ndarray:
    """Per row: `factor` float32 epsilons times the largest absolute value of the row in any of `arrays`
    (same value as `deltas.float32_tolerance`, without copying arrays that are already dense)."""
    scale = np.max([np.maximum(a.max(axis=1, initial=0.0), -a.min(axis=1, initial=0.0)) for a in arrays], axis=0)
    return factor * float(np.finfo(np.float32).eps) * scale


def context_codes(obs: pd.DataFrame) -> np.ndarray:
    """Integer code per row of its cell_type x condition (codes in order of first appearance)."""
    labels = obs["cell_type"].astype(str).str.cat(obs["condition"].astype(str), sep="\x1f")
    return pd.factorize(labels, sort=False)[0].astype(np.int64)


def read_inputs(par: dict, meta: dict) -> MetricData:
    """Read and check `--input_solution` and `--input_prediction` (one-line error and exit 1 if they do
    not conform: missing slots, NaN or infinite values, other rows or genes or another gene order, another
    dataset or task), and compute the deltas, the target mask and the contexts."""
    from component_io import ComponentIO, fail

    io = ComponentIO(par, meta)
    solution = io.read("input_solution")
    prediction = io.read("input_prediction")  # rows and genes must match the solution's, in the same order
    for key in ("dataset_id", "task_id"):
        if str(prediction.uns[key]) != str(solution.uns[key]):
            fail(f"--input_prediction file '{par['input_prediction']}': uns['{key}'] is {prediction.uns[key]!r} but "
                 f"the solution's is {solution.uns[key]!r}; expected a prediction for the same split")
    control = deltas.as_dense(solution.layers[deltas.CONTROL])
    truth = deltas.as_dense(solution.X)
    guess = deltas.as_dense(prediction.X)
    keep = ~deltas.target_mask(solution.obs["perturbation"], solution.var_names)
    empty = np.flatnonzero(keep.sum(axis=1) == 0)
    if len(empty):
        fail(f"--input_solution file '{par['input_solution']}': row {solution.obs_names[empty[0]]!r} has no gene "
             "left once its target genes are excluded")
    return MetricData(io=io, par=par, solution=solution, prediction=prediction, control=control, truth=truth,
                      guess=guess, observed=truth - control, predicted=guess - control, keep=keep,
                      resolution=storage_resolution(truth, control, guess), contexts=context_codes(solution.obs))


def write_score(data: MetricData, values: dict, uns: dict | None = None, log_line: str | None = None):
    """Write the score file: obs = `stratum` + one float column per metric id (per-condition values),
    uns = ids, `metric_ids`, `metric_values` (mean over conditions) and `uns` extras."""
    import anndata as ad
    from component_io import fail, log

    solution, prediction = data.solution, data.prediction
    obs = pd.DataFrame({"stratum": solution.obs["stratum"].astype(str).to_numpy(),
                        **{k: np.asarray(v, dtype=np.float64) for k, v in values.items()}},
                       index=pd.Index(solution.obs_names.astype(str), dtype=object))
    bad = [k for k in values if not np.isfinite(obs[k].to_numpy()).all()]
    if bad:
        fail(f"metric values {bad} are not finite (unexpected, since the inputs are finite); nothing written")
    if log_line:
        log(log_line)
    score = ad.AnnData(obs=obs, uns={
        "dataset_id": str(prediction.uns["dataset_id"]), "task_id": str(prediction.uns["task_id"]),
        "method_id": str(prediction.uns["method_id"]),
        "metric_ids": list(values), "metric_values": [float(obs[k].mean()) for k in values],
        **(uns or {}),
    })
    data.io.write("output", score)


# ----------------------------------------------------------------------------------------------------
# Gene selections
# ----------------------------------------------------------------------------------------------------

def _kth_largest(values: np.ndarray, keep: np.ndarray, k: int):
    """Per row: the masked values (non-kept = -inf), k_row = min(k, kept genes) and the k_row-th largest."""
    v = np.where(keep, values, -np.inf)
    k_row = np.minimum(k, keep.sum(axis=1))
    kk = int(min(k, v.shape[1]))
    top = np.partition(v, v.shape[1] - kk, axis=1)[:, v.shape[1] - kk:]  # the kk largest, unordered
    top.sort(axis=1)
    threshold = top[np.arange(v.shape[0]), kk - np.maximum(k_row, 1)]
    return v, k_row, threshold


def top_k_mask(values: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest `values` of each row among its kept genes (all kept genes when a row
    keeps fewer than k). Ties at the boundary go to the genes that come first in the gene order, so the
    selection is deterministic."""
    v, k_row, threshold = _kth_largest(values, keep, k)
    greater = v > threshold[:, None]
    ties = (v == threshold[:, None]) & keep
    need = k_row - greater.sum(axis=1)
    crowded = np.flatnonzero(ties.sum(axis=1) > need)  # rows with more tied genes than places left
    mask = greater | ties
    if len(crowded):
        mask[crowded] = greater[crowded] | (ties[crowded] & (np.cumsum(ties[crowded], axis=1) <= need[crowded, None]))
    return mask


def fractional_top_k(values: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected membership of each gene in the top k of its row under uniformly random tie-breaking:
    1 above the k-th largest kept value, `(places left) / (genes tied)` at it, 0 below or not kept.
    Returns `(membership, k_row)` with k_row = min(k, kept genes); each row's membership sums to k_row.
    Used where the ranked values come from the prediction, so that no gene order can be exploited."""
    v, k_row, threshold = _kth_largest(values, keep, k)
    greater = v > threshold[:, None]
    ties = (v == threshold[:, None]) & keep
    share = (k_row - greater.sum(axis=1)) / np.maximum(ties.sum(axis=1), 1)
    membership = greater.astype(np.float64)
    membership[ties] = np.broadcast_to(share[:, None], ties.shape)[ties]
    return membership, k_row


# ----------------------------------------------------------------------------------------------------
# Row-wise statistics
# ----------------------------------------------------------------------------------------------------

def masked_average_ranks(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per row, the 1-based rank of each kept value among the row's kept values, ties sharing their
    average rank (non-kept entries get ranks above every kept one; ignore them)."""
    v = np.where(keep, values, np.inf)
    n, g = v.shape
    order = np.argsort(v, axis=1)  # the sort need not be stable: tied values share their average rank
    ordered = np.take_along_axis(v, order, axis=1)
    start = np.ones((n, g), dtype=bool)  # first position of a run of equal values
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=start[:, 1:])
    end = np.ones((n, g), dtype=bool)  # last position of a run
    end[:, :-1] = start[:, 1:]
    position = np.arange(g, dtype=np.int32)
    first = np.maximum.accumulate(np.where(start, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(end, position, g)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n, g), dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) * 0.5 + 1.0, axis=1)
    return ranks


def snap(values: np.ndarray, resolution: np.ndarray) -> np.ndarray:
    """Round each row to multiples of its resolution, so that differences below the storage resolution
    become ties instead of an arbitrary order (rows with resolution 0 are returned unchanged)."""
    step = np.where(resolution > 0, resolution, 1.0)[:, None]
    return np.where(resolution[:, None] > 0, np.round(values / step), values)


def masked_rowwise_spearman(a, b, keep, resolution) -> tuple[np.ndarray, np.ndarray]:
    """Spearman correlation of each row of `a` with the row of `b` over kept entries: the Pearson
    correlation of average ranks, after snapping values to the row's resolution. Undefined (-> 0.0,
    flagged) when fewer than two entries are kept or either side is constant."""
    ranks_a = masked_average_ranks(snap(a, resolution), keep)
    ranks_b = masked_average_ranks(snap(b, resolution), keep)
    return deltas.masked_rowwise_pearson(ranks_a, ranks_b, keep)


def masked_rowwise_cosine(a, b, keep, atol=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each row of `a` with the row of `b` over kept entries. Undefined (-> 0.0,
    flagged) when either vector is zero, i.e. its root mean square over kept entries is at most `atol`."""
    a = np.where(keep, a, 0.0)
    b = np.where(keep, b, 0.0)
    n = np.maximum(keep.sum(axis=1), 1).astype(np.float64)
    ss_a, ss_b = (a * a).sum(axis=1), (b * b).sum(axis=1)
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), n.shape)
    undefined = (np.sqrt(ss_a / n) <= atol) | (np.sqrt(ss_b / n) <= atol) | (ss_a == 0) | (ss_b == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(undefined, 0.0, (a * b).sum(axis=1) / np.sqrt(ss_a * ss_b))
    return np.clip(cosine, -1.0, 1.0), undefined


def signs(values: np.ndarray, resolution: np.ndarray) -> np.ndarray:
    """-1, 0 or +1 per entry; |value| at or below the row's resolution counts as 0 (no change)."""
    return np.where(np.abs(values) <= resolution[:, None], 0, np.sign(values)).astype(np.int8)


# ----------------------------------------------------------------------------------------------------
# Within-context comparisons
# ----------------------------------------------------------------------------------------------------

def groups(codes: np.ndarray):
    """(code, row indices) for every context, in order of first appearance."""
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for rows in np.split(order, bounds):
        if len(rows):
            yield int(codes[rows[0]]), rows


def leave_one_out_means(values: np.ndarray, codes: np.ndarray, keep=None) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the mean of the *other* rows of its context, and the context sizes.

    With `keep`, gene g of row i averages only the other rows that keep g, i.e. that do not target g,
    so that another condition's knock-down of its own target does not leak into the reference (where
    every other row targets g, the plain mean of the other rows is used). Rows alone in their context
    get NaN (callers handle them).
    """
    import scipy.sparse as sp

    n_rows = values.shape[0]
    n_groups = int(codes.max()) + 1
    indicator = sp.csr_matrix((np.ones(n_rows), (codes, np.arange(n_rows))), shape=(n_groups, n_rows))
    sizes = np.bincount(codes, minlength=n_groups)[codes]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (np.asarray(indicator @ values)[codes] - values) / (sizes - 1)[:, None]
        if keep is not None:
            weight = np.asarray(keep, dtype=np.float64)
            counts = np.asarray(indicator @ weight)[codes] - weight
            kept_means = (np.asarray(indicator @ (values * weight))[codes] - values * weight) / counts
            means = np.where(counts > 0, kept_means, means)
    means[sizes == 1] = np.nan
    return means, sizes


def pairwise_distances(a: np.ndarray, b: np.ndarray, excluded=None, metric: str = "l1",
                       zero_a=None, zero_b=None) -> np.ndarray:
    """D[i, j] = distance between row i of `a` and row j of `b`, per used gene.

    `excluded` (optional, boolean, shape of `a`): genes left out for row i, against every j (cell-eval's
    convention: all distances of a row use the same genes). The metric components pass `a` and `b`
    already restricted to the genes they compare and no `excluded`.

    metric: `l1` = mean absolute difference over the used genes (cell-eval's L1, a sum, divided by the
    number of used genes, which is the same for every distance of a row, so ranks are unchanged);
    `euclidean` = root mean squared difference; `cosine` = 1 - cosine similarity, where a vector whose
    root mean square over the used genes is at most its `zero_*` tolerance (one per row) counts as zero
    and has similarity 0 with everything, as in scikit-learn. Excluded genes are handled by subtracting
    their contributions from full-gene results (exact up to float64 round-off).
    """
    import scipy.sparse as sp

    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    n_a, n_b, n_genes = a.shape[0], b.shape[0], a.shape[1]
    excluded = np.zeros(a.shape, dtype=bool) if excluded is None else np.asarray(excluded, dtype=bool)
    rows, cols = np.nonzero(excluded)
    # select[r, k] = 1 when the k-th excluded entry belongs to row r
    select = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n_a, len(rows)))
    n_used = np.maximum(n_genes - excluded.sum(axis=1), 1).astype(np.float64)[:, None]

    if metric == "l1":
        total = _tiled_cityblock(a, b)
        if len(rows):
            total -= np.asarray(select @ np.abs(a[rows, cols][:, None] - b[:, cols].T))
        return np.maximum(total, 0.0) / n_used

    a_used = np.where(excluded, 0.0, a)
    dot = a_used @ b.T
    sq_a = (a_used * a_used).sum(axis=1)[:, None]
    sq_b = np.broadcast_to((b * b).sum(axis=1)[None, :], (n_a, n_b)).copy()
    if len(rows):
        sq_b = np.maximum(sq_b - np.asarray(select @ (b[:, cols].T ** 2)), 0.0)
    if metric == "euclidean":
        return np.sqrt(np.maximum(sq_a + sq_b - 2.0 * dot, 0.0) / n_used)
    if metric != "cosine":
        raise ValueError(f"unknown metric {metric!r}")
    zero_a = np.zeros(n_a) if zero_a is None else np.asarray(zero_a, dtype=np.float64)
    zero_b = np.zeros(n_b) if zero_b is None else np.asarray(zero_b, dtype=np.float64)
    null = (np.sqrt(sq_a / n_used) <= zero_a[:, None]) | (np.sqrt(sq_b / n_used) <= zero_b[None, :]) \
        | (sq_a == 0) | (sq_b == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        similarity = np.where(null, 0.0, dot / np.sqrt(sq_a * sq_b))
    return 1.0 - np.clip(similarity, -1.0, 1.0)


def available_cpus() -> int:
    """CPUs this process may use (respects taskset / cgroup affinity where the platform reports it)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _tiled_cityblock(a: np.ndarray, b: np.ndarray, block: int = 64, threads: int | None = None) -> np.ndarray:
    """scipy's cdist(a, b, "cityblock") computed on block x block tiles, in parallel threads (cdist
    releases the GIL). Tiles keep both operands in cache; each entry is computed exactly as cdist does."""
    from concurrent.futures import ThreadPoolExecutor

    from scipy.spatial.distance import cdist

    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    tiles = [(i, j) for i in range(0, a.shape[0], block) for j in range(0, b.shape[0], block)]

    def fill(tile):
        i, j = tile
        out[i:i + block, j:j + block] = cdist(a[i:i + block], b[j:j + block], "cityblock")

    threads = min(threads or available_cpus(), len(tiles))
    if threads <= 1:
        for tile in tiles:
            fill(tile)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fill, tiles))
    return out


def context_genes(keep: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Boolean gene mask of a context: the genes that are a target of none of its `rows`. Comparisons
    between the context's conditions use exactly these genes, so that every distance is over the same
    genes and no condition's own target (whose measured level methods may know) enters any of them."""
    return keep[rows].all(axis=0)


def diagonal_ranks(distances: np.ndarray) -> np.ndarray:
    """For each row i of a square matrix: the number of j != i with D[i, j] < D[i, i], where entries
    within `TIE_RTOL` (relative to the row's largest absolute entry) of D[i, i] count one half each, i.e.
    the expected rank of the diagonal under uniformly random tie-breaking (0 = nothing is closer)."""
    own = np.diag(distances)[:, None]
    tol = TIE_RTOL * np.maximum(np.abs(distances).max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    smaller = (distances < own - tol).sum(axis=1)
    ties = (np.abs(distances - own) <= tol).sum(axis=1) - 1
    return smaller + 0.5 * ties


# ----------------------------------------------------------------------------------------------------
# DEG weights (Mejia et al. 2025)
# ----------------------------------------------------------------------------------------------------

def deg_weights(effect: np.ndarray, keep: np.ndarray, resolution) -> np.ndarray:
    """Per-row gene weights from the size of a perturbation-specific effect, Mejia et al.'s transform:
    |effect| min-max scaled over the row's kept genes, squared, normalised to sum 1 (0 on other genes).
    A row whose |effect| spans no more than its resolution gets uniform weights over its kept genes."""
    size = np.abs(effect)
    low = np.where(keep, size, np.inf).min(axis=1)
    high = np.where(keep, size, -np.inf).max(axis=1)
    span = high - low
    flat = span <= np.asarray(resolution, dtype=np.float64)
    scaled = (size - low[:, None]) / np.where(flat, 1.0, span)[:, None]
    weights = np.where(keep, scaled ** 2, 0.0)
    weights[flat] = keep[flat]
    return weights / weights.sum(axis=1, keepdims=True)
