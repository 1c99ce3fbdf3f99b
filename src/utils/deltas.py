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
same shape. A row is one test condition. Also here (re-exported by distances.py): leave-one-out means,
`pairwise_distances`, the array helpers of the fast ranks, and the threads of the row-wise statistics.
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


# ----------------------------------------------------------------------------------------------------
# Leave-one-out means, pairwise distances, and the threads of row-wise statistics (re-exported by distances.py)
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
    get NaN (callers handle them). float32 values (profiles as stored) give the means of their float64
    copies, without making the copy. `LeaveOneOut(...).rows(part)` gives the same means a block of rows at a time.
    """
    means = LeaveOneOut(values, codes, keep)
    out = np.empty(means.values.shape)
    for part in row_blocks(out):
        out[part] = means.rows(part)
    return out, means.sizes


class LeaveOneOut:
    """`leave_one_out_means` by blocks of rows: the per-context column sums of the kept values (added row
    after row, in row order, as numpy's sum over axis 0 adds them) and kept counts are computed once, and
    `rows(part)` gives the means of a block of rows with the same operations, so a caller that uses them
    block by block never holds a rows x genes matrix of means."""

    def __init__(self, values: np.ndarray, codes: np.ndarray, keep=None):
        values = np.asarray(values)
        self.values = values if values.dtype in (np.float32, np.float64) else values.astype(np.float64)
        self.codes, self.keep = np.asarray(codes), keep
        counts = np.bincount(self.codes)
        self.sizes = counts[self.codes]
        self.totals = np.zeros((len(counts), values.shape[1]))
        self.kept_rows = np.zeros((len(counts), values.shape[1]), dtype=np.int32)
        started, self.plain = np.zeros(len(counts), dtype=bool), {}
        for part in row_blocks(self.values):
            kept, rows = self._kept(part), range(*part.indices(len(self.codes)))
            masked = np.where(kept, self.values[part], np.float64(0.0))  # float64 for float32 values too
            for row, code in zip(masked, self.codes[rows.start:rows.stop]):
                if started[code]:
                    self.totals[code] += row
                else:
                    self.totals[code], started[code] = row, True  # the first row as is (as numpy's sum)
            block_codes = self.codes[rows.start:rows.stop]
            for code in np.unique(block_codes):  # (integer counts: any order gives the same)
                self.kept_rows[code] += kept[block_codes == code].sum(axis=0, dtype=np.int32)

    def _kept(self, part: slice) -> np.ndarray:
        if self.keep is None:
            return np.ones(self.values[part].shape, dtype=bool)
        return self.keep[part]

    def _plain(self, code: int) -> np.ndarray:
        """Column sums of all the context's rows (where every other row targets the gene)."""
        if code not in self.plain:
            rows = np.flatnonzero(self.codes == code)
            whole = len(rows) == len(self.codes)
            self.plain[code] = (self.values if whole else self.values[rows]).sum(axis=0, dtype=np.float64)
        return self.plain[code]

    def rows(self, part: slice) -> np.ndarray:
        """The means of the rows of `part` (a slice), float64."""
        kept, values = self._kept(part), self.values[part]
        codes = self.codes[part]
        one = len(self.totals) == 1  # one context: its sums apply to every row (no gathering)
        mine = np.where(kept, values, np.float64(0.0))
        np.subtract(self.totals[0] if one else self.totals[codes], mine, out=mine)  # the other rows keeping the gene
        counts = np.subtract(self.kept_rows[0] if one else self.kept_rows[codes], kept, dtype=np.int32)
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(mine, counts, out=mine)
        # every other row targets the gene: plain mean of the other rows (1-d nonzero: numpy's 2-d one is slow)
        none = np.divmod(np.flatnonzero(counts == 0), max(counts.shape[1], 1))
        for i, g in zip(*none):
            if self.sizes[part][i] > 1:
                mine[i, g] = (self._plain(int(codes[i]))[g] - values[i, g]) / (int(self.sizes[part][i]) - 1)
        mine[self.sizes[part] == 1] = np.nan
        return mine


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


# The threads a step may use, as its runner grants them (`meta['cpus']`, set by `use_cpus`); None: every CPU
# available. The engine runs `--jobs` steps at once with `meta['cpus']` = CPUs // jobs each: threads beyond
# that share only compete for the same cores, and spend CPU time waiting for each other.
GRANTED_CPUS = None


def use_cpus(cpus) -> None:
    """Limit the threads of the row-wise statistics and distances to `cpus` (None or 0: no limit)."""
    global GRANTED_CPUS
    GRANTED_CPUS = int(cpus) if cpus else None


def available_cpus() -> int:
    """CPUs this process may use: those granted (`use_cpus`), at most those its affinity allows
    (taskset / cgroup, where the platform reports it)."""
    import os

    if GRANTED_CPUS:
        try:
            return max(1, min(GRANTED_CPUS, len(os.sched_getaffinity(0))))
        except AttributeError:
            return max(1, GRANTED_CPUS)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def in_threads(work, items, threads: int | None = None):
    """`work(item)` for every item, in up to `threads` (default: the CPUs available) threads: numpy's and
    scipy's kernels release the GIL, so blocks of a matrix are computed in parallel; one thread runs inline."""
    threads = min(threads or available_cpus(), len(items))
    if threads <= 1:
        for item in items:
            work(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, items))


def _tiled_cityblock(a: np.ndarray, b: np.ndarray, block: int = 64, threads: int | None = None) -> np.ndarray:
    """scipy's cdist(a, b, "cityblock") computed on block x block tiles, in parallel threads (cdist
    releases the GIL). Tiles keep both operands in cache; each entry is computed exactly as cdist does."""
    from scipy.spatial.distance import cdist

    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    tiles = [(i, j) for i in range(0, a.shape[0], block) for j in range(0, b.shape[0], block)]

    def fill(tile):
        i, j = tile
        out[i:i + block, j:j + block] = cdist(a[i:i + block], b[j:j + block], "cityblock")

    in_threads(fill, tiles, threads)
    return out


def _cityblock_pairs(a: np.ndarray, b: np.ndarray, columns: list, threads: int | None = None, rows=None) -> list:
    """For each row i of `a` (or of `rows`, rows[r] the r-th, so that `a` need not be gathered):
    cdist(a[i], b[columns[i]], "cityblock") (the same sums as cdist's)."""
    from concurrent.futures import ThreadPoolExecutor

    from scipy.spatial.distance import cdist

    rows = np.arange(a.shape[0]) if rows is None else np.asarray(rows)
    out = [None] * len(rows)

    def fill(chunk):
        # the rows of b gathered into one buffer per thread, reused row after row (mode "clip": the columns are
        # valid; numpy's default copies through a fresh buffer): the gathers take ~25% less time
        gathered = np.empty((max((len(columns[r]) for r in chunk), default=0), b.shape[1]), dtype=b.dtype)
        for r in chunk:
            i, cols = rows[r], columns[r]
            part = np.take(b, cols, axis=0, out=gathered[:len(cols)], mode="clip")
            out[r] = cdist(a[i:i + 1], part, "cityblock")[0] if len(cols) else np.empty(0)

    chunks = np.array_split(np.arange(len(rows)), max(1, min(threads or available_cpus(), len(rows))))
    if len(chunks) <= 1:
        fill(chunks[0])
    else:
        with ThreadPoolExecutor(len(chunks)) as pool:
            list(pool.map(fill, chunks))
    return out


def _row_squares(matrix: np.ndarray) -> np.ndarray:
    """`(matrix * matrix).sum(axis=1)`, the same values, by blocks of rows (no matrix-sized temporary)."""
    out = np.empty(matrix.shape[0])
    for rows in row_blocks(matrix):
        block = matrix[rows]
        out[rows] = (block * block).sum(axis=1)
    return out


def _column_medians(values: np.ndarray, block: int = 256) -> np.ndarray:
    """`np.median(values, axis=0)`, the same values: each block of columns is transposed so that the
    selection runs along contiguous memory (numpy's median along axis 0 partitions a strided copy), and
    partitioned at the middle only (np.median also selects the next-lower value and the last, for NaN, in
    one multi-kth introselect: 3x slower); the next-lower value is the largest of the lower part, and the two
    are averaged as np.median's mean does, (a + b) / 2. Blocks with NaN go to np.median."""
    out = np.empty(values.shape[1])
    n = values.shape[0]
    half = n // 2
    for start in range(0, values.shape[1], block):
        columns = np.ascontiguousarray(values[:, start:start + block].T)
        if n == 0 or np.isnan(columns).any():
            out[start:start + block] = np.median(columns, axis=1, overwrite_input=True)
            continue
        columns.partition(half, axis=1)
        upper = columns[:, half]
        out[start:start + block] = upper if n % 2 else (columns[:, :half].max(axis=1) + upper) / 2.0
    return out
