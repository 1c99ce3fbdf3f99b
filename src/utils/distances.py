"""Comparisons between the test conditions of a context: leave-one-out centroids, pairwise distances,
ranks of the true match, and their fast exact versions for the metric components.

Included as a viash resource with `metric_utils.py` (which re-exports the public functions); needs numpy
and scipy.

    ranks = context_ranks(data, rows, genes)   # diagonal ranks under l1, cosine (both ways), euclidean

`context_ranks` gives what `diagonal_ranks(pairwise_distances(...))` gives, faster: the rows of the
prediction that are identical (within a draw, e.g. a mean predicted everywhere, or across the draws of
a stochastic prediction) are compared with the observations once; cosine and Euclidean distances are
ranked from one float32 product where its bound decides (`_screened_ranks`); and the L1 distances of a
prediction with distinct rows are computed exactly only where a lower bound (one float32 matrix product)
cannot show that the observation is farther than the true match. Leave-one-out means, `pairwise_distances`
and the thread helpers live in deltas.py (re-exported here).
"""
from __future__ import annotations

import numpy as np

from deltas import (LeaveOneOut, _cityblock_pairs, _column_medians, _row_squares, _tiled_cityblock,  # noqa: F401
                    available_cpus, groups, in_threads, leave_one_out_means, pairwise_distances, row_blocks, use_cpus)

# Two distances (or similarities) closer than this, relative to the largest one of the row, are a tie:
# far above float64 round-off of sums over thousands of genes, far below any difference of profiles
# stored in float32.
TIE_RTOL = 1e-9
# A row whose share of undecided pairs exceeds this is computed in full (tiled), which is cheaper per
# distance than gathering its undecided observations.
FULL_ROW_SHARE = 0.25
# Rows of a matrix product computed at a time: enough for the BLAS kernels' full speed, a few MB each.
PRODUCT_ROWS = 256


def context_genes(keep: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Boolean gene mask of a context: the genes that are a target of none of its `rows`. Comparisons
    between the context's conditions use exactly these genes, so that every distance is over the same
    genes and no condition's own target (whose measured level methods may know) enters any of them."""
    return keep[rows].all(axis=0)


def diagonal_ranks(distances: np.ndarray) -> np.ndarray:
    """For each row i of a square matrix: the number of j != i with D[i, j] < D[i, i], where entries
    within `TIE_RTOL` (relative to the row's largest absolute entry) of D[i, i] count one half each, i.e.
    the expected rank of the diagonal under uniformly random tie-breaking (0 = nothing is closer)."""
    return diagonal_ranks_of_rows(distances, np.arange(distances.shape[0]))




# ----------------------------------------------------------------------------------------------------
# Fast exact ranks for the metric components
# ----------------------------------------------------------------------------------------------------

def _block(matrix: np.ndarray, rows: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """matrix[rows][:, genes] as a C-contiguous array, without a copy where it is the whole matrix."""
    if len(rows) == matrix.shape[0] and len(genes) == matrix.shape[1] \
            and (rows == np.arange(len(rows))).all() and (genes == np.arange(len(genes))).all():
        return np.ascontiguousarray(matrix)
    out = np.empty((len(rows), len(genes)), dtype=matrix.dtype)
    whole = len(rows) == matrix.shape[0] and (rows == np.arange(len(rows))).all()
    # np.take along the genes of contiguous rows: ~10x faster than the 2-d fancy index np.ix_ (same values);
    # mode "clip" (the genes are valid indices): with "raise" numpy writes into a fresh buffer and copies it into
    # `out`, so every block faulted in new pages (twice the block's memory)
    for part in row_blocks(out):
        np.take(matrix[part] if whole else matrix[rows[part]], genes, axis=1, out=out[part], mode="clip")
    return out


def _distinct_rows(data, context: int, rows: np.ndarray, genes: np.ndarray):
    """The distinct predicted delta rows of a context over all draws: (U, index) with index[k, i] the
    row of U that is row i of draw k. Computed once per prediction (cached in `inputs.caches`)."""
    inputs = data.inputs
    key = ("distinct", context)
    if key not in inputs.caches and inputs.n_draws > 1:
        # draw by draw, keeping only rows not seen before (first occurrence order, as one stack of every draw
        # deduplicated gives them): a stack of 100 draws of 400 rows x 8,000 genes was 2.6 GB
        table, kept, index = {}, [], np.empty((inputs.n_draws, len(rows)), dtype=np.int64)
        for k in range(inputs.n_draws):
            block = _block(data.predicted if k == data.draw else inputs.predicted(k), rows, genes)
            for i, row in enumerate(block):
                position = table.setdefault(row.tobytes(), len(table))
                if position == len(kept):
                    kept.append(row.copy())
                index[k, i] = position
        inputs.caches[key] = (np.vstack(kept), index)
    if key not in inputs.caches:
        stacked = _block(data.predicted, rows, genes)
        # rows with different fingerprints differ; only rows sharing one are compared byte by byte
        probe = np.random.default_rng(0).normal(size=stacked.shape[1])
        _, first, group = np.unique(stacked @ probe, return_index=True, return_inverse=True)
        if len(first) == len(stacked):
            distinct, index = stacked, np.arange(len(stacked))
        else:
            table, keep, index = {}, [], np.empty(len(stacked), dtype=np.int64)
            for i, row in enumerate(stacked):
                position = table.setdefault((int(group[i]), row.tobytes()), len(table))
                if position == len(keep):
                    keep.append(i)
                index[i] = position
            distinct = stacked[keep]
        inputs.caches[key] = (distinct, index.reshape(inputs.n_draws, len(rows)))
    return inputs.caches[key]


def _l1_bound_terms(observed: np.ndarray):
    """Per gene median m of the observations, sign(o_j - m) (float32) and ||o_j - m||_1 (float64)."""
    median = _column_medians(observed)
    signs, spread = np.empty(observed.shape, dtype=np.float32), np.empty(observed.shape[0])
    for rows in row_blocks(observed):  # no matrix-sized temporaries
        centred = observed[rows] - median
        signs[rows] = np.sign(centred)
        spread[rows] = np.abs(centred).sum(axis=1)
    return median, signs, spread


def l1_diagonal_ranks(predicted: np.ndarray, observed: np.ndarray, bound_terms=None) -> np.ndarray:
    """`diagonal_ranks(pairwise_distances(predicted, observed, metric="l1"))` for square inputs, with
    exact L1 sums only where needed.

    For any signs s with |s| <= 1, sum_g |o_jg - p_ig| >= sum_g s_jg (o_jg - p_ig); with s_j = sign(o_j - m)
    (m the per-gene median) this is ||o_j - m||_1 - (p_i - m).s_j, one matrix product for all pairs. It is
    computed in float32 and lowered by its worst-case round-off, (n_genes + 2) float32 epsilons times
    ||p_i - m||_1; an observation j whose bound exceeds the true match's exact distance (plus the tie
    tolerance) is farther and needs no exact sum. The tie tolerance is TIE_RTOL times an upper bound of
    the row's largest distance (||p_i - m||_1 + max_j ||o_j - m||_1) where the row is not computed in
    full, so ties are at most that much wider than in `diagonal_ranks`.
    """
    from scipy.spatial.distance import cdist

    n, n_genes = predicted.shape
    predicted = np.ascontiguousarray(predicted, dtype=np.float64)
    observed = np.ascontiguousarray(observed, dtype=np.float64)
    median, signs, spread = bound_terms if bound_terms is not None else _l1_bound_terms(observed)
    own = np.array([cdist(predicted[i:i + 1], observed[i:i + 1], "cityblock")[0, 0] for i in range(n)])
    size, tol = np.empty(n), np.empty(n)
    undecided = np.empty((n, n), dtype=bool)
    # by blocks of rows: no conditions x genes or pairs x pairs temporaries (pages a session touches for the
    # first time cost system time). A block's float32 product may round otherwise than the whole matrix's:
    # the bound covers any summation order, so only which pairs get an exact sum could change, not a rank.
    for start in range(0, n, PRODUCT_ROWS):
        rows = slice(start, start + PRODUCT_ROWS)
        block = predicted[rows] - median
        size[rows] = np.abs(block).sum(axis=1)
        bound = np.subtract(spread[None, :], block.astype(np.float32) @ signs.T, dtype=np.float64)
        bound -= ((n_genes + 2) * float(np.finfo(np.float32).eps) * size[rows])[:, None]
        tol[rows] = TIE_RTOL * np.maximum(size[rows] + spread.max(), np.finfo(np.float64).tiny)
        np.less_equal(bound, (own[rows] + tol[rows])[:, None], out=undecided[rows])
    np.fill_diagonal(undecided, False)
    ranks = np.empty(n)
    full = np.flatnonzero(undecided.sum(axis=1) > FULL_ROW_SHARE * n)
    if len(full):
        ranks[full] = diagonal_ranks_of_rows(_tiled_cityblock(predicted[full], observed), full)
    partial = np.setdiff1d(np.arange(n), full)
    columns = [np.flatnonzero(undecided[i]) for i in partial]
    for i, cols, distances in zip(partial, columns, _cityblock_pairs(predicted, observed, columns, rows=partial)):
        smaller = (distances < own[i] - tol[i]).sum()
        ties = (np.abs(distances - own[i]) <= tol[i]).sum()
        ranks[i] = smaller + 0.5 * ties
    return ranks


def diagonal_ranks_of_rows(distances: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`diagonal_ranks` for some rows of a square distance matrix: row r of `distances` is row rows[r]."""
    ranks = np.empty(len(rows))
    for part in row_blocks(distances):  # each row's own operations, without matrix-sized temporaries
        block = distances[part]
        own = block[np.arange(len(block)), rows[part]][:, None]
        tol = TIE_RTOL * np.maximum(np.abs(block).max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        smaller = (block < own - tol).sum(axis=1)
        ties = (np.abs(block - own) <= tol).sum(axis=1) - 1
        ranks[part] = smaller + 0.5 * ties
    return ranks


def context_ranks(data, context: int, rows: np.ndarray, genes: np.ndarray, kinds=("l1", "cosine", "euclidean")):
    """Diagonal ranks of this draw's predicted deltas against the observed deltas of one context over
    `genes`: {"l1": ..., "cosine": ..., "cosine_observed": ..., "euclidean": ...}, each as
    `diagonal_ranks(pairwise_distances(...))` gives it ("cosine_observed": observed rows against
    predicted columns, PerturBench's rank). Cosine uses the rows' resolution as zero tolerance."""
    inputs = data.inputs
    observed = data.shared(("context_observed", context), lambda: _block(data.observed, rows, genes))
    distinct, index = _distinct_rows(data, context, rows, genes)
    row_of = index[data.draw]
    n_used = float(len(genes))
    out = {}
    if "l1" in kinds:
        key = ("l1", context)
        n_distinct = int(index.max()) + 1  # (the block itself may be dropped once every kind is cached)
        if n_distinct == len(rows) and inputs.n_draws == 1:  # distinct rows: bounded, exact where needed
            if key not in inputs.caches:
                terms = data.shared(("l1_bound_terms", context), lambda: _l1_bound_terms(observed))
                identity = (row_of == np.arange(len(row_of))).all()  # (then no copy of the block)
                inputs.caches[key] = l1_diagonal_ranks(distinct if identity else distinct[row_of], observed, terms)
            out["l1"] = inputs.caches[key]
        else:
            if key not in inputs.caches:
                inputs.caches[key] = _tiled_cityblock(distinct, observed)
            out["l1"] = diagonal_ranks(inputs.caches[key][row_of] / n_used)
    if "cosine" in kinds or "euclidean" in kinds:
        key = ("screen", context)
        if key not in inputs.caches:
            squares = data.shared(("context_squares", context), lambda: _row_squares(observed))
            distinct = _distinct_block(data, context, rows, genes)
            # (a small context's float64 product costs less than the screen's bookkeeping)
            inputs.caches[key] = _screen(distinct, observed, squares, index) \
                if len(distinct) * len(rows) >= SCREEN_MIN_PAIRS else None
        _drop_block(inputs, context, index)
        distinct, screen = None, inputs.caches[key]  # (the block's memory holds the distances below)
        screened = None if screen is None or ("products", context) in inputs.caches else \
            _screened_ranks(data, context, rows, genes, kinds, observed, screen, row_of)
        out.update(screened if screened is not None else _product_ranks(data, context, rows, genes, kinds, observed))
    _drop_block(inputs, context, index)
    return out


def _drop_block(inputs, context, index):
    """Once L1 and the screen are cached, the prediction's block is not needed (a refinement fetches its rows)."""
    if ("l1", context) in inputs.caches and ("screen", context) in inputs.caches:
        inputs.caches[("distinct", context)] = (None, index)


def _distinct_block(data, context, rows, genes) -> np.ndarray:
    """The context's distinct predicted rows, rebuilt if `context_ranks` dropped them."""
    distinct, index = _distinct_rows(data, context, rows, genes)
    if distinct is None:
        data.inputs.caches.pop(("distinct", context))
        distinct, index = _distinct_rows(data, context, rows, genes)
    return distinct


def _product_ranks(data, context, rows, genes, kinds, observed) -> dict:
    """Cosine and Euclidean ranks from the float64 product (where the screen cannot decide)."""
    inputs = data.inputs
    row_of = _distinct_rows(data, context, rows, genes)[1][data.draw]
    n_used, out = float(len(genes)), {}
    key = ("products", context)
    if key not in inputs.caches:
        distinct = _distinct_block(data, context, rows, genes)
        inputs.caches[key] = (distinct @ observed.T, _row_squares(distinct))
    dot_all, squares = inputs.caches[key]
    if len(row_of) == len(dot_all) and (row_of == np.arange(len(row_of))).all():  # no copy of the products
        dot, sq_a = dot_all, squares[:, None]
    else:
        dot, sq_a = dot_all[row_of], squares[row_of][:, None]
    sq_b = data.shared(("context_squares", context), lambda: _row_squares(observed))[None, :]
    # (the element-wise steps in place: one pairs x pairs matrix instead of one per step)
    if "euclidean" in kinds:
        squared = np.add(sq_a, sq_b)
        squared -= 2.0 * dot
        np.maximum(squared, 0.0, out=squared)
        squared /= n_used
        out["euclidean"] = diagonal_ranks(np.sqrt(squared, out=squared))
        del squared
    if "cosine" in kinds:
        tol = data.resolution[rows]
        null = (np.sqrt(sq_a / n_used) <= tol[:, None]) | (np.sqrt(sq_b / n_used) <= tol[None, :]) \
            | (sq_a == 0) | (sq_b == 0)
        similarity = np.multiply(sq_a, sq_b)
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(dot, np.sqrt(similarity, out=similarity), out=similarity)
        similarity[null] = 0.0
        np.clip(similarity, -1.0, 1.0, out=similarity)
        distances = np.subtract(1.0, similarity, out=similarity)
        out["cosine"] = diagonal_ranks(distances)
        out["cosine_observed"] = diagonal_ranks(distances.T)
    return out


# ----------------------------------------------------------------------------------------------------
# Cosine and Euclidean ranks from a float32 product, refined where it cannot decide
# ----------------------------------------------------------------------------------------------------
# The ranks count comparisons of each distance with the diagonal's, at TIE_RTOL of the row's largest: the float64
# product (BLAS's summation order) decides them only where a distance is within its round-off of such an edge. A
# float32 product with a rigorous bound on its distance from that product decides every other pair; the few pairs
# near an edge get a float64 dot (another order, so an interval of the same width as the round-off), and a context
# where even that cannot decide some comparison gets the float64 product itself, so every rank is the product's.
# Genes and rows per float32 product, whose partial sums are then added: the float32 round-off bound grows with the
# terms one product sums (1.2e-4 of |p| |o| here, 3.5e-4 for 5,827 genes at once); ~7% less time than 256 x 1,024.
SCREEN_GENES, SCREEN_ROWS = 2048, 1024
# Beyond this share of pairs near an edge (and this many), the float64 product is cheaper than their dots; below
# this many pairs in a context, the float64 product is cheaper than the screen.
SCREEN_REFINE_SHARE, SCREEN_REFINE_PAIRS, SCREEN_MIN_PAIRS = 0.005, 256, 4096
_U32, _U64 = 2.0 ** -24, 2.0 ** -53
_ETA = 2.0 ** -150  # absolute round-off of one float32 operation in the subnormal range (float64's is far smaller)


def _gamma(n: int, u: float) -> float:  # the round-off bound of n-term sums (Higham)
    return n * u / (1.0 - n * u)


_down = lambda x: np.nextafter(np.nextafter(x, -np.inf), -np.inf)  # noqa: E731 (below a rounded result's exact value)
_up = lambda x: np.nextafter(np.nextafter(x, np.inf), np.inf)  # noqa: E731


def _screen(distinct: np.ndarray, observed: np.ndarray, observed_squares: np.ndarray, index: np.ndarray):
    """The float32 product of `distinct @ observed.T` (sums of SCREEN_GENES-gene float32 products), its bound
    |screen - D| <= coef |p| |o| + a1 (|p| + |o|) + a0 against the float64 product D in any summation order (|.| the
    Euclidean norm; float32 conversion, float32 and float64 sums, underflow), the squares, and the float64 dot of
    every diagonal pair of every draw (index[k, i] = row of `distinct` of draw k's row i). None where the float32
    copies could overflow or a value is not finite (the float64 product is used)."""
    n, n_genes = observed.shape
    squares = _row_squares(distinct)
    top = max(squares.max(initial=0.0), observed_squares.max(initial=0.0))
    if n_genes == 0 or not np.isfinite(top) or top > 1e36:  # (sums of float32 products stay below 3.4e38)
        return None
    # float32 sums of the blocks' products too: their round-off (a few float32 epsilons) is far below a block's
    acc = np.empty((len(distinct), n), dtype=np.float32)
    part = np.empty((min(SCREEN_ROWS, len(distinct)), n), dtype=np.float32)
    # by blocks of genes, each converted once (no float32 copy of either matrix)
    for g in range(0, n_genes, SCREEN_GENES):
        genes = slice(g, g + SCREEN_GENES)
        columns = observed[:, genes].astype(np.float32)
        for start in range(0, len(distinct), SCREEN_ROWS):
            block = distinct[start:start + SCREEN_ROWS, genes].astype(np.float32)
            if g == 0:
                np.matmul(block, columns.T, out=acc[start:start + len(block)])
                continue
            np.matmul(block, columns.T, out=part[:len(block)])
            acc[start:start + len(block)] += part[:len(block)]
    g32 = _gamma(min(SCREEN_GENES, n_genes), _U32)
    coef = 1.01 * ((2 * _U32 + _U32 ** 2) + g32 * (1 + _U32) ** 2
                   + _gamma(-(-n_genes // SCREEN_GENES), _U32) * (1 + g32) * (1 + _U32) ** 2 + _gamma(n_genes, _U64))
    bound = (coef, 1.1 * _ETA * np.sqrt(n_genes), 4.0 * n_genes * _ETA)
    if index.shape == (1, n) and len(distinct) == n and (index[0] == np.arange(n)).all():
        own = np.einsum("ij,ij->i", distinct, observed)[None, :]
    else:
        pairs, inverse = np.unique(index * n + np.arange(n), return_inverse=True)
        which, column = np.divmod(pairs, n)
        dots = np.empty(len(pairs))
        for start in range(0, len(pairs), 128):
            part = slice(start, start + 128)
            dots[part] = np.einsum("ij,ij->i", distinct[which[part]], observed[column[part]])
        own = dots[inverse.reshape(index.shape)]
    return {"acc": acc, "squares": squares, "bound": bound, "own": own}


def _cosine_of(dot, sq_a, sq_b, null):
    """The cosine distance as `context_ranks`' float64 path computes it from a dot product, element-wise."""
    similarity = np.sqrt(np.multiply(sq_a, sq_b))
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(dot, similarity, out=similarity)
    similarity[null] = 0.0
    np.clip(similarity, -1.0, 1.0, out=similarity)
    return np.subtract(1.0, similarity, out=similarity)


def _euclidean_of(dot, sq_a, sq_b, n_used):
    """The Euclidean distance as `context_ranks`' float64 path computes it from a dot product, element-wise."""
    squared = np.add(sq_a, sq_b)
    squared -= 2.0 * dot
    np.maximum(squared, 0.0, out=squared)
    squared /= n_used
    return np.sqrt(squared, out=squared)


def _decide(low, high, own_low, own_high, tol_low, tol_high):
    """For distances known to lie in [low, high] (diagonal in [own_low, own_high], tolerance in [tol_low, tol_high]):
    (smaller, tie) as `diagonal_ranks_of_rows` decides them, or None where the interval cannot tell. Rounded
    operations are monotone, so the bounds of each rounded quantity come from the bounds of its operands."""
    smaller = high < own_low - tol_high
    if not (smaller | (low >= own_high - tol_low)).all():
        return None
    below, above = low - own_high, high - own_low
    largest = np.maximum(np.abs(below), np.abs(above))
    least = np.where(below > 0, below, np.where(above < 0, -above, 0.0))
    tie = largest <= tol_low
    if not (tie | (least > tol_high)).all():
        return None
    return smaller, tie


def _screened_ranks(data, context, rows, genes, kinds, observed, screen, row_of):
    """`context_ranks`' cosine ("cosine", "cosine_observed") and Euclidean ranks from the screen, the float64
    product's ranks; None where some comparison needs that product itself."""
    n, n_used = len(rows), float(len(genes))
    identity = len(row_of) == len(screen["acc"]) and (row_of == np.arange(n)).all()
    acc = screen["acc"] if identity else screen["acc"][row_of]
    sq_a = screen["squares"][row_of]
    sq_b = data.shared(("context_squares", context), lambda: _row_squares(observed))
    coef, a1, a0 = screen["bound"]
    grow = 1 + 2 * _gamma(len(genes), _U64)  # the computed squares' round-off, for norms that bound |p| and |o|
    norm_a, norm_b = np.sqrt(sq_a) * grow, np.sqrt(sq_b) * grow
    own_dot = screen["own"][data.draw]
    own_error = 2.1 * _gamma(len(genes), _U64) * norm_a * norm_b + 4 * _U64 * np.abs(own_dot) + 2 * a0
    out, ends, tiny = {}, {}, np.finfo(np.float64).tiny
    if "cosine" in kinds:
        res = data.resolution[rows]
        null_a = (np.sqrt(sq_a / n_used) <= res) | (sq_a == 0)
        null_b = (np.sqrt(sq_b / n_used) <= res) | (sq_b == 0)
        distances = np.multiply(sq_a[:, None], sq_b[None, :])
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(acc, np.sqrt(distances, out=distances), out=distances)
        distances[null_a] = 0.0
        distances[:, null_b] = 0.0
        np.clip(distances, -1.0, 1.0, out=distances)
        np.subtract(1.0, distances, out=distances)
        # |screen - product| / (|p| |o|) bounds the similarity's error on non-null pairs (null ones are exact)
        least_a = norm_a[~null_a].min(initial=np.inf) / grow ** 2
        least_b = norm_b[~null_b].min(initial=np.inf) / grow ** 2
        width = 1.001 * (coef + a1 * (1 / least_a + 1 / least_b) + a0 / (least_a * least_b)) + 64 * _U64
        null_own = null_a | null_b
        own = tuple(_cosine_of(own_dot + e, sq_a, sq_b, null_own) for e in (own_error, -own_error))
        for name, axis in (("cosine", 1), ("cosine_observed", 0)):
            if name == "cosine_observed" and "cosine" not in kinds:
                continue
            largest = distances.max(axis=axis)
            tol = (TIE_RTOL * np.maximum(_down(largest - width), tiny), TIE_RTOL * np.maximum(_up(largest + width), tiny))
            slack = 64 * _U64 * (np.abs(own[1]) + tol[1] + width)
            low = _down(own[0] - tol[1] - width - slack)
            high = _up(own[1] + tol[1] + width + slack)
            ends[name] = (distances, axis, low, high, own, tol)
    if "euclidean" in kinds:
        squared = np.add(sq_a[:, None], sq_b[None, :])
        squared -= 2.0 * acc
        np.maximum(squared, 0.0, out=squared)
        squared /= n_used
        most_b = norm_b.max(initial=0.0)
        error = coef * norm_a * most_b + a1 * (norm_a + most_b) + a0
        width = (2.01 * error + 9 * _U64 * (sq_a + sq_b.max(initial=0.0))) / n_used  # on squared distances
        own = tuple(_euclidean_of(own_dot + e, sq_a, sq_b, n_used) for e in (own_error, -own_error))
        largest = squared.max(axis=1)
        tol = (TIE_RTOL * np.maximum(np.sqrt(np.maximum(_down(largest - width), 0.0)), tiny),
               TIE_RTOL * np.maximum(np.sqrt(_up(largest + width)), tiny))
        slack = 64 * _U64 * (np.abs(own[1]) + tol[1])
        closer, farther = _down(own[0] - tol[1] - slack), _up(own[1] + tol[1] + slack)
        low = np.where(closer > 0, _down(closer * closer * (1 - 8 * _U64) - width), -np.inf)
        high = _up(farther * farther * (1 + 8 * _U64) + width)
        ends["euclidean"] = (squared, 1, low, high, own, tol)
    counts = {}
    for name, (matrix, axis, low, high, own, tol) in ends.items():
        smaller = (matrix < np.expand_dims(low, axis)).sum(axis=axis)
        within = (matrix <= np.expand_dims(high, axis)).sum(axis=axis)
        diagonal = matrix[np.arange(n), np.arange(n)]
        if not ((diagonal >= low) & (diagonal <= high)).all():
            return None  # (cannot happen with these bounds: the diagonal is always near itself)
        # a null pair's distance is exactly 1 on both paths: those near the edges are decided below without a dot
        null = np.zeros(n, dtype=np.int64)
        if name != "euclidean":
            mine, others = (null_a, null_b) if axis == 1 else (null_b, null_a)
            null = np.where(mine, n - 1, others.sum() - others) * ((low <= 1.0) & (high >= 1.0))
        counts[name] = (smaller, within - smaller - 1 - null, null)
    if sum(int(live.sum()) for _, live, _ in counts.values()) > SCREEN_REFINE_SHARE * n * n + SCREEN_REFINE_PAIRS:
        return None
    for name, (matrix, axis, low, high, own, tol) in ends.items():
        smaller, live, null = counts[name]
        ties = np.zeros(n, dtype=np.int64)
        lines = np.flatnonzero(null)
        if lines.size:
            one = np.ones(len(lines))
            decided = _decide(one, one, own[0][lines], own[1][lines], tol[0][lines], tol[1][lines])
            if decided is None:
                return None
            smaller = smaller + np.bincount(lines, weights=null[lines] * decided[0], minlength=n).astype(np.int64)
            ties += np.bincount(lines, weights=null[lines] * decided[1], minlength=n).astype(np.int64)
        lines = np.flatnonzero(live)
        if lines.size:
            part = np.take(matrix, lines, axis=1 - axis)
            near = (part >= np.expand_dims(low[lines], axis)) & (part <= np.expand_dims(high[lines], axis))
            i, j = np.nonzero(near)
            i, j = (lines[i], j) if axis == 1 else (i, lines[j])
            chosen = (i != j) & (~(null_a[i] | null_b[j]) if name != "euclidean" else True)
            i, j = i[chosen], j[chosen]
            dot = _pair_dots(data, context, rows, genes, row_of[i], observed, j)
            error = 2.1 * _gamma(len(genes), _U64) * norm_a[i] * norm_b[j] + 4 * _U64 * np.abs(dot) + 2 * a0
            interval = [_euclidean_of(dot + e, sq_a[i], sq_b[j], n_used) if name == "euclidean"
                        else _cosine_of(dot + e, sq_a[i], sq_b[j], null_a[i] | null_b[j]) for e in (error, -error)]
            line_of = i if axis == 1 else j
            decided = _decide(*interval, own[0][line_of], own[1][line_of], tol[0][line_of], tol[1][line_of])
            if decided is None:
                return None
            smaller = smaller + np.bincount(line_of, weights=decided[0], minlength=n).astype(np.int64)
            ties += np.bincount(line_of, weights=decided[1], minlength=n).astype(np.int64)
        out[name] = smaller + 0.5 * ties
    return out


def _pair_dots(data, context, rows, genes, which, observed, columns) -> np.ndarray:
    """float64 dots of rows `which` of the context's distinct predicted rows with observed rows `columns`."""
    dots = np.empty(len(which))
    for start in range(0, len(which), 128):
        part = slice(start, start + 128)
        predicted = _prediction_rows(data, context, rows, genes, which[part])
        dots[part] = np.einsum("ij,ij->i", predicted, observed[columns[part]])
    return dots


def _prediction_rows(data, context, rows, genes, which) -> np.ndarray:
    """Rows `which` of the context's distinct predicted rows, also once `context_ranks` dropped the block: each
    from the draw and row that first had it (the same values)."""
    distinct, index = _distinct_rows(data, context, rows, genes)
    if distinct is not None:
        return distinct[which]
    draw, row = np.divmod(np.unique(index.ravel(), return_index=True)[1][which], index.shape[1])
    out = np.empty((len(which), len(genes)))
    for k in np.unique(draw):
        mine = draw == k
        source = data.predicted[rows[row[mine]]] if k == data.draw else data.inputs.predicted(k, rows[row[mine]])
        out[mine] = np.take(source, genes, axis=1)
    return out
