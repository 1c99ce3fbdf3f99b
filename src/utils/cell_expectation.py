"""What a profile of count data made as the mean of its cells' log1p(cp10k) tends to: the per-cell
normalisation and its exact expectation (the simulator's noise-free `expected` layer).

Included as a viash resource by `simulated_grn`; needs numpy and scipy.
"""
from __future__ import annotations

import functools

import numpy as np

# Gauss-Hermite nodes over the log-normal library size, and the largest mean count whose expected
# log1p(cp10k) is summed exactly over the count distribution (above it a gamma approximation is exact
# to about 1e-4).
LIBRARY_NODES = 16
EXACT_MEAN_MAX = 400.0


def cell_log_normalised(counts) -> np.ndarray:
    """log1p(cp10k) of each cell (row) by its own total (scanpy's normalize_total + log1p); 0 for a cell
    without counts."""
    totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    return np.log1p(counts * (1e4 / np.where(totals > 0, totals, 1.0)))


@functools.lru_cache(maxsize=4)  # the same table serves every condition of a simulation
def _mean_log1p_table(a_values: tuple, dispersion: float):
    """E[log1p(a c)] for c with mean mu and variance mu + dispersion mu^2 (negative binomial; Poisson at
    dispersion 0), on a log grid of mu up to EXACT_MEAN_MAX: (grid, table[len(a_values), len(grid)])."""
    from scipy import stats

    grid = np.geomspace(1e-6, EXACT_MEAN_MAX, 600)
    k_max = int(np.ceil(EXACT_MEAN_MAX + 12 * np.sqrt(EXACT_MEAN_MAX + dispersion * EXACT_MEAN_MAX ** 2) + 30))
    k = np.arange(k_max + 1, dtype=np.float64)
    if dispersion > 0:
        r = 1.0 / dispersion
        pmf = stats.nbinom.pmf(k[None, :], r, (r / (r + grid))[:, None])
    else:
        pmf = stats.poisson.pmf(k[None, :], grid[:, None])
    return grid, np.log1p(np.outer(a_values, k)) @ pmf.T


def expected_cell_log(share, mean_library_size: float, dispersion: float, library_log_sd: float) -> np.ndarray:
    """Expected log1p(cp10k) of one cell whose counts are drawn as `sample_counts` draws them, per entry of
    `share` (rows of expression shares), for library sizes log-normal around `mean_library_size` with
    log-scale sd `library_log_sd` and negative-binomial counts of `dispersion`: the mean profile a large pool
    of such cells tends to. The log-normal library size is integrated by Gauss-Hermite quadrature and the count distribution exactly
    (a gamma approximation above a mean of EXACT_MEAN_MAX counts); the cell's total is taken to be its
    library size (with hundreds of genes its relative spread is a few per cent, the same for every profile)."""
    from scipy.special import digamma

    nodes, weights = np.polynomial.hermite_e.hermegauss(LIBRARY_NODES)
    weights = weights / weights.sum()
    libraries = mean_library_size * np.exp(-library_log_sd ** 2 / 2 + library_log_sd * nodes)
    scales = 1e4 / libraries
    grid, table = _mean_log1p_table(tuple(scales), dispersion)
    share = np.asarray(share, dtype=np.float64)
    result = np.zeros_like(share)
    gamma_shift = (digamma(1.0 / dispersion) + np.log(dispersion)) if dispersion > 0 else 0.0
    for library, scale, weight, row in zip(libraries, scales, weights, table):
        mean = library * share
        small = mean <= EXACT_MEAN_MAX
        value = np.empty_like(mean)
        tiny = mean < grid[0]
        value[small] = np.interp(np.log(np.maximum(mean[small], grid[0])), np.log(grid), row)
        value[tiny] = mean[tiny] * np.log1p(scale)  # P(c = 1) ~ mean: the only count that matters
        big = ~small
        value[big] = (np.log(scale * mean[big]) + gamma_shift - 0.5 / mean[big] + 1.0 / (scale * mean[big]))
        result += weight * value
    return result
