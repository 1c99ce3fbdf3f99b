"""Stochastic predictions scored as their expectation, split labels in the score, inputs read once per
process, and the fast context ranks against the implementation they replaced.

- a 3-condition split with two draws, worked out by hand: per-condition values are the mean over draws
  (error, correlation and discrimination families), which differs from the metric of the mean prediction;
- draws are checked like X (NaN, missing layers) with one line;
- random_perturbation writes n_draws draws of training profiles, and its score is their expectation;
- score uns carries split_seed / fold / n_folds from the solution and n_draws;
- several metric scripts in one process read the files once and give the values of separate processes;
- context_ranks, l1_diagonal_ranks and fractional_top_ks equal the previous implementation on fixed cases.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from perturbcast.runner import run_component

from conftest import ROOT

sys.path.insert(0, str(ROOT / "src" / "utils"))
import distances  # noqa: E402
import metric_utils as mu  # noqa: E402

UNS = {"dataset_id": "hand", "task_id": "unseen_perturbation", "split_seed": 3, "fold": 2, "n_folds": 5,
       "normalization_id": "log1p"}
GENES = ["G1", "G2", "G3", "G4"]
# three conditions whose targets are not measured (nothing excluded), one context; control 1 everywhere
OBSERVED = np.array([[4.0, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]])
DRAW_0 = OBSERVED.copy()               # the truth
DRAW_1 = OBSERVED[[1, 2, 0]]           # each condition predicted as the next one's observation


def write_files(directory: Path, observed, draws, uns=UNS, layers_extra=None, n_draws=None):
    n = observed.shape[0]
    index = pd.Index([f"c{i}" for i in range(n)], dtype=object)
    obs = pd.DataFrame({"perturbation": [f"T{i}" for i in range(n)], "perturbation_type": "knockdown",
                        "n_targets": np.ones(n, dtype=np.int64), "cell_type": "K562", "condition": "none",
                        "stratum": "single", "n_cells": np.full(n, 50, dtype=np.int64)}, index=index)
    genes = GENES if observed.shape[1] == len(GENES) else [f"G{j}" for j in range(observed.shape[1])]
    var = pd.DataFrame(index=pd.Index(genes, dtype=object))
    control = np.ones_like(observed)
    truth = (control + observed).astype(np.float32)
    ad.AnnData(X=truth, obs=obs, var=var, uns=dict(uns),
               layers={"replicate_1": truth, "replicate_2": truth, "control": control.astype(np.float32)}
               ).write_h5ad(directory / "solution.h5ad")
    layers = {f"draw_{k}": (control + d).astype(np.float32) for k, d in enumerate(draws) if k > 0}
    layers.update(layers_extra or {})
    pred_uns = {"dataset_id": uns["dataset_id"], "task_id": uns["task_id"], "method_id": "m"}
    if n_draws is not None or len(draws) > 1:
        pred_uns["n_draws"] = len(draws) if n_draws is None else n_draws
    ad.AnnData(X=(control + draws[0]).astype(np.float32), obs=pd.DataFrame(index=index.copy()), var=var.copy(),
               uns=pred_uns, layers=layers).write_h5ad(directory / "prediction.h5ad")
    return directory / "solution.h5ad", directory / "prediction.h5ad"


def score(component, solution, prediction, output):
    log = Path(f"{output}.log")
    with open(log, "w") as handle:
        result = run_component(ROOT / "src" / "metrics" / component,
                               ["--input_solution", str(solution), "--input_prediction", str(prediction),
                                "--output", str(output)], stdout=handle, stderr=handle)
    return result.exit_code, (ad.read_h5ad(output) if result.exit_code == 0 else None), log.read_text()


@pytest.fixture(scope="module")
def two_draws(tmp_path_factory):
    directory = tmp_path_factory.mktemp("draws")
    solution, prediction = write_files(directory, OBSERVED, [DRAW_0, DRAW_1])
    return {name: score(name, solution, prediction, directory / f"{name}.h5ad")
            for name in ("delta_error", "discrimination")}


def test_error_and_correlation_are_means_over_draws(two_draws):
    code, scored, log = two_draws["delta_error"]
    assert code == 0, log
    # draw 0 is exact: mse 0, pearson 1. Draw 1: the difference o_{i+1} - o_i has two entries of +-4 over
    # 4 genes: mse 32/4 = 8; centred vectors [-1 3 -1 -1] and [3 -1 -1 -1]: pearson -4/12 = -1/3.
    np.testing.assert_allclose(scored.obs["mse_delta"], [4.0] * 3)
    np.testing.assert_allclose(scored.obs["pearson_delta"], [1 / 3] * 3)
    # the mean prediction [2 2 0 0] (row 0) would score mse 8/4 = 2 and pearson 4/sqrt(4*12) = 0.577
    assert scored.uns["n_draws"] == 2
    assert "mean over the 2 draws" in log


def test_discrimination_is_a_mean_over_draws_each_scored_as_a_whole(two_draws):
    code, scored, log = two_draws["discrimination"]
    assert code == 0, log
    # draw 0: every prediction is its own observation (rank 0, discrimination 1). Draw 1: p_i = o_{i+1}
    # is at L1 distance 0 from o_{i+1} and 8 from o_i and o_{i+2}: one closer, one tie -> rank 1.5,
    # discrimination 1 - 1.5/3 = 0.5. Expectation 0.75 (the mean prediction would score 5/6).
    np.testing.assert_allclose(scored.obs["discrimination_l1"], [0.75] * 3)
    np.testing.assert_allclose(scored.obs["discrimination_cosine"], [0.75] * 3)
    # mean_rank: o_i against the predictions of draw 1: p_{i-1} = o_i is closer than p_i (cosine 0 vs 1),
    # p_{i+1} ties with p_i -> rank 1.5 of 2 = 0.75; draw 0: rank 0. Mean 0.375.
    np.testing.assert_allclose(scored.obs["mean_rank"], [0.375] * 3)


def test_score_carries_the_split_labels_and_n_draws(two_draws, tmp_path):
    scored = two_draws["delta_error"][1]
    assert (scored.uns["split_seed"], scored.uns["fold"], scored.uns["n_folds"]) == (3, 2, 5)
    # without fold labels in the solution, none are invented; a deterministic prediction has n_draws 1
    uns = {k: v for k, v in UNS.items() if k not in ("fold", "n_folds")}
    solution, prediction = write_files(tmp_path, OBSERVED, [DRAW_1], uns=uns)
    code, plain, log = score("delta_error", solution, prediction, tmp_path / "s.h5ad")
    assert code == 0, log
    assert plain.uns["n_draws"] == 1 and plain.uns["split_seed"] == 3
    assert "fold" not in plain.uns and "n_folds" not in plain.uns
    np.testing.assert_allclose(plain.obs["mse_delta"], [8.0] * 3)


@pytest.mark.parametrize("problem", ["nan", "missing", "stray", "bad_count"])
def test_draws_are_checked_like_x(tmp_path, problem):
    draws, extra, n_draws = [DRAW_0, DRAW_1], {}, None
    if problem == "nan":
        draws[1] = DRAW_1.copy()
        draws[1][0, 0] = np.nan
    elif problem == "missing":
        n_draws = 3
    elif problem == "stray":
        extra = {"draw_2": np.ones((3, 4), dtype=np.float32)}
    else:
        n_draws = 0
    solution, prediction = write_files(tmp_path, OBSERVED, draws, layers_extra=extra, n_draws=n_draws)
    code, scored, log = score("delta_error", solution, prediction, tmp_path / "s.h5ad")
    errors = [line for line in log.splitlines() if line.startswith("[error]")]
    assert code == 1 and scored is None and "Traceback" not in log, log
    assert len(errors) == 1 and "prediction.h5ad" in errors[0], log
    word = {"nan": "layers['draw_1'] has 1 NaN", "missing": "['draw_2'] are missing", "stray": "beyond its draws",
            "bad_count": "uns['n_draws'] is 0"}[problem]
    assert word in errors[0], errors[0]
    assert not (tmp_path / "s.h5ad").exists()


# --------------------------------------------------------------------------------------------------
# random_perturbation
# --------------------------------------------------------------------------------------------------

def test_random_perturbation_is_scored_as_its_expectation(tmp_path):
    from test_controls_and_delta_error import make_split  # noqa: E402

    train, test, solution = make_split()
    for name, adata in (("train", train), ("test", test), ("solution", solution)):
        adata.write_h5ad(tmp_path / f"{name}.h5ad")
    result = run_component(ROOT / "src" / "control_methods" / "random_perturbation",
                           ["--input_train", str(tmp_path / "train.h5ad"), "--input_test", str(tmp_path / "test.h5ad"),
                            "--input_solution", str(tmp_path / "solution.h5ad"), "--output", str(tmp_path / "r.h5ad"),
                            "--n_draws", "400", "--seed", "1"])
    assert result.exit_code == 0
    prediction = ad.read_h5ad(tmp_path / "r.h5ad")
    assert prediction.uns["n_draws"] == 400
    # the draws are stored as the profiles drawn and their indices (uns), not as 399 layers
    assert not any(name.startswith("draw_") for name in prediction.layers)
    stored, rows = prediction.uns["draw_profiles"], prediction.uns["draw_rows"]
    assert rows.shape == (400, test.n_obs) and len(stored) <= train.n_obs
    draws = stored[rows].astype(np.float64)
    np.testing.assert_allclose(draws[0], prediction.X, rtol=1e-6)
    sys.path.insert(0, str(ROOT / "src" / "utils"))
    import baselines

    profiles = baselines.TrainingProfiles(train)
    contexts = baselines.test_contexts(test)
    control = solution.layers["control"].astype(np.float64)
    observed = solution.X.astype(np.float64) - control
    keep = ~mu.deltas.target_mask(solution.obs["perturbation"], solution.var_names)
    expected = []
    for i, context in enumerate(contexts):
        rows, _ = profiles.rows_or_all(context)
        candidates = profiles.X[rows]
        # every draw of row i is one of its context's training profiles
        assert np.abs(draws[:, i, None, :] - candidates[None]).max(axis=2).min(axis=1).max() < 1e-5
        errors = ((candidates - control[i] - observed[i]) ** 2)[:, keep[i]].mean(axis=1)
        expected.append((errors.mean(), errors.std() / np.sqrt(400)))
    code, scored, log = score("delta_error", tmp_path / "solution.h5ad", tmp_path / "r.h5ad", tmp_path / "s.h5ad")
    assert code == 0, log
    got = scored.obs["mse_delta"].to_numpy()
    # the score is exactly the mean over the written draws ...
    per_draw = ((draws - control - observed) ** 2 * keep).sum(axis=2) / keep.sum(axis=1)
    np.testing.assert_allclose(got, per_draw.mean(axis=0), rtol=1e-6)
    # ... which estimates the expectation over a uniform choice within 4 standard errors
    for value, (mean, se) in zip(got, expected):
        assert abs(value - mean) <= 4 * se + 1e-6 * mean, (value, mean, se)  # float32 draws


# --------------------------------------------------------------------------------------------------
# Several metric scripts in one process
# --------------------------------------------------------------------------------------------------

def run_in_process(component, solution, prediction, output):
    """Run a metric script the way a worker that runs several of them would: same process, modules kept."""
    source = (ROOT / "src" / "metrics" / component / "script.py").read_text().split("## VIASH END")[1]
    par = {"input_solution": str(solution), "input_prediction": str(prediction), "output": str(output)}
    meta = {"name": component, "resources_dir": str(ROOT / "src" / "utils"), "config": None}
    exec(compile("import sys\n" + source, component, "exec"), {"par": par, "meta": meta})
    return ad.read_h5ad(output)


def test_scripts_in_one_process_read_once_and_agree_with_separate_processes(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    observed = rng.normal(size=(6, 4))
    solution, prediction = write_files(tmp_path, observed, [observed + rng.normal(0, 0.5, size=(6, 4))])
    import component_io

    reads = []
    original = component_io.ComponentIO.read

    def counting(self, name, *args, **kwargs):
        reads.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(component_io.ComponentIO, "read", counting)
    mu.forget_inputs()
    for component in ("delta_error", "systema", "weighted_error"):
        together = run_in_process(component, solution, prediction, tmp_path / f"{component}_1.h5ad")
        code, alone, log = score(component, solution, prediction, tmp_path / f"{component}_2.h5ad")
        assert code == 0, log
        pd.testing.assert_frame_equal(together.obs, alone.obs, check_exact=False, rtol=1e-12)
    assert reads == ["input_solution", "input_prediction"]  # the second and third script read nothing
    # a changed prediction file is read again, not taken from the memo
    changed = observed + 1.0
    write_files(tmp_path, observed, [changed])
    os.utime(prediction, ns=(1, 1))
    again = run_in_process("delta_error", solution, prediction, tmp_path / "again.h5ad")
    np.testing.assert_allclose(again.obs["mse_delta"], 1.0, rtol=1e-6)
    assert reads[2:] == ["input_solution", "input_prediction"]
    mu.forget_inputs()


# --------------------------------------------------------------------------------------------------
# Fast ranks against the previous implementation
# --------------------------------------------------------------------------------------------------

def previous_ranks(predicted, observed, tol):
    """The implementation before the fast paths: full distance matrices, then diagonal ranks."""
    out = {"l1": distances.diagonal_ranks(cdist(predicted, observed, "cityblock") / predicted.shape[1])}
    cosine = mu.pairwise_distances(predicted, observed, metric="cosine", zero_a=tol, zero_b=tol)
    out["cosine"] = distances.diagonal_ranks(cosine)
    out["cosine_observed"] = distances.diagonal_ranks(
        mu.pairwise_distances(observed, predicted, metric="cosine", zero_a=tol, zero_b=tol))
    out["euclidean"] = distances.diagonal_ranks(mu.pairwise_distances(predicted, observed, metric="euclidean"))
    return out


def fixed_cases():
    rng = np.random.default_rng(11)
    n, g = 60, 300
    loadings = rng.normal(size=(g, 5))
    observed = rng.normal(size=(n, 5)) @ loadings.T + rng.normal(0, 0.3, size=(n, g))
    observed[7] = observed[3]  # two identical observations: exact ties
    return observed, {
        "decent": 0.6 * observed + rng.normal(0, 0.4, size=(n, g)),
        "good": observed + rng.normal(0, 0.01, size=(n, g)),
        "shuffled": observed[rng.permutation(n)],
        "constant": np.repeat(observed.mean(axis=0, keepdims=True), n, axis=0),
        "rounded": np.round(0.5 * observed, 0),  # many exact ties between distances
    }


@pytest.mark.parametrize("case", ["decent", "good", "shuffled", "constant", "rounded"])
def test_context_ranks_equal_the_previous_implementation(tmp_path, case):
    observed, predictions = fixed_cases()
    predicted = predictions[case]
    solution, prediction = write_files(tmp_path, observed, [predicted])
    mu.forget_inputs()
    inputs = mu.read_inputs({"input_solution": str(solution), "input_prediction": str(prediction),
                             "output": str(tmp_path / "s.h5ad")}, {"config": None})
    data = inputs.draw(0)
    rows, genes = np.arange(data.n_rows), np.arange(observed.shape[1])
    got = mu.context_ranks(data, 0, rows, genes, kinds=("l1", "cosine", "euclidean"))
    want = previous_ranks(data.predicted, data.observed, data.resolution)
    for kind in want:
        np.testing.assert_array_equal(got[kind], want[kind], err_msg=kind)
    mu.forget_inputs()


@pytest.mark.parametrize("case", ["decent", "good", "shuffled", "rounded"])
def test_bounded_l1_ranks_equal_full_distances(case):
    observed, predictions = fixed_cases()
    want = distances.diagonal_ranks(cdist(predictions[case], observed, "cityblock"))
    np.testing.assert_array_equal(distances.l1_diagonal_ranks(predictions[case], observed), want)


def test_fractional_top_ks_equal_one_k_at_a_time():
    rng = np.random.default_rng(2)
    values = np.round(np.abs(rng.normal(size=(20, 300))), 1)  # many ties at the boundaries
    keep = rng.random((20, 300)) > 0.1
    keep[3, 20:] = False  # a row with fewer kept genes than k
    together = mu.fractional_top_ks(values, keep, (20, 100, 200))
    for k in (20, 100, 200):
        v = np.where(keep, values, -np.inf)
        k_row = np.minimum(k, keep.sum(axis=1))
        threshold = -np.sort(-v, axis=1)[np.arange(20), k_row - 1]
        above, tied = (v > threshold[:, None]), (v == threshold[:, None]) & keep
        share = (k_row - above.sum(axis=1)) / tied.sum(axis=1)
        want = above + tied * share[:, None]
        np.testing.assert_allclose(together[k][0].toarray(), want, atol=1e-15)
        np.testing.assert_array_equal(together[k][1], k_row)


def test_indexed_draws_score_as_the_same_layers_and_bad_indices_are_refused(two_draws, tmp_path):
    """Draws stored as profiles + indices (random_perturbation's) score exactly as the same draws stored as layers;
    indices out of range or an X that is not draw 0 stop the metric with one [error] line."""
    solution, prediction = write_files(tmp_path, OBSERVED, [DRAW_0])
    adata = ad.read_h5ad(prediction)
    profiles = (1.0 + OBSERVED).astype(np.float32)   # the control is 1 everywhere: DRAW_0 = rows 0 1 2, DRAW_1 = 1 2 0
    adata.uns.update(n_draws=2, draw_profiles=profiles, draw_rows=np.array([[0, 1, 2], [1, 2, 0]], dtype=np.int32))
    adata.write_h5ad(prediction)
    code, indexed, log = score("delta_error", solution, prediction, tmp_path / "indexed.h5ad")
    assert code == 0, log
    layered = two_draws["delta_error"][1]
    np.testing.assert_allclose(indexed.obs["mse_delta"], layered.obs["mse_delta"], rtol=1e-7)
    # by hand: condition 0's draws are exact (0) and the next observation (16 + 16 over 4 genes = 8): mean 4
    np.testing.assert_allclose(indexed.obs["mse_delta"], [4.0, 4.0, 4.0])
    for rows, message in ((np.array([[0, 1, 2], [1, 2, 3]], dtype=np.int32), "expected integers in [0, 3)"),
                          (np.array([[1, 1, 2], [1, 2, 0]], dtype=np.int32), "X is not draw 0")):
        adata.uns["draw_rows"] = rows
        adata.write_h5ad(prediction)
        code, _, log = score("delta_error", solution, prediction, tmp_path / "bad.h5ad")
        assert code == 1 and message in log and "Traceback" not in log, log
