"""The faster metric code of issue 24 (item 3) gives the values of the code before it (commit f0acb0b).

- every Python metric script, run one after the other in one process as the engine's worker runs them
  (the session's caches shared), on the synthetic split of benchmarks/metrics.py (150 conditions x 500
  genes, 2 contexts; a prediction and one with 3 draws), against the per-condition values the scripts of
  f0acb0b wrote for the same split (tests/fixtures/metric_values_f0acb0b.npz), with blocks of a few rows
  so that every row-blocked computation runs over several blocks;
- the row-wise helpers against the previous implementations (kept below) on random inputs, at several
  block sizes.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "src" / "utils"))
import deltas  # noqa: E402
import metric_utils as mu  # noqa: E402
import rowwise  # noqa: E402

RTOL = 1e-10


# ----------------------------------------------------------------------------------------------------
# The previous implementations (f0acb0b), whole-matrix
# ----------------------------------------------------------------------------------------------------

def old_masked_mean(values, keep):
    n = keep.sum(axis=1).astype(np.float64)
    total = np.where(keep, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / n


def old_masked_errors(predicted, observed, keep):
    difference = predicted - observed
    mse = old_masked_mean(difference ** 2, keep)
    return {"mse": mse, "mae": old_masked_mean(np.abs(difference), keep), "rmse": np.sqrt(mse)}


def old_masked_rowwise_pearson(a, b, keep, atol=0.0):
    keep = np.asarray(keep, dtype=bool)
    n = keep.sum(axis=1).astype(np.float64)
    safe_n = np.maximum(n, 1.0)
    eps = 64 * np.finfo(np.float64).eps
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), n.shape)
    centred, sums_of_squares, tolerances = [], [], []
    for x in (a, b):
        kept = np.where(keep, np.asarray(x, dtype=np.float64), 0.0)
        largest = np.maximum(kept.max(axis=1, initial=0.0), -kept.min(axis=1, initial=0.0))
        kept -= (kept.sum(axis=1) / safe_n)[:, None]
        np.multiply(kept, keep, out=kept)
        centred.append(kept)
        sums_of_squares.append(np.einsum("ij,ij->i", kept, kept))
        tolerances.append(np.maximum(atol, eps * largest))
    (ss_a, ss_b), (tol_a, tol_b) = sums_of_squares, tolerances
    cross = np.einsum("ij,ij->i", centred[0], centred[1])
    undefined = (n < 2) | (np.sqrt(ss_a / safe_n) <= tol_a) | (np.sqrt(ss_b / safe_n) <= tol_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(undefined, 0.0, cross / np.sqrt(ss_a * ss_b))
    return np.clip(r, -1.0, 1.0), undefined


def old_average_ranks(values, keep):
    n, g = values.shape
    v = np.where(keep, values, np.inf)
    order = np.argsort(v, axis=1)
    ordered = np.take_along_axis(v, order, axis=1)
    start = np.empty((n, g), dtype=bool)
    start[:, 0] = True
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=start[:, 1:])
    flat = start.ravel()
    run = np.cumsum(flat, dtype=np.int64) - 1
    first = np.flatnonzero(flat)
    last = np.empty_like(first)
    last[:-1], last[-1] = first[1:] - 1, n * g - 1
    average = (first + last) * 0.5 - (first // g) * g + 1.0
    ranks = np.empty((n, g))
    np.put_along_axis(ranks, order, average[run].reshape(n, g), axis=1)
    return ranks


def old_spearman(a, b, keep, resolution):
    return old_masked_rowwise_pearson(old_average_ranks(mu.snap(a, resolution), keep),
                                      old_average_ranks(mu.snap(b, resolution), keep), keep)


def old_cosine(a, b, keep, atol=0.0):
    a = np.where(keep, a, 0.0)
    b = np.where(keep, b, 0.0)
    n = np.maximum(keep.sum(axis=1), 1).astype(np.float64)
    ss_a, ss_b = (a * a).sum(axis=1), (b * b).sum(axis=1)
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), n.shape)
    undefined = (np.sqrt(ss_a / n) <= atol) | (np.sqrt(ss_b / n) <= atol) | (ss_a == 0) | (ss_b == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(undefined, 0.0, (a * b).sum(axis=1) / np.sqrt(ss_a * ss_b))
    return np.clip(cosine, -1.0, 1.0), undefined


def close(new, old):
    np.testing.assert_allclose(new, old, rtol=RTOL, atol=1e-300)


@pytest.fixture(params=[None, 997, 1 << 19])
def block_values(request, monkeypatch):
    """Blocks of rows of a few values (several blocks per matrix), and the default."""
    if request.param is not None:
        monkeypatch.setattr(deltas, "BLOCK_VALUES", request.param)
    monkeypatch.setattr(rowwise, "RANK_BLOCK_ROWS", 7)
    return request.param


def random_case(seed, rows=53, genes=211):
    rng = np.random.default_rng(seed)
    a = np.round(rng.normal(0, 1, (rows, genes)), 2)  # ties
    b = 0.4 * a + rng.normal(0, 1, (rows, genes))
    keep = rng.random((rows, genes)) > 0.05
    a[3] = 0.7  # a constant row
    keep[5, 2:] = False  # a row that keeps two genes
    resolution = np.full(rows, 4 * float(np.finfo(np.float32).eps)) * np.abs(np.vstack([a, b])).max()
    return a, b, keep, resolution


@pytest.mark.parametrize("seed", [0, 1])
def test_row_statistics_match_the_previous_implementation(seed, block_values):
    a, b, keep, resolution = random_case(seed)
    for new, old in ((deltas.masked_rowwise_pearson(a, b, keep, atol=resolution),
                      old_masked_rowwise_pearson(a, b, keep, atol=resolution)),
                     (mu.masked_rowwise_cosine(a, b, keep, atol=resolution), old_cosine(a, b, keep, atol=resolution)),
                     (mu.masked_rowwise_spearman(a, b, keep, resolution), old_spearman(a, b, keep, resolution))):
        close(new[0], old[0])
        assert (new[1] == old[1]).all()
    for key, value in deltas.masked_errors(a, b, keep).items():
        close(value, old_masked_errors(a, b, keep)[key])
    close(deltas.masked_mean(a, keep), old_masked_mean(a, keep))
    # ranks of whole numbers by sorted keys, and with values no key can hold (the argsort path)
    whole = np.round(a * 100)
    for values in (whole, whole * 2.0 ** 45):
        ranks = mu.masked_average_ranks(values, keep, whole=True)
        close(np.where(keep, ranks, 0), np.where(keep, old_average_ranks(values, keep), 0))


def test_blocked_selections_match_whole_matrix_ones(block_values):
    a, b, keep, resolution = random_case(2, rows=41, genes=260)
    ks = (20, 100, 200)
    known = mu._kth_largest(np.abs(a), keep, ks)[1]
    blocked = mu.kth_largest(np.abs, a, keep, ks)
    for k in ks:
        assert all((x == y).all() for x, y in zip(blocked[k], known[k]))
    for new, old in ((mu.blocked_fractional_top_ks(np.abs, a, keep, ks, known), mu.fractional_top_ks(np.abs(a), keep, ks, known)),
                     (mu.blocked_fractional_top_ks(np.abs, b, keep, ks), mu.fractional_top_ks(np.abs(b), keep, ks))):
        for k in ks:
            assert (new[k][0] != old[k][0]).nnz == 0 and (new[k][1] == old[k][1]).all()
    assert (mu.same_signs(a, b, resolution) == (mu.signs(a, resolution) == mu.signs(b, resolution))).all()


def test_every_metric_script_in_one_session_gives_the_previous_values(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("benchmark_metrics", ROOT / "benchmarks" / "metrics.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    benchmark.synthetic_split(tmp_path, 150, 500, 2, seed=3)
    benchmark.write_random_draws(tmp_path, 3, seed=4)
    monkeypatch.setattr(deltas, "BLOCK_VALUES", 2000)  # 4 rows of 500 genes per block
    monkeypatch.setattr(rowwise, "RANK_BLOCK_ROWS", 16)
    expected = np.load(ROOT / "tests" / "fixtures" / "metric_values_f0acb0b.npz")
    import anndata as ad

    seen = set()
    mu.forget_inputs()
    try:
        for prediction in ("prediction", "random"):
            with contextlib.redirect_stdout(io.StringIO()):
                assert benchmark.one_process_worker(ROOT, tmp_path, f"{prediction}.h5ad") == 0
            for path in sorted(tmp_path.glob(f"one_{ROOT.name}_*.h5ad")):
                name = path.stem.split("_", 2)[2]
                score = ad.read_h5ad(path)
                for column in score.obs.columns.drop("stratum"):
                    key = f"{prediction}/{name}/{column}"
                    close(score.obs[column].to_numpy(), expected[key])
                    seen.add(key)
                path.unlink()
    finally:
        mu.forget_inputs()
    assert seen == set(expected.files)


def test_largest_values_from_sampled_candidates_match_a_full_partition():
    from selections import _largest

    rng = np.random.default_rng(7)
    for trial in range(300):
        n, g = int(rng.integers(1, 12)), int(rng.choice([50, 1700, 4000]))
        kind = trial % 4
        x = (rng.normal(size=(n, g)) if kind == 0 else rng.integers(0, 4, size=(n, g)).astype(float) if kind == 1
             else np.sort(rng.exponential(size=(n, g)), axis=1) if kind == 2 else rng.normal(size=(n, g)).astype(np.float32))
        keep = rng.random((n, g)) < rng.choice([1.0, 0.9, 0.05])  # few kept genes: whole rows selected
        v = np.where(keep, np.abs(x), -np.inf)
        kk = int(min(rng.choice([1, 20, 100, 200]), g))
        expected = np.sort(np.partition(v, g - kk, axis=1)[:, g - kk:], axis=1)
        got = _largest(v, kk)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), (trial, n, g, kk)


def test_whole_number_ranks_equal_the_argsort_path_bit_for_bit():
    """Ranks from sorted integer keys (`_whole_average_ranks`) against the argsort path on whole numbers: many
    ties, negative values, values near the largest a key can hold, rows with nothing kept; every entry (the
    non-kept ones share the rank after the kept ones) and both rank dtypes."""
    import rowwise

    rng = np.random.default_rng(4)
    for trial in range(300):
        n, g = int(rng.integers(1, 40)), int(rng.integers(1, 300))
        values = rng.integers(-6, int(rng.integers(-5, 40)), size=(n, g)).astype(np.float64)
        if trial % 4 == 0:
            bits = max(int(g - 1).bit_length(), 1)
            values = np.round(rng.uniform(-1, 1, size=(n, g)) * 2.0 ** (51 - bits))  # keys up to 2**51
        keep = rng.random((n, g)) < rng.uniform(0, 1)
        for dtype in (np.float32, np.float64):
            got = rowwise._whole_average_ranks(values, keep, dtype)
            want = rowwise._average_ranks(values, keep, dtype)
            assert got.dtype == want.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8)), trial


def test_three_valued_signs_equal_the_masked_sign():
    rng = np.random.default_rng(6)
    for trial in range(200):
        n, g = int(rng.integers(1, 30)), int(rng.integers(1, 200))
        values = np.round(rng.normal(size=(n, g)), 1)  # values exactly at +-resolution
        values[rng.random((n, g)) < 0.1] = -0.0
        resolution = np.abs(np.round(rng.normal(size=n), 1))
        resolution[rng.random(n) < 0.3] = 0.0
        for dtype in (np.float64, np.float32):
            v = values.astype(dtype)
            want = np.where(np.abs(v) <= resolution[:, None], 0, np.sign(v)).astype(np.int8)
            got = mu.signs(v, resolution)
            assert got.dtype == want.dtype and np.array_equal(got, want), trial
