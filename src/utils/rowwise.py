"""Row-wise statistics of the metric components: ranks with ties, Spearman and cosine per row, signs.

Shipped beside metric_utils.py (a viash resource of every metric that lists it) and re-exported by it. Each
row gets the same floating-point operations whatever the block it is computed in, so the values do not
depend on the block size (tests/test_metric_equivalence.py).
"""
from __future__ import annotations

import numpy as np

import deltas
from deltas import in_threads

# Rows ranked at a time (a block of 8,000 genes stays within a few MB of cache).
RANK_BLOCK_ROWS = 128
# Rows of the first matrix ranked and correlated at a time by masked_rowwise_spearman.
SPEARMAN_BLOCK_ROWS = 4 * RANK_BLOCK_ROWS

def masked_average_ranks(values: np.ndarray, keep: np.ndarray, dtype=np.float64, whole=False,
                         snap_to=None) -> np.ndarray:
    """Per row, the 1-based rank of each kept value among the row's kept values, ties sharing their
    average rank (non-kept entries get ranks above every kept one; ignore them). `dtype` float32 halves
    the memory traffic of the ranks (exact for rows shorter than 2**23: ranks are multiples of 1/2).
    Blocks of rows are ranked in parallel threads (numpy's sorts and indexing release the GIL).
    `whole`: the caller knows the values to be whole numbers (snapped values), which are ranked by sorting
    keys that hold both the value and its column (same ranks, without an argsort). `snap_to`: per row, a
    resolution to snap the values to first (`snap`, block by block)."""
    n, g = values.shape
    ranks = np.empty((n, g), dtype=dtype)
    blocks = [slice(start, start + RANK_BLOCK_ROWS) for start in range(0, n, RANK_BLOCK_ROWS)]

    def fill(rows):
        block = values[rows] if snap_to is None else snap(values[rows], snap_to[rows])
        ranks[rows] = (_whole_average_ranks if whole else _average_ranks)(block, keep[rows], dtype)

    in_threads(fill, blocks)
    return ranks


def _average_ranks(values: np.ndarray, keep: np.ndarray, dtype) -> np.ndarray:
    n, g = values.shape
    v = np.where(keep, values, np.inf)
    order = np.argsort(v, axis=1)  # the sort need not be stable: tied values share their average rank
    ordered = np.take_along_axis(v, order, axis=1)
    del v
    start = _run_starts(ordered)
    del ordered
    return _ranks_of_runs(start, order, dtype)


def _run_starts(ordered: np.ndarray) -> np.ndarray:
    """Of each row's sorted values: True at the first position of a run of equal values (each row starts one)."""
    start = np.empty(ordered.shape, dtype=bool)
    start[:, 0] = True
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=start[:, 1:])
    return start


def _ranks_of_runs(start: np.ndarray, order: np.ndarray, dtype) -> np.ndarray:
    """Average ranks from the run starts of each row's sorted values and their columns `order` (tied runs
    share the average of their 1-based positions). The sorted values themselves are freed by the caller.
    Most values are alone in their run (rank = position + 1, exact in float32 below 2**24): those are written
    in one scatter, then the few tied runs get the average, computed as for every run before (the same values)."""
    n, g = start.shape
    ranks = np.empty((n, g), dtype=dtype)
    # 1-d scatter: numpy's 2-d one (put_along_axis) builds index arrays for both axes
    order += (np.arange(n, dtype=order.dtype) * g)[:, None]  # (the caller's order is not used again)
    flat_order = order.ravel()
    ranks.ravel()[flat_order] = np.broadcast_to(np.arange(1, g + 1, dtype=dtype), (n, g)).ravel()
    tied = np.flatnonzero(~start.ravel())  # sorted positions that continue a run (runs never cross rows)
    if len(tied):
        breaks = np.flatnonzero(np.diff(tied) != 1) + 1  # each run's continuations are consecutive
        first = tied[np.concatenate(([0], breaks))] - 1
        last = tied[np.concatenate((breaks - 1, [len(tied) - 1]))]
        # average of the run's 1-based positions within its row
        average = (first + last) * 0.5 - (first // g) * g + 1.0
        lengths = last - first + 1
        positions = np.arange(lengths.sum()) + np.repeat(first - (np.cumsum(lengths) - lengths), lengths)
        ranks.ravel()[flat_order[positions]] = np.repeat(average, lengths).astype(dtype, copy=False)
    return ranks


def _whole_average_ranks(values: np.ndarray, keep: np.ndarray, dtype) -> np.ndarray:
    """`_average_ranks` of whole numbers: each kept value v of column c becomes the key v * 2**bits + c
    (exact in float64 while |v| * 2**bits < 2**52), non-kept entries the key 2**52 + c; one plain sort of
    the keys gives the order of the values and, from the low bits, their columns. Other values: `_average_ranks`.
    The sorted keys are split as integers (arithmetic shift: the floor of key / 2**bits, which is v; low bits: c),
    and only the few non-kept entries are rewritten (~5 passes over the block fewer than masking every entry)."""
    n, g = values.shape
    bits = max(int(g - 1).bit_length(), 1)
    if g == 0 or bits > 40:
        return _average_ranks(values, keep, dtype)
    keys = np.multiply(values, float(2 ** bits))
    # (non-kept values count here too: a large one only sends the block to the general path, same ranks)
    if max(keys.max(initial=0.0), -keys.min(initial=0.0)) >= 2.0 ** 52:
        return _average_ranks(values, keep, dtype)
    keys += np.arange(g, dtype=np.float64)
    dropped = np.flatnonzero(~keep)
    keys.ravel()[dropped] = 2.0 ** 52 + dropped % g
    keys.sort(axis=1)
    whole = keys.astype(np.int64)  # exact: whole numbers below 2**53
    del keys
    order = np.bitwise_and(whole, 2 ** bits - 1).astype(np.intp, copy=False)
    whole >>= bits  # the values in order (non-kept: 2**(52 - bits)); equal where the values are
    start = _run_starts(whole)
    del whole
    return _ranks_of_runs(start, order, dtype)


def snap(values: np.ndarray, resolution: np.ndarray) -> np.ndarray:
    """Round each row to multiples of its resolution, so that differences below the storage resolution
    become ties instead of an arbitrary order (rows with resolution 0 are returned unchanged)."""
    step = np.where(resolution > 0, resolution, 1.0)[:, None]
    out = np.divide(values, step)
    np.round(out, out=out)
    unchanged = np.flatnonzero(resolution <= 0)
    out[unchanged] = values[unchanged]
    return out


def masked_rowwise_spearman(a, b, keep, resolution, shared=None) -> tuple[np.ndarray, np.ndarray]:
    """Spearman correlation of each row of `a` with the row of `b` over kept entries: the Pearson
    correlation of average ranks, after snapping values to the row's resolution. Undefined (-> 0.0,
    flagged) when fewer than two entries are kept or either side is constant. With `shared` (a
    MetricData's `shared`), b's ranks are kept for the next call with the same resolution."""
    rank_b = lambda: _snapped_ranks(b, keep, resolution)  # noqa: E731
    ranks_b = rank_b() if shared is None else shared("spearman_ranks", rank_b, version=resolution.tobytes())
    resolution = np.asarray(resolution)
    r, undefined = np.empty(len(keep)), np.empty(len(keep), dtype=bool)
    # a's ranks by blocks of rows (each row's correlation is its own): no matrix of them to fault in
    step = SPEARMAN_BLOCK_ROWS
    for rows in (slice(start, start + step) for start in range(0, len(keep), step)):
        ranks_a = _snapped_ranks(a[rows], keep[rows], resolution[rows])
        r[rows], undefined[rows] = deltas.masked_rowwise_pearson(ranks_a, ranks_b[rows], keep[rows])
    return r, undefined


def _snapped_ranks(values, keep, resolution) -> np.ndarray:
    """Average ranks of the values snapped to the row's resolution (float32 ranks where exact)."""
    resolution = np.asarray(resolution, dtype=np.float64)
    return masked_average_ranks(values, keep, dtype=np.float32 if values.shape[1] < 2 ** 22 else np.float64,
                                whole=bool((resolution > 0).all()), snap_to=resolution)  # snapped: whole numbers


def masked_rowwise_cosine(a, b, keep, atol=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each row of `a` with the row of `b` over kept entries. Undefined (-> 0.0,
    flagged) when either vector is zero, i.e. its root mean square over kept entries is at most `atol`."""
    a, b, keep = np.asarray(a), np.asarray(b), np.asarray(keep, dtype=bool)
    n = np.maximum(keep.sum(axis=1), 1).astype(np.float64)
    ss_a, ss_b, cross = np.empty(len(n)), np.empty(len(n)), np.empty(len(n))
    for rows in deltas.row_blocks(keep):  # the same values as on the whole matrices, without their temporaries
        a_kept, b_kept = np.where(keep[rows], a[rows], 0.0), np.where(keep[rows], b[rows], 0.0)
        ss_a[rows], ss_b[rows], cross[rows] = (a_kept * a_kept).sum(axis=1), (b_kept * b_kept).sum(axis=1), \
            (a_kept * b_kept).sum(axis=1)
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), n.shape)
    undefined = (np.sqrt(ss_a / n) <= atol) | (np.sqrt(ss_b / n) <= atol) | (ss_a == 0) | (ss_b == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(undefined, 0.0, cross / np.sqrt(ss_a * ss_b))
    return np.clip(cosine, -1.0, 1.0), undefined


def signs(values: np.ndarray, resolution: np.ndarray) -> np.ndarray:
    """-1, 0 or +1 per entry (int8); |value| at or below the row's resolution counts as 0 (no change). From two
    comparisons (above +resolution minus below -resolution): ~7x faster than masking np.sign, the same values."""
    step = resolution[:, None]
    return np.subtract((values > step).view(np.int8), (values < -step).view(np.int8))
