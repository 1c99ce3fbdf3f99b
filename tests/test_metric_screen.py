"""Cosine and Euclidean ranks from the float32 screen (distances._screened_ranks) against the float64 product's
(distances._product_ranks, the path every rank had before): equal on random contexts with exact ties, identical
rows, zero rows, rows below their resolution, many scales, several draws, and non-finite values, and the screen is
what decides them where it can; null pairs (distance exactly 1) near an edge are decided without a dot."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "src" / "utils"))
import distances  # noqa: E402


@pytest.fixture(autouse=True)
def screen_small_contexts(monkeypatch):
    """The screen on every context here (in use it skips contexts whose float64 product is cheaper)."""
    monkeypatch.setattr(distances, "SCREEN_MIN_PAIRS", 0)


class Inputs:
    def __init__(self, draws):
        self.draws, self.caches, self.shared = draws, {}, {}

    @property
    def n_draws(self):
        return len(self.draws)

    def predicted(self, k, rows=slice(None)):
        return self.draws[k][rows]


class Data:
    """What context_ranks reads of a MetricData."""

    def __init__(self, inputs, k, observed, resolution):
        self.inputs, self.draw, self.observed, self.resolution = inputs, k, observed, resolution
        self.predicted = inputs.draws[k]

    def shared(self, key, compute, version=None):
        if key not in self.inputs.shared:
            self.inputs.shared[key] = compute()
        return self.inputs.shared[key]


def ranks(observed, draws, resolution, genes, screen: bool):
    inputs = Inputs(draws)
    rows = np.arange(observed.shape[0])
    if not screen:
        inputs.caches[("screen", 0)] = None  # the float64 product, as before the screen
    # with L1 too: the prediction's block is then dropped, and a refinement fetches its rows from the draws
    out = [distances.context_ranks(Data(inputs, k, observed, resolution), 0, rows, genes,
                                   kinds=("l1", "cosine", "euclidean")) for k in range(len(draws))]
    return out, ("products", 0) in inputs.caches


def random_case(rng, n, g, kind):
    observed = rng.normal(size=(n, 4)) @ rng.normal(size=(4, g)) + rng.normal(0, rng.uniform(0.05, 1), size=(n, g))
    observed *= 10.0 ** rng.uniform(-3, 3)
    if n > 3:
        observed[1] = observed[0]                      # identical observations: exact ties
        observed[2] = 0.0                              # a zero row: null for cosine
    predicted = {
        "decent": 0.6 * observed + rng.normal(0, observed.std() * 0.5, size=(n, g)),
        "good": observed + rng.normal(0, observed.std() * 1e-3, size=(n, g)),
        "exact": observed.copy(),                      # every diagonal distance 0
        "shuffled": observed[rng.permutation(n)],
        "rounded": np.round(observed / (observed.std() + 1e-300) * 2) * observed.std(),
        "noise": rng.normal(0, observed.std() + 1.0, size=(n, g)),
    }[kind]
    resolution = np.full(n, 4 * 2.0 ** -23 * np.abs(observed).max())
    if n > 4:
        resolution[3] = 10 * np.abs(np.r_[observed[3], predicted[3]]).max()  # a row null by its resolution
    return observed, predicted, resolution


def assert_same(got, want):
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("kind", ["decent", "good", "exact", "shuffled", "rounded", "noise"])
def test_screened_ranks_equal_the_float64_products(kind):
    rng = np.random.default_rng(["decent", "good", "exact", "shuffled", "rounded", "noise"].index(kind))
    screened = 0
    for trial in range(12):
        n, g = int(rng.integers(2, 70)), int(rng.choice([1, 3, 50, 700, 2100]))
        observed, predicted, resolution = random_case(rng, n, g, kind)
        genes = np.arange(g) if trial % 3 else np.sort(rng.choice(g, size=max(1, g - 2), replace=False))
        want, _ = ranks(observed, [predicted], resolution, genes, screen=False)
        got, fell_back = ranks(observed, [predicted], resolution, genes, screen=True)
        assert_same(got, want)
        screened += not fell_back
    if kind in ("decent", "good", "shuffled"):
        assert screened >= 6  # the screen decides these (one gene: every cosine ties, the product decides)


def test_screened_ranks_of_several_draws_and_shared_rows():
    rng = np.random.default_rng(7)
    for trial in range(10):
        n, g = int(rng.integers(3, 50)), int(rng.choice([20, 300, 1500]))
        observed, predicted, resolution = random_case(rng, n, g, "decent")
        mean = np.repeat(observed.mean(axis=0, keepdims=True), n, axis=0)  # one row for every condition
        draws = [predicted, observed[rng.integers(0, n, size=n)], mean]
        want, _ = ranks(observed, draws, resolution, np.arange(g), screen=False)
        got, _ = ranks(observed, draws, resolution, np.arange(g), screen=True)
        assert_same(got, want)
        want, _ = ranks(observed, [mean], resolution, np.arange(g), screen=False)
        got, _ = ranks(observed, [mean], resolution, np.arange(g), screen=True)
        assert_same(got, want)


def test_screen_edges_are_refined_or_left_to_the_product():
    """Distances tied within a few units of round-off of the tie band's edges (small integers, differences of one):
    the screen must refine them exactly or hand the context to the float64 product, never guess."""
    rng = np.random.default_rng(3)
    for trial in range(40):
        n, g = int(rng.integers(3, 30)), int(rng.integers(1, 12))
        observed = rng.integers(-2, 3, size=(n, g)).astype(float)
        predicted = observed + rng.integers(-1, 2, size=(n, g))
        predicted[rng.random(n) < 0.3] = observed[0]
        resolution = np.full(n, 1e-6)
        want, _ = ranks(observed, [predicted], resolution, np.arange(g), screen=False)
        got, _ = ranks(observed, [predicted], resolution, np.arange(g), screen=True)
        assert_same(got, want)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e200, 1e24, 1e-200])  # 1e24: float32 products overflow
def test_screen_leaves_non_finite_and_extreme_values_to_the_product(value):
    rng = np.random.default_rng(5)
    observed, predicted, resolution = random_case(rng, 20, 40, "decent")
    predicted[4, 7] = value
    if value == 1e24:
        observed[[4, 9], 7] = 1e20  # products of 1e44: beyond float32
    if abs(value) < 1:
        predicted[5] = value  # a whole row at the bottom of float64's range
    with np.errstate(all="ignore"):
        want, _ = ranks(observed, [predicted], resolution, np.arange(40), screen=False)
        got, _ = ranks(observed, [predicted], resolution, np.arange(40), screen=True)
    for a, b in zip(got, want):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_null_rows_and_columns_do_not_send_a_context_to_the_product():
    """Zero predictions and observations (cosine distance exactly 1 on both paths) are decided without dots."""
    rng = np.random.default_rng(9)
    for sign in (1.0, -1.0):  # -1: most diagonal distances above 1, so the null pairs count as closer
        observed, predicted, resolution = random_case(rng, 120, 300, "decent")
        predicted *= sign
        predicted[10:30] = 0.0  # twenty conditions predicted as no change
        observed[40:45] = 0.0
        for i in range(50, 60):  # diagonal distances just above 1: null pairs within the screen's band, closer
            q = rng.normal(size=300)
            q -= (q @ observed[i]) / (observed[i] @ observed[i]) * observed[i]
            predicted[i] = q - 5e-6 * np.linalg.norm(q) / np.linalg.norm(observed[i]) * observed[i]
        want, _ = ranks(observed, [predicted], resolution, np.arange(300), screen=False)
        got, fell_back = ranks(observed, [predicted], resolution, np.arange(300), screen=True)
        assert_same(got, want)
        assert not fell_back


def test_small_contexts_use_the_float64_product(monkeypatch):
    monkeypatch.setattr(distances, "SCREEN_MIN_PAIRS", 4096)
    rng = np.random.default_rng(2)
    observed, predicted, resolution = random_case(rng, 20, 300, "decent")
    got, fell_back = ranks(observed, [predicted], resolution, np.arange(300), screen=True)
    want, _ = ranks(observed, [predicted], resolution, np.arange(300), screen=False)
    assert_same(got, want)
    assert fell_back


def test_rows_of_a_dropped_block_are_the_blocks_rows():
    rng = np.random.default_rng(12)
    observed, predicted, resolution = random_case(rng, 30, 50, "decent")
    draws = [predicted, observed[rng.integers(0, 30, size=30)], predicted[::-1].copy()]
    rows, genes = np.arange(30), np.sort(rng.choice(50, size=40, replace=False))
    fresh = Inputs(draws)
    block = distances._distinct_rows(Data(fresh, 0, observed, resolution), 0, rows, genes)[0].copy()
    inputs = Inputs(draws)
    for k in range(3):
        data = Data(inputs, k, observed, resolution)
        distances.context_ranks(data, 0, rows, genes, kinds=("l1", "cosine"))
        assert inputs.caches[("distinct", 0)][0] is None  # dropped
        which = np.arange(len(block))
        np.testing.assert_array_equal(distances._prediction_rows(data, 0, rows, genes, which), block)
