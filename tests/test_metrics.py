"""The metric components (delta_error's top-DE additions, delta_correlation, de_agreement, discrimination,
systema, weighted_error) and their shared helpers (src/utils/metric_utils.py, deltas.py).

- helpers on small hand-made arrays (ties, fewer genes than k, constant rows, exclusions), by hand;
- every component on one hand-made split whose contexts each test one thing: K (three conditions,
  values worked out by hand below), K2 (K's observations, a prediction that differs from K's only at the
  target genes: every value must equal K's), M (one constant profile predicted for every condition:
  mode collapse), Z (the control predicted: undefined correlations score 0.0) and R (a single test
  condition in its context);
- every component against a slow reference written from the definitions with scipy / scikit-learn on a
  random split with ties, a constant row, a combination and a target that is not measured;
- NaN and infinite predictions are refused by every component with one line;
- a constant prediction has mean_rank 0.5 on simulated data;
- agreement with cell-eval (pearson_delta, mse_delta, mae_delta, discrimination_score_l1) on Norman 2019
  (../shared/data) through our functions with cell-eval's target convention (skipped without cell-eval
  or the data).
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from math import sqrt

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from perturbcast.runner import run_component

from conftest import ROOT

sys.path.insert(0, str(ROOT / "src" / "utils"))
import deltas  # noqa: E402
import metric_utils as mu  # noqa: E402

METRICS = {
    "delta_error": ["mse_delta", "mae_delta", "rmse_delta", "pearson_delta", "mse_top20_de", "mse_top100_de"],
    "delta_correlation": ["spearman_delta", "cosine_delta", "pearson_top20_de", "pearson_top100_de"],
    "de_agreement": ["overlap_top20_de", "overlap_top100_de", "overlap_top200_de", "direction_accuracy",
                     "direction_accuracy_top100_de"],
    "discrimination": ["discrimination_l1", "discrimination_cosine", "mean_rank"],
    "systema": ["pearson_delta_perturbed_ref", "centroid_accuracy"],
    "weighted_error": ["wmse_delta", "wr2_delta"],
}
UNS = {"dataset_id": "hand", "task_id": "unseen_perturbation", "split_seed": 0, "normalization_id": "log1p"}


# --------------------------------------------------------------------------------------------------
# Writing splits and running components
# --------------------------------------------------------------------------------------------------

def write_split(directory, control, observed, predicted, perturbations, cell_types, genes, name="prediction"):
    """solution.h5ad (X = control + observed delta) and <name>.h5ad (X = control + predicted delta)."""
    n = len(perturbations)
    index = pd.Index([f"c{i:03d}" for i in range(n)], dtype=object)
    obs = pd.DataFrame({
        "perturbation": list(perturbations), "perturbation_type": "knockdown",
        "n_targets": np.array([len(p.split("+")) for p in perturbations], dtype=np.int64),
        "cell_type": list(cell_types), "condition": "none",
        "stratum": ["combo_seen0" if "+" in p else "single" for p in perturbations],
        "n_cells": np.full(n, 50, dtype=np.int64)}, index=index)
    var = pd.DataFrame(index=pd.Index(list(genes), dtype=object))
    truth = (control + observed).astype(np.float32)
    solution = ad.AnnData(X=truth, obs=obs, var=var, uns=dict(UNS),
                          layers={"replicate_1": truth, "replicate_2": truth, "control": control.astype(np.float32)})
    prediction = ad.AnnData(X=(control + predicted).astype(np.float32), obs=pd.DataFrame(index=index.copy()),
                            var=var.copy(),
                            uns={"dataset_id": "hand", "task_id": "unseen_perturbation", "method_id": "m"})
    solution.write_h5ad(directory / "solution.h5ad")
    prediction.write_h5ad(directory / f"{name}.h5ad")
    return directory / "solution.h5ad", directory / f"{name}.h5ad"


def score(component, solution, prediction, output, log=None):
    with open(log or f"{output}.log", "w") as handle:
        result = run_component(ROOT / "src" / "metrics" / component,
                               ["--input_solution", str(solution), "--input_prediction", str(prediction),
                                "--output", str(output)], stdout=handle, stderr=handle)
    text = open(log or f"{output}.log").read()
    return result.exit_code, (ad.read_h5ad(output) if result.exit_code == 0 else None), text


def score_all(solution, prediction, directory) -> dict:
    """Every metric component on one pair of files, two at a time: component -> (exit code, score, log)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(score, name, solution, prediction, directory / f"score_{name}.h5ad")
                   for name in METRICS}
    return {name: future.result() for name, future in futures.items()}


def table(results: dict) -> pd.DataFrame:
    """Per-condition values of every metric id (rows = conditions)."""
    frames = []
    for name, (code, scored, log) in results.items():
        assert code == 0, f"{name} failed:\n{log}"
        left_out = set(scored.uns.get("metrics_not_computed", []))
        computed = [m for m in METRICS[name] if m not in left_out]
        assert list(scored.uns["metric_ids"]) == computed
        frames.append(scored.obs[computed])
    return pd.concat(frames, axis=1)


# --------------------------------------------------------------------------------------------------
# Helpers on hand-made arrays
# --------------------------------------------------------------------------------------------------

def test_top_k_mask_breaks_ties_by_gene_order_and_keeps_all_when_fewer():
    values = np.array([[3, 1, 2, 2, 2, 0], [5, 5, 5, 5, 5, 5], [1, 2, 3, 4, 5, 6]], dtype=float)
    keep = np.ones_like(values, dtype=bool)
    keep[2, 5] = False  # 6 is excluded: the top 3 of the rest are 5, 4, 3
    np.testing.assert_array_equal(mu.top_k_mask(values, keep, 3).astype(int),
                                  [[1, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0]])
    np.testing.assert_array_equal(mu.top_k_mask(values, keep, 10), keep)  # fewer kept genes than k


def test_fractional_top_k_counts_ties_by_their_chance_of_selection():
    values = np.array([[3, 1, 2, 2, 2, 0], [5, 5, 5, 5, 5, 5]], dtype=float)
    membership, k_row = mu.fractional_top_k(values, np.ones_like(values, dtype=bool), 3)
    # row 0: 3 is in; two places left for three genes tied at 2 -> 2/3 each
    np.testing.assert_allclose(membership, [[1, 0, 2 / 3, 2 / 3, 2 / 3, 0], [0.5] * 6])
    np.testing.assert_array_equal(k_row, [3, 3])
    # the expected overlap of a constant prediction does not depend on the gene order
    observed = np.array([[9.0, 8, 7, 0, 0, 0]])
    constant = np.ones((1, 6))
    for order in (np.arange(6), np.arange(6)[::-1]):
        o, k = mu.fractional_top_k(observed[:, order], np.ones((1, 6), bool), 3)
        p, _ = mu.fractional_top_k(constant[:, order], np.ones((1, 6), bool), 3)
        assert (o * p).sum() / k[0] == pytest.approx(0.5)  # 3 genes x 1/2 chance / 3


def test_average_ranks_and_spearman_match_scipy():
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=(5, 40)), 1)  # many ties
    keep = rng.random((5, 40)) > 0.2
    ranks = mu.masked_average_ranks(values, keep)
    other = np.round(rng.normal(size=(5, 40)), 1)
    rho, undefined = mu.masked_rowwise_spearman(values, other, keep, np.zeros(5))
    for i in range(5):
        np.testing.assert_allclose(ranks[i, keep[i]], stats.rankdata(values[i, keep[i]]))
        assert rho[i] == pytest.approx(stats.spearmanr(values[i, keep[i]], other[i, keep[i]])[0], abs=1e-12)
    assert not undefined.any()


def test_spearman_ties_values_below_the_storage_resolution():
    a = np.array([[1.0, 1.0 + 1e-9, 2.0, 3.0]])
    b = np.array([[2.0, 1.0, 3.0, 4.0]])
    keep = np.ones((1, 4), dtype=bool)
    rho, _ = mu.masked_rowwise_spearman(a, b, keep, np.array([1e-6]))
    # a's first two values are one tie (ranks 1.5, 1.5, 3, 4) against b's ranks 2, 1, 3, 4
    assert rho[0] == pytest.approx(stats.pearsonr([1.5, 1.5, 3, 4], [2, 1, 3, 4])[0])
    constant, undefined = mu.masked_rowwise_spearman(np.array([[1.0, 1 + 1e-9, 1 - 1e-9, 1.0]]), b, keep,
                                                     np.array([1e-6]))
    assert constant[0] == 0.0 and undefined[0]


def test_cosine_and_signs():
    a = np.array([[1.0, -1, 0, 2], [0, 0, 0, 0]])
    b = np.array([[2.0, -1, 5, 1], [1, 2, 3, 4]])
    keep = np.array([[True, True, False, True], [True] * 4])
    cosine, undefined = mu.masked_rowwise_cosine(a, b, keep, atol=np.array([1e-6, 1e-6]))
    assert cosine[0] == pytest.approx(5 / sqrt(6 * 6))  # over genes 0, 1, 3: dot 2 + 1 + 2
    assert cosine[1] == 0.0 and undefined.tolist() == [False, True]
    np.testing.assert_array_equal(mu.signs(np.array([[1e-9, -2.0, 0.0, 3.0]]), np.array([1e-6])), [[0, -1, 0, 1]])


def test_pairwise_distances_match_brute_force_with_row_exclusions():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 30)), rng.normal(size=(5, 30))
    excluded = rng.random((6, 30)) < 0.15
    a[2] = 0.0  # a zero vector: cosine similarity 0 with everything
    for metric, function in (("l1", lambda x, y: np.abs(x - y).mean()),
                             ("euclidean", lambda x, y: np.sqrt(((x - y) ** 2).mean())),
                             ("cosine", lambda x, y: 1.0 if not x.any() else distance.cosine(x, y))):
        got = mu.pairwise_distances(a, b, excluded, metric)
        want = [[function(a[i, ~excluded[i]], b[j, ~excluded[i]]) for j in range(5)] for i in range(6)]
        np.testing.assert_allclose(got, want, atol=1e-12, err_msg=metric)


def test_diagonal_ranks_count_ties_one_half():
    distances = np.array([[1.0, 0.5, 1.0, 2.0],    # one closer, one tie -> 1.5
                          [3.0, 2.0, 1.0, 0.0],    # two closer -> 2
                          [1.0, 1.0, 1.0, 1.0],    # all tied -> 1.5
                          [5.0, 6.0, 7.0, 1.0]])   # none closer -> 0
    np.testing.assert_array_equal(mu.diagonal_ranks(distances), [1.5, 2.0, 1.5, 0.0])


def test_leave_one_out_means_skip_conditions_that_target_the_gene():
    values = np.array([[1.0, 10], [3, 20], [5, 90], [7, 7]])
    codes = np.array([0, 0, 0, 1])
    keep = np.array([[True, True], [True, True], [True, False], [True, True]])  # row 2 targets gene 1
    means, sizes = mu.leave_one_out_means(values, codes, keep)
    np.testing.assert_allclose(means[:3], [[4, 20], [3, 10], [2, 15]])  # gene 1 of rows 0, 1: row 2 left out
    assert np.isnan(means[3]).all() and sizes.tolist() == [3, 3, 3, 1]


def test_deg_weights_follow_mejia_transform():
    effect = np.array([[1.0, -1, 0, 0, 1, 0, 2, 9], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])
    keep = np.ones_like(effect, dtype=bool)
    keep[0, 7] = False  # a target gene: weight 0, and not part of the min-max scaling
    weights = mu.deg_weights(effect, keep, np.array([1e-6, 1e-6]))
    # |e| = 1 1 0 0 1 0 2 -> /2 -> squared .25 .25 0 0 .25 0 1 -> / 1.75
    np.testing.assert_allclose(weights[0], [1 / 7, 1 / 7, 0, 0, 1 / 7, 0, 4 / 7, 0])
    np.testing.assert_allclose(weights[1], 1 / 8)  # no spread: uniform


def test_label_match_mask_is_cell_evals_convention():
    mask = deltas.label_match_mask(["A", "A+B", "C"], ["A", "B", "C", "D"])
    np.testing.assert_array_equal(mask.astype(int), [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]])


# --------------------------------------------------------------------------------------------------
# Every component on a hand-made split
# --------------------------------------------------------------------------------------------------

GENES = list("ABCDEFGH")
K_PERTURBATIONS = ["A", "B", "C+D"]
K_OBSERVED = np.array([[-2, 2, -1, 0, 1, 0, 1, -1],
                       [1, -3, 0, 2, -1, 0, 2, 0],
                       [0, 1, -2, -2, 0, 2, -1, 1]], dtype=float)
K_PREDICTED = np.array([[5, 1, -1, 0, 2, 0, 1, 0],
                        [0, 9, 1, 1, -1, 1, 1, 1],
                        [1, 1, 7, 7, 1, 0, 1, -1]], dtype=float)
K2_PREDICTED = K_PREDICTED.copy()
K2_PREDICTED[0, 0] = K2_PREDICTED[1, 1] = K2_PREDICTED[2, 2] = K2_PREDICTED[2, 3] = -7.0  # targets only
M_PREDICTED = np.tile([0, 0, -1, 0, 0, 1, 1, 0], (3, 1)).astype(float)  # one profile for every condition
R_OBSERVED = np.array([[1, 1, 0, 0, -3, -1, 0, 2]], dtype=float)
R_PREDICTED = np.array([[1, 0, 0, 0, 0, -1, 1, 1]], dtype=float)
CONTEXTS = {"K": (K_OBSERVED, K_PREDICTED, K_PERTURBATIONS), "K2": (K_OBSERVED, K2_PREDICTED, K_PERTURBATIONS),
            "M": (K_OBSERVED, M_PREDICTED, K_PERTURBATIONS), "Z": (K_OBSERVED, np.zeros((3, 8)), K_PERTURBATIONS),
            "R": (R_OBSERVED, R_PREDICTED, ["E"])}

# Context K by hand. Kept genes: row 0 B..H, row 1 A C..H, row 2 A B E F G H.
#   differences: row 0 [-1 0 0 1 0 0 1], row 1 [-1 1 -1 0 1 -1 1], row 2 [1 0 1 -2 2 -2]
#   signs (pred vs obs): row 0 6 of 7 agree, row 1 3 of 7 (C E G), row 2 1 of 6 (B)
#   cosine: row 0 6/sqrt(7*8), row 1 5/sqrt(6*10), row 2 -1/sqrt(5*7)
# Comparisons between conditions use E F G H (targets of none): predicted deltas p0 [2 0 1 0],
# p1 [-1 1 1 1], p2 [1 0 1 -1] (= o0); observed o0 [1 0 1 -1], o1 [-1 0 2 0], o2 [0 2 -1 1].
#   L1 sums: p0 -> 2 4 7, p1 -> 5 3 5, p2 -> 0 4 7: ranks 0 0 2 -> discrimination 1 1 1/3; same order
#   for the cosine distance. mean_rank: o0 is closer to p2 (cosine 1) than to p0 -> rank 1 of 2;
#   o1 closest to p1 -> 0; o2 has cosine -0.18, 0.41, -0.47 with p0 p1 p2 -> rank 2 of 2.
#   Squared Euclidean: p0 -> 2 10 13, p1 -> 9 3 6, p2 -> 0 6 13: centroid accuracy 1, 1, 0.
HAND_K = {
    "mse_delta": [3 / 7, 6 / 7, 14 / 6], "mae_delta": [3 / 7, 6 / 7, 8 / 6],
    "rmse_delta": [sqrt(3 / 7), sqrt(6 / 7), sqrt(14 / 6)],
    "mse_top20_de": [3 / 7, 6 / 7, 14 / 6], "mse_top100_de": [3 / 7, 6 / 7, 14 / 6],  # fewer genes than k: all
    "cosine_delta": [6 / sqrt(56), 5 / sqrt(60), -1 / sqrt(35)],
    "direction_accuracy": [6 / 7, 3 / 7, 1 / 6], "direction_accuracy_top100_de": [6 / 7, 3 / 7, 1 / 6],
    "discrimination_l1": [1, 1, 1 / 3], "discrimination_cosine": [1, 1, 1 / 3], "mean_rank": [0.5, 0, 1],
    "centroid_accuracy": [1, 1, 0],
}
# Context M (one predicted profile [0 0 -1 0 0 1 1 0], on E..H [0 1 1 0]): L1 sums to o0 o1 o2 = 3 3 4,
# squared distances 3 3 6, so o0 and o1 tie: discrimination_l1 5/6 5/6 1/3 (mean (N+1)/2N = 2/3),
# centroid accuracy .75 .75 0 (mean 0.5); every prediction ties with every other: mean_rank 0.5.
HAND_M = {"discrimination_l1": [5 / 6, 5 / 6, 1 / 3], "centroid_accuracy": [0.75, 0.75, 0.0],
          "mean_rank": [0.5] * 3, "pearson_delta_perturbed_ref": [0.0] * 3}
# Context Z (the control predicted: zero delta): correlations are undefined and score 0.0; under the
# cosine distance every observation ties (discrimination (N+1)/2N = 2/3); direction agrees only where
# the observed delta is 0 (row 0: D F of 7, row 1: C F H of 7, row 2: A E of 6).
HAND_Z = {"pearson_delta": [0.0] * 3, "spearman_delta": [0.0] * 3, "cosine_delta": [0.0] * 3,
          "pearson_top20_de": [0.0] * 3, "pearson_top100_de": [0.0] * 3, "pearson_delta_perturbed_ref": [0.0] * 3,
          "discrimination_cosine": [2 / 3] * 3, "mean_rank": [0.5] * 3,
          "direction_accuracy": [2 / 7, 3 / 7, 2 / 6], "discrimination_l1": [5 / 6, 5 / 6, 1 / 3]}
# Context R (one test condition): nothing to rank; the weighted metrics use the control as reference:
# e = observed delta on A B C D F G H = 1 1 0 0 -1 0 2 -> weights 1/7 1/7 0 0 1/7 0 4/7; squared errors
# 0 1 0 0 0 1 1 -> wmse 5/7; weighted mean of e 9/7, weighted variance 364/343 -> wr2 1 - 245/364.
HAND_R = {"discrimination_l1": [1.0], "discrimination_cosine": [1.0], "mean_rank": [0.5],
          "centroid_accuracy": [0.5], "pearson_delta_perturbed_ref": [0.0], "mse_delta": [3 / 7],
          "wmse_delta": [5 / 7], "wr2_delta": [119 / 364]}


def reference_scores(truth, control, guess, perturbations, cell_types, genes) -> pd.DataFrame:
    """Every metric id per row, written from the definitions, row by row, with scipy and scikit-learn."""
    from sklearn.metrics import r2_score

    truth, control, guess = (np.asarray(x, dtype=np.float64) for x in (truth, control, guess))
    n, g = truth.shape
    eps = 4 * float(np.finfo(np.float32).eps)
    targets = [set(p.split("+")) for p in perturbations]
    kept = np.array([[gene not in t for gene in genes] for t in targets])
    obs_d, pred_d = truth - control, guess - control
    res = eps * np.max(np.abs(np.stack([truth, control, guess])), axis=(0, 2))
    out = {m: np.zeros(n) for ids in METRICS.values() for m in ids}

    def pearson(x, y, tol):
        if len(x) < 2 or x.std() <= tol or y.std() <= tol:
            return 0.0
        return stats.pearsonr(x, y)[0]

    def top(values, k):  # indices of the k largest, ties to the earlier gene
        return np.argsort(-values, kind="stable")[:k]

    def expected_top(values, k):
        k = min(k, len(values))
        threshold = np.sort(values)[::-1][k - 1]
        above, tied = values > threshold, values == threshold
        return np.where(above, 1.0, 0.0) + np.where(tied, (k - above.sum()) / tied.sum(), 0.0), k

    for i in range(n):
        o, d, tol = obs_d[i, kept[i]], pred_d[i, kept[i]], res[i]
        diff = d - o
        out["mse_delta"][i], out["mae_delta"][i] = (diff ** 2).mean(), np.abs(diff).mean()
        out["rmse_delta"][i] = np.sqrt((diff ** 2).mean())
        out["pearson_delta"][i] = pearson(d, o, tol)
        for k in (20, 100):
            chosen = top(np.abs(o), k)
            out[f"mse_top{k}_de"][i] = (diff[chosen] ** 2).mean()
            out[f"pearson_top{k}_de"][i] = pearson(d[chosen], o[chosen], tol)
        snapped_d, snapped_o = np.round(d / tol), np.round(o / tol)
        constant = snapped_d.min() == snapped_d.max() or snapped_o.min() == snapped_o.max()
        out["spearman_delta"][i] = 0.0 if constant else stats.spearmanr(snapped_d, snapped_o)[0]
        zero = np.sqrt((d ** 2).mean()) <= tol or np.sqrt((o ** 2).mean()) <= tol
        out["cosine_delta"][i] = 0.0 if zero else 1 - distance.cosine(d, o)
        for k in (20, 100, 200):
            mo, kk = expected_top(np.abs(o), k)
            mp, _ = expected_top(np.abs(d), k)
            out[f"overlap_top{k}_de"][i] = (mo * mp).sum() / kk
        same = np.where(np.abs(d) <= tol, 0, np.sign(d)) == np.where(np.abs(o) <= tol, 0, np.sign(o))
        out["direction_accuracy"][i] = same.mean()
        out["direction_accuracy_top100_de"][i] = same[top(np.abs(o), 100)].mean()

    contexts = pd.Series(cell_types)
    for _, members in contexts.groupby(contexts).groups.items():
        rows = np.asarray(members)
        size = len(rows)
        if size == 1:
            i = rows[0]
            out["discrimination_l1"][i] = out["discrimination_cosine"][i] = 1.0
            out["mean_rank"][i] = out["centroid_accuracy"][i] = 0.5
            out["pearson_delta_perturbed_ref"][i] = 0.0
            reference = control[i]
        used = kept[rows].all(axis=0)

        def cos_distance(x, y, tx, ty):
            if np.sqrt((x ** 2).mean()) <= tx or np.sqrt((y ** 2).mean()) <= ty:
                return 1.0
            return distance.cosine(x, y)

        def rank(row_of_distances, own):
            tol = 1e-9 * np.abs(row_of_distances).max()
            others = np.delete(row_of_distances, own)
            own_distance = row_of_distances[own]
            return (others < own_distance - tol).sum() + 0.5 * (np.abs(others - own_distance) <= tol).sum()

        for a, i in enumerate(rows):
            if size > 1:
                l1 = [np.abs(pred_d[i, used] - obs_d[q, used]).mean() for q in rows]
                cos = [cos_distance(pred_d[i, used], obs_d[q, used], res[i], res[q]) for q in rows]
                back = [cos_distance(obs_d[i, used], pred_d[q, used], res[i], res[q]) for q in rows]
                euclid = [np.sqrt(((pred_d[i, used] - obs_d[q, used]) ** 2).mean()) for q in rows]
                out["discrimination_l1"][i] = 1 - rank(np.array(l1), a) / size
                out["discrimination_cosine"][i] = 1 - rank(np.array(cos), a) / size
                out["mean_rank"][i] = rank(np.array(back), a) / (size - 1)
                out["centroid_accuracy"][i] = 1 - rank(np.array(euclid), a) / (size - 1)
                others = [q for q in rows if q != i]
                centroid = {}
                for name, matrix in (("truth", truth), ("guess", guess)):
                    centroid[name] = np.array([
                        np.mean([matrix[q, j] for q in others if kept[q, j]]) if any(kept[q, j] for q in others)
                        else np.mean([matrix[q, j] for q in others]) for j in range(g)])
                x = (guess[i] - centroid["guess"])[kept[i]]
                y = (truth[i] - centroid["truth"])[kept[i]]
                out["pearson_delta_perturbed_ref"][i] = pearson(x, y, res[i])
                reference = centroid["truth"]
            effect = (truth[i] - reference)[kept[i]]
            size_ = np.abs(effect)
            if size_.max() - size_.min() <= res[i]:
                weights = np.full(len(effect), 1 / len(effect))
            else:
                weights = ((size_ - size_.min()) / (size_.max() - size_.min())) ** 2
                weights /= weights.sum()
            error = ((guess[i] - truth[i])[kept[i]]) ** 2
            out["wmse_delta"][i] = (weights * error).sum()
            out["wr2_delta"][i] = r2_score(effect, (guess[i] - reference)[kept[i]], sample_weight=weights)
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hand")
    observed = np.vstack([CONTEXTS[c][0] for c in CONTEXTS])
    predicted = np.vstack([CONTEXTS[c][1] for c in CONTEXTS])
    perturbations = [p for c in CONTEXTS for p in CONTEXTS[c][2]]
    cell_types = [c for c in CONTEXTS for _ in CONTEXTS[c][2]]
    control = np.full(observed.shape, 4.0)
    paths = write_split(directory, control, observed, predicted, perturbations, cell_types, GENES)
    values = table(score_all(*paths, directory))
    rows = {c: [i for i, t in enumerate(cell_types) if t == c] for c in CONTEXTS}
    reference = reference_scores(control + observed, control, control + predicted, perturbations, cell_types, GENES)
    return values, rows, reference


@pytest.mark.parametrize("context, expected", [("K", HAND_K), ("M", HAND_M), ("Z", HAND_Z), ("R", HAND_R)])
def test_hand_values(hand, context, expected):
    values, rows, _ = hand
    for metric_id, want in expected.items():
        np.testing.assert_allclose(values[metric_id].iloc[rows[context]], want, atol=1e-9,
                                   err_msg=f"{context} {metric_id}")


def test_overlaps_are_left_out_when_no_condition_has_more_genes_than_k(hand):
    """8 genes: every top-k overlap would be 1 whatever the prediction (no_change included)."""
    values, _, reference = hand
    assert set(reference.columns) - set(values.columns) == {"overlap_top20_de", "overlap_top100_de", "overlap_top200_de"}
    assert (reference[["overlap_top20_de", "overlap_top100_de", "overlap_top200_de"]] == 1).all().all()


def test_hand_split_matches_the_reference(hand):
    values, _, reference = hand
    for metric_id in reference.columns.intersection(values.columns):
        np.testing.assert_allclose(values[metric_id].to_numpy(), reference[metric_id].to_numpy(), atol=1e-9,
                                   err_msg=metric_id)


def test_target_genes_are_excluded(hand):
    """K2 predicts what K predicts except at each row's target genes: every value is K's."""
    values, rows, _ = hand
    pd.testing.assert_frame_equal(values.iloc[rows["K2"]].reset_index(drop=True),
                                  values.iloc[rows["K"]].reset_index(drop=True))


def test_mode_collapse_scores_chance_on_rank_metrics(hand):
    values, rows, _ = hand
    collapsed = values.iloc[rows["M"]]
    assert collapsed["mean_rank"].mean() == 0.5
    assert collapsed["discrimination_l1"].mean() == pytest.approx(2 / 3)  # (N + 1) / 2N
    assert collapsed["discrimination_cosine"].mean() == pytest.approx(2 / 3)
    assert collapsed["centroid_accuracy"].mean() == pytest.approx(0.5)


def test_scores_are_finite_and_within_declared_ranges(hand):
    import yaml

    values = hand[0]
    assert np.isfinite(values.to_numpy()).all()
    for component, ids in METRICS.items():
        config = yaml.safe_load(open(ROOT / "src" / "metrics" / component / "config.vsh.yaml"))
        declared = {m["name"]: m for m in config["info"]["metrics"]}
        assert list(declared) == ids
        for metric_id in (i for i in ids if i in values.columns):
            low, high = float(declared[metric_id]["min"]), float(declared[metric_id]["max"])
            assert values[metric_id].between(low, high).all(), metric_id


# --------------------------------------------------------------------------------------------------
# Every component against the reference on a random split
# --------------------------------------------------------------------------------------------------

def test_random_split_matches_the_reference(tmp_path):
    rng = np.random.default_rng(7)
    n_genes = 260  # more than 200, so that every top-k is a real selection
    genes = [f"g{j:03d}" for j in range(n_genes)]
    cell_types = ["T"] * 7 + ["U"] * 5 + ["V"]
    perturbations = ["g000", "g001+g002", "g003", "g004", "NOTAGENE", "g005+g006", "g007",
                     "g000", "g010", "g011", "g012+g013", "g014", "g020"]
    control = rng.gamma(2.0, 1.0, size=(1, n_genes)).repeat(len(perturbations), axis=0)
    control[7:12] += 0.3  # another control profile for context U
    effects = rng.normal(0, 0.5, size=(len(perturbations), n_genes)) * (rng.random((len(perturbations), n_genes)) < 0.3)
    effects[[0, 7], 0] = -2.0  # knock-downs of the targets
    observed = np.round(effects + rng.normal(0, 0.05, size=effects.shape), 2)  # ties
    predicted = np.round(0.6 * observed + rng.normal(0, 0.2, size=effects.shape), 1)  # more ties
    predicted[3] = 0.0   # the control: undefined correlations
    predicted[4] = 0.25  # a constant delta
    paths = write_split(tmp_path, control, observed, predicted, perturbations, cell_types, genes)
    values = table(score_all(*paths, tmp_path))
    solution, prediction = ad.read_h5ad(paths[0]), ad.read_h5ad(paths[1])
    reference = reference_scores(solution.X, solution.layers["control"], prediction.X, perturbations, cell_types, genes)
    for metric_id in reference.columns:
        np.testing.assert_allclose(values[metric_id].to_numpy(), reference[metric_id].to_numpy(), atol=1e-9,
                                   err_msg=metric_id)
    # the selections were real: top 20 differs from all genes, and the top-k values differ by k
    assert not np.allclose(values["mse_top20_de"], values["mse_delta"])
    assert not np.allclose(values["overlap_top20_de"], values["overlap_top200_de"])


# --------------------------------------------------------------------------------------------------
# Bad input, simulated data
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("problem", ["nan", "inf"])
def test_nonfinite_predictions_are_refused_in_one_line(tmp_path, problem):
    predicted = K_PREDICTED.copy()
    predicted[1, 4] = np.nan if problem == "nan" else np.inf
    solution, prediction = write_split(tmp_path, np.full((3, 8), 4.0), K_OBSERVED, predicted, K_PERTURBATIONS,
                                       ["K"] * 3, GENES, name=f"bad_{problem}")
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = pool.map(lambda c: score(c, solution, prediction, tmp_path / f"{c}.h5ad"), METRICS)
        results = dict(zip(METRICS, runs))
    word = "1 NaN values" if problem == "nan" else "1 infinite values"
    for component, (code, _, log) in results.items():
        errors = [line for line in log.splitlines() if line.startswith("[error]")]
        assert code == 1 and "Traceback" not in log, (component, log)
        assert len(errors) == 1 and f"bad_{problem}.h5ad" in errors[0] and word in errors[0], (component, log)
        assert not (tmp_path / f"{component}.h5ad").exists()


def test_constant_prediction_has_mean_rank_one_half_on_simulated_data(test_resources, tmp_path):
    split = test_resources / "unseen_perturbation"
    solution = ad.read_h5ad(split / "solution.h5ad")
    profile = solution.layers["control"].mean(axis=0) + 0.1
    constant = ad.AnnData(X=np.tile(profile, (solution.n_obs, 1)).astype(np.float32),
                          obs=pd.DataFrame(index=solution.obs_names.copy()),
                          var=pd.DataFrame(index=solution.var_names.copy()),
                          uns={"dataset_id": solution.uns["dataset_id"], "task_id": solution.uns["task_id"],
                               "method_id": "constant"})
    constant.write_h5ad(tmp_path / "constant.h5ad")
    code, scored, log = score("discrimination", split / "solution.h5ad", tmp_path / "constant.h5ad",
                              tmp_path / "s.h5ad")
    assert code == 0, log
    assert scored.obs["mean_rank"].mean() == pytest.approx(0.5, abs=1e-12)
    sizes = scored.obs.assign(context=solution.obs["cell_type"].to_numpy()).groupby("context").size()
    chance = np.mean([(n + 1) / (2 * n) for n in sizes for _ in range(n)])
    assert scored.obs["discrimination_l1"].mean() == pytest.approx(chance)
    # the training mean is one profile per context as well
    code, scored, log = score("discrimination", split / "solution.h5ad", split / "prediction.h5ad", tmp_path / "t.h5ad")
    assert scored.obs["mean_rank"].mean() == pytest.approx(0.5, abs=1e-12)


def test_cell_evals_target_convention_favours_the_true_match():
    """Why the components leave out the targets of all of a context's conditions: with each row's own
    targets left out (and the others' kept), a constant prediction beats chance on discrimination_l1.
    By hand: six knockdowns, each lowering its own target by 3 and nothing else (plus small noise); the
    prediction is no change. Distances from prediction i to observed row j leave out i's target only, so
    row j's knocked-down target counts (3 more) for every j != i and never for j = i: every row's own
    observation is the nearest, discrimination 1.0 where chance is (n + 1) / (2 n) = 7/12."""
    n, genes = 6, 20
    rng = np.random.default_rng(0)
    observed = rng.normal(0.0, 0.01, (n, genes))
    observed[np.arange(n), np.arange(n)] -= 3.0
    predicted = np.zeros((n, genes))
    own_targets = np.zeros((n, genes), dtype=bool)
    own_targets[np.arange(n), np.arange(n)] = True
    distances = mu.pairwise_distances(predicted, observed, own_targets, "l1")
    values = 1 - mu.diagonal_ranks(distances) / n
    np.testing.assert_allclose(values, 1.0)
    assert (n + 1) / (2 * n) == pytest.approx(7 / 12)
    # leaving out the targets of every condition of the context (the components' convention) removes it
    context = np.repeat(own_targets.any(axis=0, keepdims=True), n, axis=0)
    fair = 1 - mu.diagonal_ranks(mu.pairwise_distances(predicted, observed, context, "l1")) / n
    assert fair.mean() < 0.9


# --------------------------------------------------------------------------------------------------
# Agreement with cell-eval on real data
# --------------------------------------------------------------------------------------------------

def _fold_tests_a_measured_target(directory, fold: int, measured: set) -> bool:
    out = directory / f"probe_{fold}"
    args = ["--input", directory / "common.h5ad", "--seed", 0, "--n_folds", 3, "--fold", fold,
            "--output_train", out / "train.h5ad",
            "--output_test", out / "test.h5ad", "--output_solution", out / "solution.h5ad"]
    with open(directory / "probe.log", "a") as log:
        if run_component(ROOT / "src" / "tasks" / "unseen_perturbation", [str(a) for a in args],
                         stdout=log, stderr=log).exit_code != 0:
            return False
    targets = {t for p in ad.read_h5ad(out / "test.h5ad").obs["perturbation"].astype(str) for t in p.split("+")}
    return bool(targets & measured)


@pytest.fixture(scope="module")
def norman19_split(tmp_path_factory):
    from realdata import norman19_common  # skips when ../shared/data is absent

    directory = tmp_path_factory.mktemp("norman19_metrics")
    common = norman19_common(seed=0)
    common.write_h5ad(directory / "common.h5ad")
    # the fold that tests the one target gene the 500-gene subset measures: cell-eval's target convention
    # and the label-match exclusion only differ there
    measured = set(common.var_names)
    fold = next(f for f in range(3) if _fold_tests_a_measured_target(directory, f, measured))
    for component, args in (
            ("tasks/unseen_perturbation", ["--input", directory / "common.h5ad", "--seed", 0, "--n_folds", 3,
                                           "--fold", fold,
                                           "--output_train", directory / "train.h5ad", "--output_test",
                                           directory / "test.h5ad", "--output_solution", directory / "solution.h5ad"]),
            ("control_methods/train_mean", ["--input_train", directory / "train.h5ad", "--input_test",
                                            directory / "test.h5ad", "--input_solution", directory / "solution.h5ad",
                                            "--output", directory / "train_mean.h5ad"])):
        with open(directory / "run.log", "a") as log:
            result = run_component(ROOT / "src" / component, [str(a) for a in args], stdout=log, stderr=log)
        assert result.exit_code == 0, (directory / "run.log").read_text()
    return directory


def test_agreement_with_cell_eval_on_norman19(norman19_split):
    pytest.importorskip("cell_eval", reason="cell-eval is a test extra (pip install cell-eval)")
    from importlib.metadata import version

    from cell_eval._types import PerturbationAnndataPair
    from cell_eval.metrics import discrimination_score, mae_delta, mse_delta, pearson_delta

    solution = ad.read_h5ad(norman19_split / "solution.h5ad")
    prediction = ad.read_h5ad(norman19_split / "train_mean.h5ad")
    assert solution.obs["cell_type"].nunique() == 1 and solution.n_obs >= 5  # one context, as cell-eval assumes
    perturbations = solution.obs["perturbation"].astype(str).to_numpy()
    control = solution.layers["control"]

    # cell-eval's inputs: one "cell" per condition plus the control profile as the control group
    def cells(matrix):
        X = np.vstack([control[:1], matrix]).astype(np.float32)
        obs = pd.DataFrame({"target": ["control", *perturbations]}, index=[f"r{i}" for i in range(len(X))])
        return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=solution.var_names.copy()))

    pair = PerturbationAnndataPair(real=cells(solution.X), pred=cells(prediction.X), pert_col="target",
                                   control_pert="control")
    theirs = {"pearson_delta": pearson_delta(pair), "mse_delta": mse_delta(pair), "mae_delta": mae_delta(pair),
              "discrimination_l1": discrimination_score(pair, metric="l1")}

    # ours, with cell-eval's conventions: no target exclusion for the delta statistics, and for
    # discrimination the gene named like the perturbation left out of that row's distances
    observed = solution.X.astype(np.float64) - control
    predicted = prediction.X.astype(np.float64) - control
    everything = np.ones(observed.shape, dtype=bool)
    errors = deltas.masked_errors(predicted, observed, everything)
    pearson, undefined = deltas.masked_rowwise_pearson(predicted, observed, everything)
    excluded = deltas.label_match_mask(perturbations, solution.var_names)
    distances = mu.pairwise_distances(predicted, observed, excluded, "l1")
    ours = {"pearson_delta": pearson, "mse_delta": errors["mse"], "mae_delta": errors["mae"],
            "discrimination_l1": 1 - mu.diagonal_ranks(distances) / len(observed)}
    assert not undefined.any() and excluded.any()  # some single targets are measured genes
    for metric_id, values in ours.items():
        want = np.array([theirs[metric_id][p] for p in perturbations])
        np.testing.assert_allclose(values, want, atol=1e-6, rtol=0, err_msg=metric_id)
    print(f"\ncell-eval {version('cell-eval')} agreement on {len(perturbations)} Norman 2019 conditions: "
          + ", ".join(f"{m} max |diff| {np.abs(v - np.array([theirs[m][p] for p in perturbations])).max():.2e}"
                      for m, v in ours.items()))
