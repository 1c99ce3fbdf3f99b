"""Shared machinery of the metric components: reading the inputs once per process, scoring every draw of
a stochastic prediction, gene selections, row-wise statistics, writing the score (DEG weights: deltas.py).

Included as a viash resource together with `selections.py`, `distances.py`, `deltas.py`,
`component_io.py` and `formats.py`; needs numpy, pandas, scipy and anndata. Every function works on
(rows x genes) float64 arrays, one row per test condition, and a boolean `keep` matrix of the same shape
(True = the gene is scored for that row; the row's target genes are False), as in `deltas.py`. The
profiles as stored (`truth`, `guess`, `control`, `reference`) keep their stored dtype, float32 in the API
files (a quarter of a session's memory, which costs time to fault in): compute with them in float64
(`np.subtract(a, b, dtype=np.float64)`, or with a float64 operand), which gives the values float64 copies
would. The deltas (`observed`, `predicted`) are float64. A metric script is

    def compute(data: MetricData) -> Result:     # one draw of the prediction
        top = data.observed_top_k(20)             # observed-side quantities are computed once per solution
        ...
        return Result({"metric_id": per_row_values}, counts={"n_undefined": flags}, log="...")

    run(par, meta, compute, "component_name")

Stochastic predictions: `uns['n_draws']` = K > 1 means X is draw 0 and `layers['draw_1']` ...
`layers['draw_{K-1}']` are the others (each checked like X). `run` calls `compute` once per draw, each
draw a complete prediction matrix, and scores the per-condition mean over draws (the expectation of the
metric over the prediction's distribution, not the metric of the mean prediction); `counts` are summed
over draws (condition x draw pairs).

Several metric scripts may run one after the other in one Python process (the local engine does): the
validated inputs and the quantities that depend only on the solution are kept for the next script as
long as the files are unchanged (same path, size and modification time); `forget_inputs()` drops them.

Conventions shared by all metric components (each config's description repeats what applies to it):
- delta = profile minus a control profile of the row's context: a predicted delta subtracts the solution's
  `control` layer (the training controls, which methods see), an observed delta its `control_reference`
  layer (control cells no method saw), so that the two never share a control estimate's sampling noise
  (a solution without `control_reference` uses `control` for both);
- a *context* is a cell_type x condition; comparisons between conditions stay inside a context and use
  the genes that are a target of none of the context's test conditions (`context_genes`);
- "constant" means a spread at or below the row's storage resolution, `resolution` = 4 float32 epsilons
  times the largest absolute value of the row in the solution, its control or the prediction (the draw);
- no metric value is ever NaN: undefined cases get a documented constant and are counted in the log.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

import deltas
import distances
from deltas import row_blocks  # noqa: F401  (blocks of rows: the same values without whole-matrix temporaries)
# the row-wise statistics the metric scripts call as metric_utils.<name> (src/utils/rowwise.py)
from rowwise import (masked_average_ranks, masked_rowwise_cosine, masked_rowwise_spearman, signs,  # noqa: F401
                     snap)
from deltas import deg_weights  # noqa: F401  (Mejia et al. 2025; used by weighted_error)
from selections import (_kth_largest, compact, fractional_top_k, fractional_top_ks,  # noqa: F401
                        row_dot, sparse_row_dot, top_k_mask)
from distances import (TIE_RTOL, LeaveOneOut, available_cpus, context_genes, context_ranks,  # noqa: F401
                       diagonal_ranks, groups, leave_one_out_means, pairwise_distances)

DRAW_LAYER = "draw_{}"
# draws stored as the rows of a few profiles (IndexedDraws)
DRAW_PROFILES, DRAW_ROWS = "draw_profiles", "draw_rows"
# The k of the observed top-k gene sets used by the metric components (one partition finds them all).
OBSERVED_KS = (20, 100, 200)
# Split labels copied from the solution into the score, so that aggregation need not parse paths.
SPLIT_LABELS = ("split_seed", "fold", "n_folds")


# ----------------------------------------------------------------------------------------------------
# Inputs, draws and output
# ----------------------------------------------------------------------------------------------------

@dataclass
class Observed:
    """The solution side, identical for every draw and every prediction scored against the solution."""
    solution: object
    control: np.ndarray      # rows x genes, the solution's control layer (training controls), as stored
    reference: np.ndarray    # rows x genes, the control the observation is compared with (control_reference), as stored
    truth: np.ndarray        # rows x genes, observed profile (solution X), as stored
    observed: np.ndarray     # truth - reference (float64)
    keep: np.ndarray         # True = gene scored for the row (not one of its targets)
    contexts: np.ndarray     # per row, integer code of its cell_type x condition
    scale: np.ndarray        # per row, largest |value| of truth and both controls
    shared: dict = field(default_factory=dict)  # quantities of the observation only, computed on demand


@dataclass
class Inputs:
    """A validated solution and prediction; `draw(k)` is the k-th draw of the prediction as MetricData."""
    io: object
    par: dict
    observed: Observed
    prediction: object
    matrices: list           # draw k's stored matrix (X for k = 0)
    caches: dict             # prediction-level cache (e.g. distances of the distinct rows of all draws)

    @property
    def n_draws(self) -> int:
        return len(self.matrices)

    def predicted(self, k: int, rows=slice(None)) -> np.ndarray:
        """Draw k's predicted delta (float64), of `rows` (all by default)."""
        return np.subtract(deltas.as_stored(self.matrices[k])[rows], self.observed.control[rows], dtype=np.float64)

    def draw(self, k: int) -> "MetricData":
        o = self.observed
        # draw 0 (every script's first, and the only one of most predictions) is kept for the next script
        cached = self.caches.get(("draw", k))
        if cached is None:
            guess = deltas.as_stored(self.matrices[k])  # draw 0: the prediction's X itself, not a copy
            resolution = storage_resolution(guess, scale=o.scale)
            predicted = np.subtract(guess, o.control, dtype=np.float64)
            if k == 0:
                for array in (guess, predicted, resolution):
                    array.flags.writeable = False  # shared by the scripts of the session: nobody may change it
                self.caches[("draw", k)] = (guess, predicted, resolution)
        else:
            guess, predicted, resolution = cached
        return MetricData(io=self.io, par=self.par, solution=o.solution, prediction=self.prediction,
                          control=o.control, reference=o.reference, truth=o.truth, guess=guess, observed=o.observed,
                          predicted=predicted, keep=o.keep, resolution=resolution, contexts=o.contexts,
                          draw=k, n_draws=self.n_draws, inputs=self, cache={})


@dataclass
class MetricData:
    """One draw of the prediction with the solution, as a metric's `compute` sees it."""
    io: object
    par: dict
    solution: object
    prediction: object
    control: np.ndarray      # rows x genes, the solution's control layer (training controls), as stored
    reference: np.ndarray    # rows x genes, the observation's control (control_reference), as stored
    truth: np.ndarray        # rows x genes, observed profile (solution X), as stored
    guess: np.ndarray        # rows x genes, predicted profile (this draw), as stored
    observed: np.ndarray     # truth - reference (float64)
    predicted: np.ndarray    # guess - control (float64)
    keep: np.ndarray         # True = gene scored for the row (not one of its targets)
    resolution: np.ndarray   # per row, the storage resolution (see module docstring)
    contexts: np.ndarray     # per row, integer code of its cell_type x condition
    draw: int = 0
    n_draws: int = 1
    inputs: Inputs | None = None
    cache: dict = field(default_factory=dict)  # this draw's quantities shared between functions

    @property
    def n_rows(self) -> int:
        return self.truth.shape[0]

    def shared(self, key, compute, version=None):
        """`compute()` once per solution (and per process), for quantities of the observation only;
        recomputed when `version` (e.g. the resolution they depend on) differs from the kept one's."""
        store = self.inputs.observed.shared if self.inputs is not None else self.cache
        if key not in store or store[key][0] != version:
            store.pop(key, None)  # free the old value before computing the new one
            value = compute()
            for array in value if isinstance(value, tuple) else (value,):
                if isinstance(array, np.ndarray):
                    array.flags.writeable = False  # kept for the next draw or metric: nobody may change it
            store[key] = (version, value)
        return store[key][1]

    def observed_top_k(self, k: int) -> np.ndarray:
        """`top_k_mask(|observed|, keep, k)`, computed once per solution."""
        return self.shared(("top_k_mask", k), lambda: self._observed_top_k(k))

    def _observed_top_k(self, k: int) -> np.ndarray:
        thresholds = self.observed_thresholds()
        return np.vstack([top_k_mask(np.abs(self.observed[rows]), self.keep[rows], k, _rows_of(thresholds, rows))
                          for rows in row_blocks(self.observed)])

    def observed_top_k_genes(self, k: int):
        """The genes of `observed_top_k(k)` compactly: (columns, valid), row i's genes left-aligned in
        `columns[i]` and padding marked False in `valid` (statistics over k genes cost k, not all genes)."""
        def compute():
            store = self.inputs.observed.shared if self.inputs is not None else self.cache
            kept = store.get(("top_k_mask", k))
            # the conditions x genes mask is not kept for this (only its compact genes are)
            return compact(kept[1] if kept is not None else self._observed_top_k(k))
        return self.shared(("top_k_genes", k), compute)

    def observed_thresholds(self) -> dict:
        """`_kth_largest(|observed|, keep, OBSERVED_KS)` thresholds, one partition per solution."""
        return self.shared("observed_thresholds", lambda: kth_largest(np.abs, self.observed, self.keep, OBSERVED_KS))

    def observed_leave_one_out(self) -> LeaveOneOut:
        """`LeaveOneOut(truth, contexts, keep)` (its `rows(part)`: the rows `leave_one_out_means` gives, its
        `sizes`: the context sizes), made once per solution: its column sums are kept, not a matrix of means."""
        return self.shared("leave_one_out", lambda: LeaveOneOut(self.truth, self.contexts, keep=self.keep))


@dataclass
class Result:
    """What `compute` returns for one draw."""
    values: dict                                 # metric id -> per-condition values
    counts: dict = field(default_factory=dict)   # uns key -> (per-condition flags, what they count)
    uns: dict = field(default_factory=dict)      # score uns extras that depend on the solution only
    log: str = ""                                # facts of the solution for the log line


def _rows_of(by_k: dict, rows: slice) -> dict:
    return {k: (k_row[rows], threshold[rows]) for k, (k_row, threshold) in by_k.items()}


def kth_largest(transform, values: np.ndarray, keep: np.ndarray, ks) -> dict:
    """`_kth_largest(transform(values), keep, ks)[1]` ({k: (k_row, k_row-th largest value)}), by blocks of rows."""
    parts = [_kth_largest(transform(values[rows]), keep[rows], ks)[1] for rows in row_blocks(values)]
    return {k: tuple(np.concatenate([part[k][i] for part in parts]) for i in range(2)) for k in ks}


def blocked_fractional_top_ks(transform, values: np.ndarray, keep: np.ndarray, ks, known: dict | None = None) -> dict:
    """`fractional_top_ks(transform(values), keep, ks, known)` by blocks of rows (the same sparse matrices)."""
    import scipy.sparse as sp

    if not len(ks):
        return {}
    parts = [fractional_top_ks(transform(values[rows]), keep[rows], ks, None if known is None else _rows_of(known, rows))
             for rows in row_blocks(values)]
    return {k: (sp.vstack([part[k][0] for part in parts], format="csr"), np.concatenate([part[k][1] for part in parts]))
            for k in ks}


def same_signs(a: np.ndarray, b: np.ndarray, resolution: np.ndarray) -> np.ndarray:
    """`signs(a, resolution) == signs(b, resolution)`, by blocks of rows."""
    out = np.empty(a.shape, dtype=bool)
    for rows in row_blocks(a):
        np.equal(signs(a[rows], resolution[rows]), signs(b[rows], resolution[rows]), out=out[rows])
    return out


def storage_resolution(*arrays, factor: float = 4.0, scale=None) -> np.ndarray:
    """Per row: `factor` float32 epsilons times the largest absolute value of the row in any of `arrays`
    (and `scale`, a precomputed per-row maximum); same value as `deltas.float32_tolerance`."""
    largest = [_row_abs_max(a) for a in arrays] + ([scale] if scale is not None else [])
    return factor * float(np.finfo(np.float32).eps) * np.max(largest, axis=0)


def _row_abs_max(a: np.ndarray) -> np.ndarray:
    # float64 whatever the stored dtype, so that the resolution computed from it is float64 arithmetic
    return np.maximum(a.max(axis=1, initial=0.0), -a.min(axis=1, initial=0.0)).astype(np.float64)


def context_codes(obs: pd.DataFrame) -> np.ndarray:
    """Integer code per row of its cell_type x condition (codes in order of first appearance)."""
    labels = obs["cell_type"].astype(str).str.cat(obs["condition"].astype(str), sep="\x1f")
    return pd.factorize(labels, sort=False)[0].astype(np.int64)


def _keep_freed_memory():
    """Let this process reuse the memory it frees instead of handing it back to the system (glibc only).

    Metric scripts allocate and free many rows x genes temporaries (128 MB each at 2,000 x 8,000). glibc
    serves blocks that large with a fresh mmap and unmaps them on free, so every temporary is faulted in
    page by page again: on the shared virtual machines this benchmark runs on, that was half of the CPU
    time of a session's metric scripts (system time, ~2 ms per MB). Served from the heap and not trimmed,
    freed blocks are reused, and the process grows only to its peak. `forget_inputs()` gives it back.
    One arena for all threads: the blocks the row-wise statistics allocate in worker threads (ranks, tiles)
    otherwise grow arenas of their own, which the main thread's arrays cannot reuse (~150 MB more to fault
    in at 2,000 x 8,000).
    No transparent huge pages for numpy's arrays (numpy asks for them on Linux): on these VMs (free page
    reporting hands free 2 MB blocks back to the host) a huge page is a block the host must back afresh, and
    a session's system time was 0.9-2.6 s with them against 0.4-1.2 s without, for ~0.1-0.15 s more user time."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:  # numpy's own switch (NUMPY_MADVISE_HUGEPAGE=0 sets it at import)
        from numpy._core.multiarray import _set_madvise_hugepage
        _set_madvise_hugepage(False)
    except ImportError:  # numpy < 2: its default stays
        pass
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
    mallopt(M_ARENA_MAX, 1)
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)


def _release_freed_memory():
    """Return the freed heap memory of this process to the system (glibc's malloc_trim)."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


_keep_freed_memory()

# One entry each: the last solution and the last prediction read by this process, keyed by file identity
# and the format they were checked against.
_MEMO: dict = {}


def forget_inputs():
    """Drop the kept solution and prediction (a long-lived worker calls this to free their memory)."""
    _MEMO.clear()
    _release_freed_memory()


def _file_key(path) -> tuple:
    try:
        stat = os.stat(path)
    except OSError:
        return (str(path), None, None)  # the reader reports the problem
    return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def _format_key(io, name: str) -> str:
    return repr((io.specs.get(name) or {}).get("info"))


def _read_observed(io, par) -> Observed:
    from component_io import fail

    key = (_file_key(par.get("input_solution")), _format_key(io, "input_solution"))
    cached = _MEMO.get("solution")
    if cached is not None and cached[0] == key:
        return cached[1]
    _MEMO.pop("solution", None)
    _MEMO.pop("prediction", None)
    solution = io.read("input_solution")
    control = deltas.as_stored(solution.layers[deltas.CONTROL])
    reference = (deltas.as_stored(solution.layers[deltas.CONTROL_REFERENCE])
                 if deltas.CONTROL_REFERENCE in solution.layers else control)
    truth = deltas.as_stored(solution.X)
    # the other stored matrices are not needed (the replicate halves are unused): freed now, their memory
    # holds the next arrays
    for name in list(solution.layers.keys()):
        del solution.layers[name]
    solution.X = None
    keep = ~deltas.target_mask(solution.obs["perturbation"], solution.var_names)
    empty = np.flatnonzero(keep.sum(axis=1) == 0)
    if len(empty):
        fail(f"--input_solution file '{par['input_solution']}': row {solution.obs_names[empty[0]]!r} has no gene "
             "left once its target genes are excluded")
    observed = np.subtract(truth, reference, dtype=np.float64)
    for array in (control, reference, truth, observed, keep):
        array.flags.writeable = False  # kept for the next metric: no script may change them
    result = Observed(solution=solution, control=control, reference=reference, truth=truth, observed=observed,
                      keep=keep, contexts=context_codes(solution.obs),
                      scale=np.maximum(np.maximum(_row_abs_max(truth), _row_abs_max(control)), _row_abs_max(reference)))
    _MEMO["solution"] = (key, result)
    return result


class IndexedDraws:
    """Draws that are rows of a few stored profiles (a stochastic control that picks existing profiles, such as
    random_perturbation): `uns['draw_profiles']` (profiles x genes) and `uns['draw_rows']` (draws x rows, the
    profile each row gets in each draw). Draw k is built when a metric asks for it, so K draws cost the file and
    the memory of the profiles plus K x rows integers, not K prediction matrices."""

    def __init__(self, X, profiles: np.ndarray, rows: np.ndarray):
        self.X, self.profiles, self.rows = X, profiles, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        return self.X if k == 0 else self.profiles[self.rows[k]]


def _indexed_draws(prediction, path: str, n_draws: int) -> IndexedDraws:
    """The draws of `uns['draw_profiles']` / `uns['draw_rows']`, checked: shapes, indices, finite profiles, X = draw 0."""
    from component_io import fail

    profiles = np.asarray(prediction.uns[DRAW_PROFILES])
    rows = np.asarray(prediction.uns.get(DRAW_ROWS))
    where = f"--input_prediction file '{path}'"
    if profiles.ndim != 2 or profiles.shape[1] != prediction.n_vars or not np.issubdtype(profiles.dtype, np.floating):
        fail(f"{where}: uns['{DRAW_PROFILES}'] has shape {profiles.shape} ({profiles.dtype}), expected a float matrix "
             f"with one column per gene ({prediction.n_vars})")
    if rows.shape != (n_draws, prediction.n_obs) or not np.issubdtype(rows.dtype, np.integer) \
            or (rows.size and (rows.min() < 0 or rows.max() >= len(profiles))):
        fail(f"{where}: uns['{DRAW_ROWS}'] has shape {rows.shape} ({rows.dtype}), expected integers in "
             f"[0, {len(profiles)}) of shape (n_draws {n_draws}, rows {prediction.n_obs})")
    if not np.isfinite(profiles).all():
        fail(f"{where}: uns['{DRAW_PROFILES}'] has {int((~np.isfinite(profiles)).sum())} NaN or infinite values, "
             "expected finite numbers")
    if not np.allclose(deltas.as_dense(prediction.X), profiles[rows[0]], rtol=1e-6, atol=1e-6):
        fail(f"{where}: X is not draw 0 of uns['{DRAW_ROWS}'] (profiles uns['{DRAW_PROFILES}'][uns['{DRAW_ROWS}'][0]])")
    return IndexedDraws(prediction.X, profiles, rows)


def _draw_matrices(prediction, par, io) -> list:
    """X and the `draw_k` layers announced by `uns['n_draws']`, each checked like X (or the indexed draws of
    `uns['draw_profiles']` and `uns['draw_rows']`)."""
    from component_io import fail
    from formats import check_anndata

    path = par["input_prediction"]
    n_draws = prediction.uns.get("n_draws", 1)
    if isinstance(n_draws, np.ndarray) and n_draws.shape == ():
        n_draws = n_draws.item()
    if isinstance(n_draws, (bool, np.bool_)) or not isinstance(n_draws, (int, np.integer)) or n_draws < 1:
        fail(f"--input_prediction file '{path}': uns['n_draws'] is {n_draws!r}, expected an integer >= 1 "
             "(the number of draws: X and layers['draw_1'] ... layers['draw_{n_draws-1}'])")
    n_draws = int(n_draws)
    if DRAW_PROFILES in prediction.uns:
        return _indexed_draws(prediction, path, n_draws)
    names = [DRAW_LAYER.format(k) for k in range(1, n_draws)]
    missing = [name for name in names if name not in prediction.layers]
    stray = sorted(name for name in prediction.layers if name.startswith("draw_") and name not in names)
    if missing or stray:
        what = f"layers {missing[:3]} are missing" if missing else f"has layers {stray[:3]} beyond its draws"
        fail(f"--input_prediction file '{path}': uns['n_draws'] is {n_draws} but it {what}; expected X and "
             f"layers['draw_1'] ... layers['draw_{n_draws - 1}']")
    spec = ((io.specs.get("input_prediction") or {}).get("info") or {}).get("format", {}).get("X") or {"type": "double"}
    problems = check_anndata(prediction, {"layers": [{**spec, "name": name, "required": True} for name in names]})
    if problems:
        fail(f"--input_prediction file '{path}': " + "; ".join(problems[:3]))
    return [prediction.X] + [prediction.layers[name] for name in names]


def read_inputs(par: dict, meta: dict) -> Inputs:
    """Read and check `--input_solution` and `--input_prediction` (one-line error and exit 1 if they do
    not conform: missing slots, NaN or infinite values in any draw, other rows or genes or another gene
    order, another dataset or task), with the deltas, the target mask and the contexts. Files read by the
    previous call of this process are not read again while they are unchanged."""
    from component_io import ComponentIO, fail

    distances.use_cpus(meta.get("cpus"))  # the step's share of the machine (the engine: CPUs // --jobs)
    io = ComponentIO(par, meta)
    observed = _read_observed(io, par)
    # the output's rows are checked against the solution's (comp_metric.yaml: same_obs_names_as)
    io._read["input_solution"] = observed.solution
    key = (_MEMO["solution"][0], _file_key(par.get("input_prediction")), _format_key(io, "input_prediction"))
    cached = _MEMO.get("prediction")
    if cached is not None and cached[0] == key:
        prediction, matrices, caches = cached[1]
    else:
        _MEMO.pop("prediction", None)
        prediction = io.read("input_prediction")  # rows and genes must match the solution's, in the same order
        for name in ("dataset_id", "task_id"):
            if str(prediction.uns[name]) != str(observed.solution.uns[name]):
                fail(f"--input_prediction file '{par['input_prediction']}': uns['{name}'] is {prediction.uns[name]!r} "
                     f"but the solution's is {observed.solution.uns[name]!r}; expected a prediction for the same split")
        matrices, caches = _draw_matrices(prediction, par, io), {}
        _MEMO["prediction"] = (key, (prediction, matrices, caches))
    return Inputs(io=io, par=par, observed=observed, prediction=prediction, matrices=matrices, caches=caches)


def run(par: dict, meta: dict, compute, name: str):
    """Read the inputs, `compute` every draw of the prediction, write the per-condition mean over draws."""
    inputs = read_inputs(par, meta)
    total, counts, first = None, {}, None
    for k in range(inputs.n_draws):
        result = compute(inputs.draw(k))
        if first is None:
            first, total = result, {m: np.asarray(v, dtype=np.float64).copy() for m, v in result.values.items()}
        else:
            for m, v in result.values.items():
                total[m] += v
        for key, (flags, _) in result.counts.items():
            counts[key] = counts.get(key, 0) + int(np.count_nonzero(flags))
    n_draws = inputs.n_draws
    values = {m: v / n_draws for m, v in total.items()}
    unit = "conditions" if n_draws == 1 else f"condition-draws of {n_draws} draws"
    counted = "; ".join(f"{what} for {counts[key]} {unit}" for key, (_, what) in first.counts.items())
    o = inputs.observed
    log_line = (f"{name}: {o.truth.shape[0]} conditions x {o.truth.shape[1]} genes"
                + (f"; {first.log}" if first.log else "") + (f"; {counted}" if counted else "")
                + (f"; per-condition values are the mean over the {n_draws} draws of the prediction"
                   if n_draws > 1 else ""))
    write_score(inputs, values, uns={**first.uns, **counts}, log_line=log_line)


def write_score(data, values: dict, uns: dict | None = None, log_line: str | None = None):
    """Write the score file: obs = `stratum` + one float column per metric id (per-condition values),
    uns = ids, `metric_ids`, `metric_values` (mean over conditions), `n_draws`, the split labels of the
    solution (`split_seed`, `fold`, `n_folds`, where present) and `uns` extras. `data` is the Inputs or
    a MetricData."""
    import anndata as ad
    from component_io import fail, log

    solution, prediction = data.observed.solution if isinstance(data, Inputs) else data.solution, data.prediction
    obs = pd.DataFrame({"stratum": solution.obs["stratum"].astype(str).to_numpy(),
                        **{k: np.asarray(v, dtype=np.float64) for k, v in values.items()}},
                       index=pd.Index(solution.obs_names.astype(str), dtype=object))
    bad = [k for k in values if not np.isfinite(obs[k].to_numpy()).all()]
    if bad:
        fail(f"metric values {bad} are not finite (unexpected, since the inputs are finite); nothing written")
    if log_line:
        log(log_line)
    labels = {key: _plain(solution.uns[key]) for key in SPLIT_LABELS if key in solution.uns}
    score = ad.AnnData(obs=obs, uns={
        "dataset_id": str(prediction.uns["dataset_id"]), "task_id": str(prediction.uns["task_id"]),
        "method_id": str(prediction.uns["method_id"]),
        "metric_ids": list(values), "metric_values": [float(obs[k].mean()) for k in values],
        "n_draws": int(data.n_draws), **labels, **(uns or {}),
    })
    data.io.write("output", score)


def _plain(value):
    """A numpy scalar as the Python value it holds (h5ad round trips give 0-d arrays and numpy ints)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    return value.item() if isinstance(value, np.generic) else value
