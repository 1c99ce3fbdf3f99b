"""The baseline methods and controls: train_median, random_perturbation, additive, linear_baseline,
knn_perturbation (and the `--input_prior` variant with scripts/make_prior.py).

- every component runs through `perturbcast run` (the runner validates the output against the API) on a
  simulated split (simulated_grn loader -> unseen_perturbation task) and on real data (Norman 2019 from
  ../shared/data -> unseen_perturbation task);
- linear_baseline equals an independent re-derivation on a small hand-made case: the bilinear ridge
  coefficients come from an iterative least-squares solve (scipy lsqr) of the objective whose exact
  minimiser the closed form is, the gene PCA from numpy's SVD; targets absent from the genes fall back;
- on simulated data linear_baseline beats the training mean on Pearson delta, random_perturbation does not;
- unusable inputs (a prior sharing no gene, a prior without embedding, no perturbations) fail in one line.
"""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from perturbcast.runner import run_component

from conftest import ROOT

COMPONENTS = {
    "train_median": "src/control_methods/train_median",
    "random_perturbation": "src/control_methods/random_perturbation",
    "additive": "src/methods/additive",
    "linear_baseline": "src/methods/linear_baseline",
    "knn_perturbation": "src/methods/knn_perturbation",
}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

def run(component: str, args: dict, log: Path):
    """Run a component through the viash-compatible runner; returns (exit code, its stderr text)."""
    argv = [x for key, value in args.items() for x in (f"--{key}", str(value))]
    with open(log, "w") as handle:
        result = run_component(ROOT / component, argv, stdout=handle, stderr=handle)
    return result.exit_code, log.read_text()


def run_all(jobs: dict) -> dict:
    """Run several components at once (they are subprocesses): name -> (component, args, log)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, *job) for name, job in jobs.items()}
    return {name: future.result() for name, future in futures.items()}


def method_args(split: Path, name: str, output: Path, **extra) -> dict:
    args = {"input_train": split / "train.h5ad", "input_test": split / "test.h5ad"}
    if COMPONENTS[name].startswith("src/control_methods"):
        args["input_solution"] = split / "solution.h5ad"
    return {**args, **extra, "output": output}


def make_split(common, out: Path):
    """Write `common` and run the unseen_perturbation task on it."""
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(common, (str, Path)):
        common.write_h5ad(out / "common.h5ad")
        common = out / "common.h5ad"
    code, err = run("src/tasks/unseen_perturbation",
                    {"input": common, "output_train": out / "train.h5ad", "output_test": out / "test.h5ad",
                     "output_solution": out / "solution.h5ad", "seed": 0}, out / "task.log")
    assert code == 0, err
    return out


def pearson_delta(solution, X) -> np.ndarray:
    """Per test condition: Pearson over the non-target genes of predicted vs observed delta to control."""
    position = {g: j for j, g in enumerate(solution.var_names)}
    observed = np.asarray(solution.X) - solution.layers["control"]
    predicted = np.asarray(X, dtype=np.float64) - solution.layers["control"]
    values = []
    for i, perturbation in enumerate(solution.obs["perturbation"].astype(str)):
        keep = np.ones(solution.n_vars, dtype=bool)
        keep[[position[t] for t in perturbation.split("+") if t in position]] = False
        o, p = observed[i, keep], predicted[i, keep]
        values.append(0.0 if o.std() == 0 or p.std() == 0 else float(np.corrcoef(o, p)[0, 1]))
    return np.array(values)


def train_mean_prediction(train, test) -> np.ndarray:
    """The training mean (references.md): mean of the training perturbation profiles of the context."""
    perturbed = ~train.obs["is_control"].to_numpy().astype(bool)
    context = train.obs["cell_type"].astype(str) + "|" + train.obs["condition"].astype(str)
    X = np.asarray(train.X.toarray() if sp.issparse(train.X) else train.X, dtype=np.float64)
    means = {c: X[perturbed & (context == c).to_numpy()].mean(axis=0) for c in context[perturbed].unique()}
    return np.vstack([means[f"{ct}|{cond}"] for ct, cond in zip(test.obs["cell_type"], test.obs["condition"])])


def replicate_means(train) -> tuple[pd.DataFrame, np.ndarray]:
    """Replicate-averaged training perturbation profiles (one row per perturbation x context)."""
    obs = train.obs[~train.obs["is_control"].to_numpy().astype(bool)]
    X = np.asarray(train[obs.index].X, dtype=np.float64)
    keys = obs["perturbation"].astype(str) + "|" + obs["cell_type"].astype(str) + "|" + obs["condition"].astype(str)
    frame = pd.DataFrame(X, index=keys.to_numpy()).groupby(level=0, sort=True).mean()
    info = pd.DataFrame([k.split("|") for k in frame.index], columns=["perturbation", "cell_type", "condition"])
    return info, frame.to_numpy()


def assert_prediction(path: Path, split: Path, method_id: str):
    prediction = ad.read_h5ad(path)
    test = ad.read_h5ad(split / "test.h5ad", backed="r")
    train = ad.read_h5ad(split / "train.h5ad", backed="r")
    assert list(prediction.obs_names) == list(test.obs_names)
    assert list(prediction.var_names) == list(train.var_names)
    assert prediction.uns["method_id"] == method_id
    assert prediction.uns["task_id"] == "unseen_perturbation"
    assert np.isfinite(np.asarray(prediction.X)).all()
    return prediction


def assert_one_line_failure(code, err, output: Path, *fragments):
    assert code == 1, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("[error]")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not output.exists()


# --------------------------------------------------------------------------------------------------
# Simulated and real splits, every component run once
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """simulated_grn (default size: 200 genes, 40 singles, 20 doubles, 2 cell types) -> unseen_perturbation,
    every component, plus linear_baseline with a prior made by scripts/make_prior.py."""
    out = tmp_path_factory.mktemp("simulated")
    # High-signal variant (every guide effective, no escapees or batch effects, cell types wired alike, 100
    # cells): the default simulation is as hard
    # as the real subsets (benchmarks/dataset_statistics.py), where linear_baseline need not beat train_mean;
    # these tests check that it learns where there is signal to learn.
    code, err = run("src/datasets/simulated_grn", {"output": out / "common.h5ad", "seed": 0, "share_ineffective": 0.0,
                                                   "escape_rate": 0.0, "batch_effect": 0.0, "rewiring": 0.0,
                                                   "cells_per_perturbation": 100}, out / "loader.log")
    assert code == 0, err
    make_split(out / "common.h5ad", out)
    # the prior: the same simulated network, but without any of the test perturbations
    completed = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_prior.py"), "--input", out / "common.h5ad",
                                "--exclude_test", out / "test.h5ad", "--output", out / "prior.h5ad",
                                "--n_components", "8"], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    jobs = {name: (component, method_args(out, name, out / f"{name}.h5ad"), out / f"{name}.log")
            for name, component in COMPONENTS.items()}
    jobs["linear_prior"] = (COMPONENTS["linear_baseline"],
                            method_args(out, "linear_baseline", out / "linear_prior.h5ad", input_prior=out / "prior.h5ad"),
                            out / "linear_prior.log")
    jobs["linear_pooled"] = (COMPONENTS["linear_baseline"],
                             method_args(out, "linear_baseline", out / "linear_pooled.h5ad", min_context_perturbations=1000),
                             out / "linear_pooled.log")
    return out, run_all(jobs)


@pytest.fixture(scope="module")
def norman19(tmp_path_factory):
    """Norman 2019 K562 CRISPRa (PerturBench devel subset, ../shared/data) -> unseen_perturbation, every component."""
    from realdata import norman19_common  # skips when ../shared/data is absent

    common = norman19_common(seed=0)
    out = make_split(common, tmp_path_factory.mktemp("norman19"))
    jobs = {name: (component, method_args(out, name, out / f"{name}.h5ad"), out / f"{name}.log")
            for name, component in COMPONENTS.items()}
    return out, run_all(jobs)


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_runs_on_simulated_split(simulated, name):
    out, results = simulated
    code, err = results[name]
    assert code == 0, err
    assert "Traceback" not in err
    assert_prediction(out / f"{name}.h5ad", out, name)


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_runs_on_real_norman19(norman19, name):
    out, results = norman19
    code, err = results[name]
    assert code == 0, err
    assert_prediction(out / f"{name}.h5ad", out, name)


def test_linear_baseline_counts_absent_targets_on_norman19(norman19):
    """Most Norman targets are not among the devel file's 500 genes: those rows get b + baseline (the
    training mean), and the log says how many."""
    out, results = norman19
    test = ad.read_h5ad(out / "test.h5ad")
    train = ad.read_h5ad(out / "train.h5ad")
    genes = set(train.var_names)
    absent = sum(1 for p in test.obs["perturbation"] if not any(t in genes for t in p.split("+")))
    assert absent > 0
    assert f"{absent} have no target with an embedding" in results["linear_baseline"][1]
    prediction = ad.read_h5ad(out / "linear_baseline.h5ad")
    mean = train_mean_prediction(train, test)
    for i, p in enumerate(test.obs["perturbation"]):
        if not any(t in genes for t in p.split("+")):
            np.testing.assert_allclose(prediction.X[i], mean[i], rtol=1e-5, atol=1e-5)


def test_linear_beats_train_mean_and_random_does_not(simulated):
    out, results = simulated
    solution = ad.read_h5ad(out / "solution.h5ad")
    train = ad.read_h5ad(out / "train.h5ad")
    test = ad.read_h5ad(out / "test.h5ad")
    mean = pearson_delta(solution, train_mean_prediction(train, test)).mean()
    linear = pearson_delta(solution, ad.read_h5ad(out / "linear_baseline.h5ad").X).mean()
    random = pearson_delta(solution, ad.read_h5ad(out / "random_perturbation.h5ad").X).mean()
    linear_prior = pearson_delta(solution, ad.read_h5ad(out / "linear_prior.h5ad").X).mean()
    assert linear > mean + 0.02, (linear, mean)
    assert random < mean, (random, mean)
    assert linear_prior > mean, (linear_prior, mean)


def test_linear_baseline_pools_contexts_with_few_perturbations(simulated):
    """Both simulated cell types have fewer than 1000 training perturbations: one model pooled over both,
    each condition centred on its own context's mean delta; it still beats the training mean."""
    out, results = simulated
    code, err = results["linear_pooled"]
    assert code == 0, err
    assert err.count("using the model pooled over all contexts") == 2
    assert "model 'pooled'" in err
    solution = ad.read_h5ad(out / "solution.h5ad")
    mean = pearson_delta(solution, train_mean_prediction(ad.read_h5ad(out / "train.h5ad"), ad.read_h5ad(out / "test.h5ad")))
    pooled = pearson_delta(solution, ad.read_h5ad(out / "linear_pooled.h5ad").X)
    assert pooled.mean() > mean.mean()


def test_train_median_and_random_perturbation_definitions(simulated):
    out, _ = simulated
    train = ad.read_h5ad(out / "train.h5ad")
    test = ad.read_h5ad(out / "test.h5ad")
    info, profiles = replicate_means(train)
    median = ad.read_h5ad(out / "train_median.h5ad").X
    random = ad.read_h5ad(out / "random_perturbation.h5ad").X
    for i, (ct, cond) in enumerate(zip(test.obs["cell_type"], test.obs["condition"])):
        same = ((info["cell_type"] == ct) & (info["condition"] == cond)).to_numpy()
        np.testing.assert_allclose(median[i], np.median(profiles[same], axis=0), rtol=1e-5, atol=1e-6)
        # a random pick is exactly one replicate-averaged training profile of the same context
        distance = np.abs(profiles[same] - random[i]).max(axis=1)
        assert distance.min() < 1e-5


def test_make_prior_writes_the_prior_format(simulated):
    out, results = simulated
    prior = ad.read_h5ad(out / "prior.h5ad")
    common = ad.read_h5ad(out / "common.h5ad", backed="r")
    assert list(prior.var_names) == list(common.var_names)
    assert prior.varm["gene_embedding"].shape == (common.n_vars, 8)
    assert np.isfinite(prior.varm["gene_embedding"]).all()
    assert "prior with 200 genes x 8 dimensions" in results["linear_prior"][1]


# --------------------------------------------------------------------------------------------------
# A small hand-made case: exact checks against independent re-derivations
# --------------------------------------------------------------------------------------------------

N_GENES = 30
GENES = [f"G{i:02d}" for i in range(N_GENES)]
TRAIN_PERTURBATIONS = [f"G{i:02d}" for i in range(14)] + ["G00+G01", "G02+G05", "G03+G11", "ABSENT1",
                                                          "ABSENT2+G04"]
# unseen singles, a combination of unseen singles, targets absent from the genes, combinations of seen
# singles (G09+G10, G06+G07) and of a seen and an unseen single (G08+G29)
TEST_PERTURBATIONS = ["G20", "G21", "G20+G22", "NOTAGENE", "G23+NOTAGENE", "G09+G10", "G06+G07", "G08+G29"]


def small_case(directory: Path, seed=0):
    """train.h5ad / test.h5ad of one context: 3 control and 2 x 19 perturbation replicate profiles."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(N_GENES, 4))
    base = rng.normal(2.0, 0.5, size=N_GENES)
    rows, profiles = [], []
    for replicate in ("r1", "r2", "r3"):
        rows.append(("control", replicate))
        profiles.append(base + rng.normal(0, 0.05, N_GENES))
    for perturbation in TRAIN_PERTURBATIONS:
        effect = np.zeros(N_GENES)
        for target in perturbation.split("+"):
            if target in GENES:
                j = GENES.index(target)
                effect += loadings @ loadings[j] * 0.3
                effect[j] -= 1.0
            else:
                effect += rng.normal(0, 0.3, N_GENES)
        for replicate in ("r1", "r2"):
            rows.append((perturbation, replicate))
            profiles.append(base + effect + rng.normal(0, 0.05, N_GENES))
    obs = pd.DataFrame({
        "perturbation": [p for p, _ in rows],
        "is_control": [p == "control" for p, _ in rows],
        "perturbation_type": "knockdown",
        "n_targets": np.array([0 if p == "control" else len(p.split("+")) for p, _ in rows], dtype=np.int64),
        "cell_type": "K562", "condition": "none",
        "replicate": [r for _, r in rows],
        "n_cells": np.full(len(rows), 50, dtype=np.int64),
    }, index=[f"{p}|{r}" for p, r in rows])
    var = pd.DataFrame({"highly_variable_rank": np.arange(N_GENES, dtype=np.int64),
                        "mean_expression": base.astype(np.float64)}, index=pd.Index(GENES, dtype=object))
    uns = {"dataset_id": "small_case", "task_id": "unseen_perturbation", "split_seed": 0, "normalization_id": "log1p"}
    train = ad.AnnData(X=np.vstack(profiles).astype(np.float32), obs=obs, var=var, uns=dict(uns))
    test_obs = pd.DataFrame({
        "perturbation": TEST_PERTURBATIONS, "perturbation_type": "knockdown",
        "n_targets": np.array([len(p.split("+")) for p in TEST_PERTURBATIONS], dtype=np.int64),
        "cell_type": "K562", "condition": "none",
        "stratum": ["single" if "+" not in p else "combo_seen0" for p in TEST_PERTURBATIONS],
        "target_expression": ["+".join("nan" for _ in p.split("+")) for p in TEST_PERTURBATIONS],
    }, index=[f"{p}|K562|none" for p in TEST_PERTURBATIONS])
    test = ad.AnnData(X=sp.csr_matrix((len(TEST_PERTURBATIONS), N_GENES), dtype=np.float32), obs=test_obs,
                      var=var[["highly_variable_rank"]].copy(), uns=dict(uns))
    directory.mkdir(parents=True, exist_ok=True)
    train.write_h5ad(directory / "train.h5ad")
    test.write_h5ad(directory / "test.h5ad")
    return train, test


def prior_file(path: Path, genes, dims=3, seed=1):
    rng = np.random.default_rng(seed)
    prior = ad.AnnData(obs=pd.DataFrame(index=pd.Index([], dtype=object)),
                       var=pd.DataFrame(index=pd.Index(list(genes), dtype=object)))
    prior.varm["gene_embedding"] = rng.normal(size=(len(genes), dims))
    prior.write_h5ad(path)
    return prior


def embed(perturbation, position, embedding):
    rows = [position[t] for t in perturbation.split("+") if t in position]
    return embedding[rows].sum(axis=0) if rows else None


def reference_linear(train, test, K=10, lam=0.1, prior=None):
    """The Ahlmann-Eltze model re-derived independently: numpy SVD for the gene PCA (of the expression
    pseudobulk including the control, as their code does), and W from an
    iterative least-squares solve (lsqr) of ||Y - GWP||^2 + lam||GW||^2 + lam||WP||^2 + lam^2||W||^2,
    the objective whose normal equations (G'G + lam I) W (PP' + lam I) = G'YP' the closed form solves."""
    X = np.asarray(train.X, dtype=np.float64)
    perturbation = train.obs["perturbation"].astype(str).to_numpy()
    baseline = X[perturbation == "control"].mean(axis=0)
    names = sorted(set(perturbation) - {"control"})
    pseudobulk = np.vstack([X[perturbation == p].mean(axis=0) for p in names])
    Y = (pseudobulk - baseline).T                                    # genes x conditions
    b = Y.mean(axis=1)
    Y = Y - b[:, None]
    # the authors' gene PCA: the training pseudobulk expression with the control column, genes as observations
    expression = np.vstack([pseudobulk, baseline]).T
    U, S, _ = np.linalg.svd(expression - expression.mean(axis=0), full_matrices=False)
    G = U[:, :K] * S[:K]
    if prior is None:
        position, embedding = {g: j for j, g in enumerate(train.var_names)}, G
    else:
        position, embedding = {g: j for j, g in enumerate(prior.var_names)}, np.asarray(prior.varm["gene_embedding"])
    L = embedding.shape[1]
    P = np.column_stack([embed(p, position, embedding) if embed(p, position, embedding) is not None
                         else np.zeros(L) for p in names])
    n_genes, n_cond = Y.shape
    blocks = [np.kron(P.T, G), np.sqrt(lam) * np.kron(np.eye(L), G), np.sqrt(lam) * np.kron(P.T, np.eye(K)),
              lam * np.eye(K * L)]
    A = np.vstack(blocks)
    target = np.concatenate([Y.ravel(order="F"), np.zeros(A.shape[0] - n_genes * n_cond)])
    solution = lsqr(A, target, atol=1e-14, btol=1e-14, conlim=1e12, iter_lim=100000)
    W = solution[0].reshape((K, L), order="F")
    predictions = []
    for p in test.obs["perturbation"]:
        vector = embed(p, position, embedding)
        predictions.append(baseline + b + (0 if vector is None else G @ W @ vector))
    return np.vstack(predictions)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    train, test = small_case(out)
    prior = prior_file(out / "prior.h5ad", GENES[::2] + ["ABSENT1", "NOTAGENE"])
    base = {"input_train": out / "train.h5ad", "input_test": out / "test.h5ad"}
    jobs = {
        "linear": ("src/methods/linear_baseline", {**base, "min_context_perturbations": 2, "n_components": 10,
                                                   "output": out / "linear.h5ad"}, out / "linear.log"),
        "linear_prior": ("src/methods/linear_baseline", {**base, "min_context_perturbations": 2, "n_components": 10,
                                                         "ridge_penalty": 0.5, "input_prior": out / "prior.h5ad",
                                                         "output": out / "linear_prior.h5ad"}, out / "linear_prior.log"),
        "additive": ("src/methods/additive", {**base, "output": out / "additive.h5ad"}, out / "additive.log"),
        "knn": ("src/methods/knn_perturbation", {**base, "n_neighbors": 3, "n_components": 5,
                                                 "output": out / "knn.h5ad"}, out / "knn.log"),
    }
    return out, train, test, prior, run_all(jobs)


def test_linear_baseline_matches_iterative_least_squares(small):
    out, train, test, _, results = small
    code, err = results["linear"]
    assert code == 0, err
    predicted = np.asarray(ad.read_h5ad(out / "linear.h5ad").X, dtype=np.float64)
    expected = reference_linear(train, test, K=10, lam=0.1)
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-5)
    # targets absent from the genes: NOTAGENE has no embedding -> b + baseline (the training mean)
    mean = train_mean_prediction(train, test)
    row = list(test.obs["perturbation"]).index("NOTAGENE")
    np.testing.assert_allclose(predicted[row], mean[row], atol=1e-5)
    assert "1 have no target with an embedding" in err
    assert "1 combinations use only their targets that have one" in err      # G23+NOTAGENE
    assert "1 training conditions have no target embedding" in err          # ABSENT1
    # and the prediction is not the mean where the model has something to say
    assert np.abs(predicted[0] - mean[0]).max() > 0.01


def test_linear_baseline_with_prior_matches_iterative_least_squares(small):
    out, train, test, prior, results = small
    code, err = results["linear_prior"]
    assert code == 0, err
    predicted = np.asarray(ad.read_h5ad(out / "linear_prior.h5ad").X, dtype=np.float64)
    expected = reference_linear(train, test, K=10, lam=0.5, prior=prior)
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-5)
    # G21 is not in the prior (only even genes are): training mean
    row = list(test.obs["perturbation"]).index("G21")
    np.testing.assert_allclose(predicted[row], train_mean_prediction(train, test)[row], atol=1e-5)


def test_additive_is_not_applicable_without_combinations(small, tmp_path):
    """On single perturbations only, the additive model is train_mean under another name: exit 99."""
    out, _, test, _, _ = small
    singles = test[test.obs["n_targets"].astype(int) == 1].copy()
    singles.write_h5ad(tmp_path / "test.h5ad")
    code, err = run("src/methods/additive", {"input_train": out / "train.h5ad", "input_test": tmp_path / "test.h5ad",
                                             "output": tmp_path / "additive.h5ad"}, tmp_path / "additive.log")
    assert code == 99, err
    assert f"none of the {singles.n_obs} test conditions is a combination" in err
    assert not (tmp_path / "additive.h5ad").exists()


def test_additive_on_seen_and_unseen_singles(small):
    out, train, test, _, results = small
    code, err = results["additive"]
    assert code == 0, err
    predicted = np.asarray(ad.read_h5ad(out / "additive.h5ad").X, dtype=np.float64)
    X = np.asarray(train.X, dtype=np.float64)
    perturbation = train.obs["perturbation"].astype(str).to_numpy()
    control = X[perturbation == "control"].mean(axis=0)
    single = {p: X[perturbation == p].mean(axis=0) for p in set(perturbation)}
    mean_effect = train_mean_prediction(train, test)[0] - control
    rows = list(test.obs["perturbation"])
    # both singles seen: ctrl + (A - ctrl) + (B - ctrl)
    np.testing.assert_allclose(predicted[rows.index("G09+G10")],
                               control + (single["G09"] - control) + (single["G10"] - control), atol=1e-5)
    # one seen, one missing: the missing single's effect is the mean training effect
    np.testing.assert_allclose(predicted[rows.index("G08+G29")],
                               control + (single["G08"] - control) + mean_effect, atol=1e-5)
    # an unseen single: the training mean
    np.testing.assert_allclose(predicted[rows.index("G20")], control + mean_effect, atol=1e-5)
    assert "combination, all singles observed: 2" in err


def test_knn_perturbation_matches_direct_computation(small):
    out, train, test, _, results = small
    code, err = results["knn"]
    assert code == 0, err
    predicted = np.asarray(ad.read_h5ad(out / "knn.h5ad").X, dtype=np.float64)
    X = np.asarray(train.X, dtype=np.float64)
    perturbation = train.obs["perturbation"].astype(str).to_numpy()
    control = X[perturbation == "control"].mean(axis=0)
    names = sorted(set(perturbation) - {"control"})
    deltas = np.vstack([X[perturbation == p].mean(axis=0) for p in names]) - control
    Y = (deltas - deltas.mean(axis=0)).T
    U, S, _ = np.linalg.svd(Y - Y.mean(axis=0), full_matrices=False)
    embedding = U[:, :5] * S[:5]
    position = {g: j for j, g in enumerate(GENES)}
    keys = [embed(p, position, embedding) for p in names]
    usable = [i for i, k in enumerate(keys) if k is not None]
    for row, p in enumerate(test.obs["perturbation"]):
        query = embed(p, position, embedding)
        if query is None:
            np.testing.assert_allclose(predicted[row], control + deltas.mean(axis=0), atol=1e-5)
            continue
        similarity = np.array([keys[i] @ query / np.linalg.norm(keys[i]) / np.linalg.norm(query) for i in usable])
        nearest = np.argsort(-similarity, kind="stable")[:3]
        weights = np.clip(similarity[nearest], 0, None)
        weights = weights / weights.sum() if weights.sum() > 0 else np.full(3, 1 / 3)
        np.testing.assert_allclose(predicted[row], control + weights @ deltas[np.array(usable)[nearest]], atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Inputs the methods cannot use
# --------------------------------------------------------------------------------------------------

def test_unusable_inputs_fail_in_one_line(small, tmp_path):
    out, train, _, _, _ = small
    prior_file(tmp_path / "foreign.h5ad", [f"OTHER{i}" for i in range(40)])
    no_embedding = ad.AnnData(obs=pd.DataFrame(index=pd.Index([], dtype=object)),
                              var=pd.DataFrame(index=pd.Index(GENES, dtype=object)))
    no_embedding.write_h5ad(tmp_path / "no_embedding.h5ad")
    controls_only = train[train.obs["is_control"].to_numpy()].copy()
    controls_only.write_h5ad(tmp_path / "controls_only.h5ad")
    base = {"input_train": out / "train.h5ad", "input_test": out / "test.h5ad"}
    jobs = {
        "linear_foreign": ("src/methods/linear_baseline", {**base, "input_prior": tmp_path / "foreign.h5ad",
                                                           "output": tmp_path / "a.h5ad"}, tmp_path / "a.log"),
        "knn_foreign": ("src/methods/knn_perturbation", {**base, "input_prior": tmp_path / "foreign.h5ad",
                                                         "output": tmp_path / "b.h5ad"}, tmp_path / "b.log"),
        "linear_no_embedding": ("src/methods/linear_baseline", {**base, "input_prior": tmp_path / "no_embedding.h5ad",
                                                                "output": tmp_path / "c.h5ad"}, tmp_path / "c.log"),
        "additive_controls_only": ("src/methods/additive", {**base, "input_train": tmp_path / "controls_only.h5ad",
                                                            "output": tmp_path / "d.h5ad"}, tmp_path / "d.log"),
    }
    results = run_all(jobs)
    assert_one_line_failure(*results["linear_foreign"], tmp_path / "a.h5ad", "--input_prior", "foreign.h5ad",
                            "none of its 40 genes is a target of a training perturbation")
    assert_one_line_failure(*results["knn_foreign"], tmp_path / "b.h5ad", "--input_prior",
                            "none of its 40 genes")
    assert_one_line_failure(*results["linear_no_embedding"], tmp_path / "c.h5ad", "varm['gene_embedding']")
    assert_one_line_failure(*results["additive_controls_only"], tmp_path / "d.h5ad", "no perturbation profiles")


def test_gene_pca_matches_numpy_svd_on_both_paths():
    """baselines.gene_pca: dense Gram path (small) and ARPACK path (large) both equal numpy's SVD scores."""
    sys.path.insert(0, str(ROOT / "src" / "utils"))
    import baselines

    rng = np.random.default_rng(3)
    for n_genes, n_cond in ((40, 25), (25, 40), (900, 650)):
        scale = np.arange(12, 0, -1, dtype=np.float64)
        Y = (rng.normal(size=(n_genes, 12)) * scale) @ rng.normal(size=(12, n_cond)) + rng.normal(size=(n_genes, n_cond)) * 0.1
        G = baselines.gene_pca(Y, 8)
        U, S, _ = np.linalg.svd(Y - Y.mean(axis=0), full_matrices=False)
        expected = U[:, :8] * S[:8]
        expected *= np.sign(expected[np.argmax(np.abs(expected), axis=0), np.arange(8)])
        np.testing.assert_allclose(G, expected, rtol=0, atol=1e-8 * np.abs(expected).max())
