"""Gene selections of the metric components: the top k genes of each row (deterministic or with
expected membership under random tie-breaking), compact gathers of selected genes, row-wise dot products.

Included as a viash resource with `metric_utils.py` (which re-exports these functions); needs numpy and
scipy. Works on (rows x genes) arrays with a boolean `keep` matrix (True = the gene may be selected).
"""
from __future__ import annotations

import numpy as np


def nonzero_2d(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.nonzero` of a 2-d array (the same indices, in the same order), ~10x faster: numpy's 2-d nonzero
    is far slower than its 1-d one."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1]) if mask.shape[1] else np.nonzero(mask)


def _kth_largest(values: np.ndarray, keep: np.ndarray, ks, known: dict | None = None):
    """Per row: the masked values (non-kept = -inf) and, for each k of `ks`, k_row = min(k, kept genes)
    and the k_row-th largest value (one partition for all k; none where `known` has them already)."""
    v = np.where(keep, values, -np.inf)
    if known is not None and all(k in known for k in ks):
        return v, {k: known[k] for k in ks}
    kept = keep.sum(axis=1)
    kk = int(min(max(ks), v.shape[1]))
    top = _largest(v, kk)
    out = {}
    for k in ks:
        k_row = np.minimum(k, kept)
        out[k] = (k_row, top[np.arange(v.shape[0]), kk - np.maximum(k_row, 1)])
    return v, out


# Every SAMPLE_STEP-th gene of a row is a sample whose SAMPLE_EXCESS * kk / SAMPLE_STEP-th largest value is
# exceeded by about SAMPLE_EXCESS * kk of the row's values: those candidates hold its kk largest.
SAMPLE_STEP, SAMPLE_EXCESS = 8, 2


def _largest(v: np.ndarray, kk: int) -> np.ndarray:
    """Per row, its `kk` largest values in ascending order. Selecting among all of a row's values (introselect
    over 8,000 genes) costs most; a strided sample gives a threshold that about 2 * kk values reach, and only
    those candidates are sorted. A row with fewer than kk candidates is selected in full: the same values."""
    n, g = v.shape
    q = SAMPLE_EXCESS * kk // SAMPLE_STEP
    if kk == 0 or n == 0 or q < 1 or g < 4 * SAMPLE_EXCESS * kk:
        top = np.partition(v, g - kk, axis=1)[:, g - kk:] if kk else v[:, :0].copy()
        top.sort(axis=1)
        return top
    sample = v[:, ::SAMPLE_STEP]
    threshold = np.partition(sample, sample.shape[1] - q, axis=1)[:, sample.shape[1] - q]
    candidate = v >= threshold[:, None]
    counts = candidate.sum(axis=1)
    # rows whose threshold is -inf (fewer kept genes than the sample's q) would take every gene as a candidate
    full = np.flatnonzero((counts < kk) | (counts > 4 * SAMPLE_EXCESS * kk))
    candidate[full] = False
    columns, valid = compact(candidate)
    values = np.take_along_axis(v, columns, axis=1)
    values[~valid] = -np.inf  # padding: below every candidate, above none of the kk largest
    width = values.shape[1]
    if width >= kk:
        top = np.partition(values, width - kk, axis=1)[:, width - kk:]
    else:  # every row is selected in full
        top = np.empty((n, kk), dtype=v.dtype)
    if len(full):
        top[full] = np.partition(v[full], g - kk, axis=1)[:, g - kk:]
    top.sort(axis=1)
    return top


def top_k_mask(values: np.ndarray, keep: np.ndarray, k: int, known: dict | None = None) -> np.ndarray:
    """Boolean mask of the k largest `values` of each row among its kept genes (all kept genes when a row
    keeps fewer than k). Ties at the boundary go to the genes that come first in the gene order, so the
    selection is deterministic. `known`: thresholds from `_kth_largest` of the same values, if any."""
    v, (k_row, threshold) = _single(_kth_largest(values, keep, (k,), known))
    greater = v > threshold[:, None]
    ties = (v == threshold[:, None]) & keep
    need = k_row - greater.sum(axis=1)
    crowded = np.flatnonzero(ties.sum(axis=1) > need)  # rows with more tied genes than places left
    mask = greater | ties
    if len(crowded):
        mask[crowded] = greater[crowded] | (ties[crowded] & (np.cumsum(ties[crowded], axis=1) <= need[crowded, None]))
    return mask


def compact(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(columns, valid): per row the column indices of the row's True entries in order, left-aligned and
    padded to the longest row; `valid` is False on padding. Gather with np.take_along_axis(a, columns, 1)."""
    counts = mask.sum(axis=1)
    width = max(int(counts.max(initial=0)), 1)
    rows, cols = nonzero_2d(mask)
    position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    columns = np.zeros((mask.shape[0], width), dtype=np.int64)
    valid = np.zeros((mask.shape[0], width), dtype=bool)
    columns[rows, position] = cols
    valid[rows, position] = True
    return columns, valid


def _single(result):
    v, by_k = result
    return v, next(iter(by_k.values()))


def fractional_top_k(values: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected membership of each gene in the top k of its row under uniformly random tie-breaking:
    1 above the k-th largest kept value, `(places left) / (genes tied)` at it, 0 below or not kept.
    Returns `(membership, k_row)` with k_row = min(k, kept genes); each row's membership sums to k_row.
    Used where the ranked values come from the prediction, so that no gene order can be exploited."""
    membership, k_row = fractional_top_ks(values, keep, (k,))[k]
    return membership.toarray(), k_row


def fractional_top_ks(values: np.ndarray, keep: np.ndarray, ks, known: dict | None = None) -> dict:
    """`fractional_top_k` for every k of `ks` ({k: (membership, k_row)}), sorting each row's top once.
    The memberships are sparse (CSR): at most k_row plus the tied genes per row are nonzero."""
    import scipy.sparse as sp

    if not len(ks):
        return {}
    v, by_k = _kth_largest(values, keep, ks, known)
    # every gene at or above a k's threshold is at or above the lowest one: the genes of the largest k (about
    # k per row) are gathered once and each k works on them, not on every gene (the same memberships, in the
    # same row-major order: `compact` keeps each row's genes in column order)
    lowest = np.min([threshold for _, threshold in by_k.values()], axis=0)
    columns, valid = compact(v >= lowest[:, None])
    candidates = np.take_along_axis(v, columns, axis=1)
    candidates[~valid] = -np.inf  # padding: above no threshold
    kept = np.take_along_axis(keep, columns, axis=1) & valid
    out = {}
    for k, (k_row, threshold) in by_k.items():
        greater = candidates > threshold[:, None]
        ties = (candidates == threshold[:, None]) & kept
        share = (k_row - greater.sum(axis=1)) / np.maximum(ties.sum(axis=1), 1)
        rows, positions = nonzero_2d(greater | ties)
        weight = np.where(greater[rows, positions], 1.0, share[rows])
        out[k] = (sp.csr_matrix((weight, (rows, columns[rows, positions])), shape=v.shape), k_row)
    return out


def sparse_row_dot(a, b) -> np.ndarray:
    """Per row, the sum of the entrywise product of two sparse matrices of the same shape."""
    return np.asarray(a.multiply(b).sum(axis=1), dtype=np.float64).ravel()


def row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, sum_g a[i, g] * b[i, g] (one pass, no temporary matrix)."""
    return np.einsum("ij,ij->i", a, b)
