"""The simulator's noise-free profile of per-cell log-normalised counts (src/utils/cell_expectation.py)."""
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "src" / "utils"))
from cell_expectation import cell_log_normalised, expected_cell_log  # noqa: E402


def test_cell_log_normalised_by_hand():
    # cells of 4 and 16 counts: log1p(1e4 * count / total); an empty cell stays 0
    counts = np.array([[1.0, 3.0], [8.0, 8.0], [0.0, 0.0]])
    expected = np.log1p(np.array([[2500.0, 7500.0], [5000.0, 5000.0], [0.0, 0.0]]))
    np.testing.assert_allclose(cell_log_normalised(counts), expected)


@pytest.mark.parametrize("dispersion", [0.0, 0.2])
def test_expectation_matches_a_large_pool_of_simulated_cells(dispersion):
    """Against 200,000 cells drawn as the simulator draws them (log-normal library, negative-binomial counts),
    for mean counts from 0.03 to about 900 per cell (the exact sum and the gamma approximation both)."""
    rng = np.random.default_rng(0)
    share = np.array([1e-5, 1e-3, 1e-2, 0.3])
    library_size, library_sd, n = 3000.0, 0.3, 200_000
    library = library_size * np.exp(rng.normal(-library_sd ** 2 / 2, library_sd, size=n))
    mean = library[:, None] * share[None, :]
    counts = (rng.negative_binomial(1.0 / dispersion, 1.0 / (1.0 + dispersion * mean)) if dispersion > 0
              else rng.poisson(mean))
    simulated = np.log1p(counts * (1e4 / library[:, None])).mean(axis=0)  # the cell's total taken as its library
    np.testing.assert_allclose(expected_cell_log(share[None, :], library_size, dispersion, library_sd)[0], simulated,
                               atol=0.01)
