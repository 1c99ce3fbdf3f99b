"""Deltas to the control profile, target-gene exclusion and row-wise masked statistics for metrics.

Included as a viash resource by metric components; needs only numpy (and scipy for sparse input).

    control = as_dense(solution.layers["control"])                 # training controls: what methods saw
    observed = as_dense(solution.X) - as_dense(solution.layers["control_reference"])  # controls no method saw
    predicted = as_dense(prediction.X) - control
    keep = ~target_mask(solution.obs["perturbation"], solution.var_names)   # True = gene is scored
    errors = masked_errors(predicted, observed, keep)                       # mse / mae / rmse per row
    r, undefined = masked_rowwise_pearson(predicted, observed, keep,
                                          atol=float32_tolerance(solution.X, control, prediction.X))

Everything is computed for all rows at once on (rows x genes) arrays; `keep` is a boolean matrix of the
same shape. A row is one test condition.
"""
from __future__ import annotations

import numpy as np

import vocabulary
from vocabulary import CONTROL  # noqa: F401 (deltas.CONTROL: also the name of the layer of control means)

# Values per block of rows in the row-wise statistics (64 rows of 8,000 genes: 4 MB of float64).
BLOCK_VALUES = 1 << 19

# The solution layer of control means that observed deltas subtract: control cells no method saw.
CONTROL_REFERENCE = "control_reference"


def as_dense(matrix) -> np.ndarray:
    """A float64 ndarray copy of a dense, sparse or backed matrix."""
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    return np.array(matrix, dtype=np.float64)


def as_stored(matrix) -> np.ndarray:
    """A dense ndarray of a dense, sparse or backed matrix in its stored dtype where that is float32 or float64
    (a dense ndarray is returned as is, not copied), else a float64 copy."""
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    matrix = np.asarray(matrix)
    return matrix if matrix.dtype in (np.float32, np.float64) else matrix.astype(np.float64)


def target_mask(perturbations, var_names) -> np.ndarray:
    """Boolean (rows x genes) matrix, True where the gene is a target of the row's perturbation.

    Targets that are not among `var_names` exclude nothing.
    """
    position = {str(gene): j for j, gene in enumerate(var_names)}
    perturbations = [str(p) for p in perturbations]
    mask = np.zeros((len(perturbations), len(position)), dtype=bool)
    pairs = [(i, position[t]) for i, p in enumerate(perturbations) for t in vocabulary.targets(p) if t in position]
    if pairs:
        rows, cols = np.array(pairs).T
        mask[rows, cols] = True
    return mask


def row_blocks(matrix: np.ndarray) -> list:
    """Slices of blocks of rows of `matrix` (about BLOCK_VALUES values each): row-wise computations block by
    block give the same values as on the whole matrix without its temporaries, each block in cache."""
    rows = matrix.shape[0] if matrix.ndim else 1
    step = max(1, BLOCK_VALUES // max(matrix.shape[1] if matrix.ndim > 1 else 1, 1))
    return [slice(start, start + step) for start in range(0, rows, step)] or [slice(0, 0)]


def _row_counts(keep: np.ndarray) -> np.ndarray:
    return keep.sum(axis=1).astype(np.float64)


def masked_mean(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean of each row over its kept entries (NaN for a row with none kept)."""
    values, keep = np.asarray(values), np.asarray(keep, dtype=bool)
    n = _row_counts(keep)
    total = np.empty(len(n))
    for rows in row_blocks(keep):  # the same sums as over the whole matrix, without its temporary
        total[rows] = np.where(keep[rows], values[rows], 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / n


def masked_errors(predicted: np.ndarray, observed: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row mean squared error, mean absolute error and root mean squared error over kept genes."""
    predicted, observed, keep = np.asarray(predicted), np.asarray(observed), np.asarray(keep, dtype=bool)
    n = _row_counts(keep)
    squares, absolute = np.empty(len(n)), np.empty(len(n))
    for rows in row_blocks(keep):  # the same sums as over the whole matrices, without their temporaries
        difference = np.subtract(predicted[rows], observed[rows], dtype=np.float64)  # float64 for stored profiles too
        squares[rows] = np.where(keep[rows], difference ** 2, 0.0).sum(axis=1)
        absolute[rows] = np.where(keep[rows], np.abs(difference), 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = squares / n
        return {"mse": mse, "mae": absolute / n, "rmse": np.sqrt(mse)}


def float32_tolerance(*matrices, factor: float = 4.0) -> np.ndarray:
    """Per-row spread below which a delta counts as constant: `factor` float32 epsilons times the largest
    absolute value of the row in any of `matrices` (the resolution at which the profiles are stored)."""
    scale = np.max([np.abs(as_dense(m)).max(axis=1, initial=0.0) for m in matrices], axis=0)
    return factor * float(np.finfo(np.float32).eps) * scale


def masked_rowwise_pearson(a: np.ndarray, b: np.ndarray, keep: np.ndarray, atol=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of each row of `a` with the same row of `b`, over that row's kept entries.

    Returns `(r, undefined)`. The correlation is undefined when a row keeps fewer than two entries or
    when either vector is constant, i.e. its standard deviation over the kept entries is at most `atol`
    (scalar or one value per row; a floor of 64 float64 epsilons of the row's magnitude always applies).
    Undefined rows get r = 0.0, never NaN; `undefined` flags them.
    """
    a, b, keep = np.asarray(a), np.asarray(b), np.asarray(keep, dtype=bool)
    n = _row_counts(keep)
    safe_n = np.maximum(n, 1.0)
    eps = 64 * np.finfo(np.float64).eps
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), n.shape)
    rows = keep.shape[0]
    ss_a, ss_b, cross, large_a, large_b = (np.empty(rows) for _ in range(5))
    # blocks of rows: the same operations on each row as on the whole matrix (the values do not depend on
    # the blocking), without matrix-sized temporaries, and with each block in cache for all its passes
    for block in row_blocks(keep):
        centred = []
        for x, squares, largest in ((a, ss_a, large_a), (b, ss_b, large_b)):
            kept = np.where(keep[block], np.asarray(x[block], dtype=np.float64), 0.0)
            largest[block] = np.maximum(kept.max(axis=1, initial=0.0), -kept.min(axis=1, initial=0.0))
            kept -= (kept.sum(axis=1) / safe_n[block])[:, None]
            np.multiply(kept, keep[block], out=kept)  # centred over the kept entries, 0 elsewhere
            centred.append(kept)
            squares[block] = np.einsum("ij,ij->i", kept, kept)
        cross[block] = np.einsum("ij,ij->i", centred[0], centred[1])
    tol_a, tol_b = np.maximum(atol, eps * large_a), np.maximum(atol, eps * large_b)
    undefined = (n < 2) | (np.sqrt(ss_a / safe_n) <= tol_a) | (np.sqrt(ss_b / safe_n) <= tol_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(undefined, 0.0, cross / np.sqrt(ss_a * ss_b))
    return np.clip(r, -1.0, 1.0), undefined


def label_match_mask(perturbations, var_names) -> np.ndarray:
    """Boolean (rows x genes) matrix, True where the gene's name equals the row's whole perturbation label.

    Not used by any metric: it reproduces cell-eval's target exclusion (`discrimination_score` leaves out
    the gene named like the perturbation, so a single-gene perturbation loses its target and a
    combination `A+B` loses nothing), for tests that compare our metrics with cell-eval on equal terms.
    Our metrics exclude every target of a combination (`target_mask`).
    """
    position = {str(gene): j for j, gene in enumerate(var_names)}
    mask = np.zeros((len(perturbations), len(position)), dtype=bool)
    for i, label in enumerate(perturbations):
        j = position.get(str(label))
        if j is not None:
            mask[i, j] = True
    return mask


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
