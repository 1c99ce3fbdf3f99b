"""The R metric src/metrics/limma_de against a case computed by hand, and src/utils/anndata_h5.R."""
import shutil
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbcast.runner import run_component

ROOT = Path(__file__).resolve().parents[1]
COMPONENT = ROOT / "src" / "metrics" / "limma_de"
pytestmark = pytest.mark.skipif(shutil.which("Rscript") is None,
                                reason="Rscript not on PATH (scripts/install_r.sh installs R, limma and hdf5r)")

GENES = [f"G{i}" for i in range(1, 9)]
ROWS = ["G1|A|none", "G2+G3|A|none"]
BASE = np.linspace(1.0, 4.5, 8)
NOISE = 0.01


def split_files(tmp_path, control_halves=True, single_replicate=False):
    """One context, two held-out conditions. Every sample is base +- 0.01 with the signs arranged so that
    each group's mean is exactly the base: a gene without a planted effect has limma coefficient 0
    (p = 1), a planted effect of 2 or 3 against a residual SD of 0.01 is DE at any FDR.
    Planted: row 1 (G1): G4 +2, G5 -2, target G1 -3; row 2 (G2+G3): G6 +3, targets G2, G3 -3."""
    effect = np.zeros((2, 8))
    effect[0, [3, 4, 0]] = [2.0, -2.0, -3.0]
    effect[1, [5, 1, 2]] = [3.0, -3.0, -3.0]
    sign = np.where(np.arange(8) % 2 == 0, 1.0, -1.0)
    replicate_1 = BASE + effect + NOISE * sign
    replicate_2 = BASE + effect - NOISE * sign
    if single_replicate:
        replicate_1 = replicate_2 = BASE + effect
    layers = {"replicate_1": replicate_1, "replicate_2": replicate_2, "control": np.tile(BASE, (2, 1))}
    if control_halves == "identical":  # halves not by replicate label: the control is one sample
        layers["control_replicate_1"] = layers["control_replicate_2"] = np.tile(BASE, (2, 1))
    elif control_halves:
        layers["control_replicate_1"] = np.tile(BASE - NOISE * sign, (2, 1))
        layers["control_replicate_2"] = np.tile(BASE + NOISE * sign, (2, 1))
    obs = pd.DataFrame({"perturbation": ["G1", "G2+G3"], "perturbation_type": "knockdown", "n_targets": [1, 2],
                        "cell_type": "A", "condition": "none", "stratum": ["single", "combo"], "n_cells": [20, 20]},
                       index=pd.Index(ROWS, dtype=object))
    uns = {"dataset_id": "hand", "task_id": "unseen_perturbation", "split_seed": 0, "normalization_id": "log_cp10k"}
    var = pd.DataFrame(index=pd.Index(GENES, dtype=object))
    solution = ad.AnnData(X=(replicate_1 + replicate_2) / 2, obs=obs, var=var, layers=layers, uns=uns)
    # predicted deltas (prediction = control + delta); targets get large values that must be ignored
    delta = np.zeros((2, 8))
    delta[0] = [5.0, 0.5, 0.0, 1.0, 0.5, 0.0, -0.2, 0.0]
    delta[1] = [0.3, 9.0, 9.0, 0.0, 0.0, -1.0, 0.0, 0.0]
    prediction = ad.AnnData(X=BASE + delta, obs=pd.DataFrame(index=obs.index.copy()), var=var.copy(),
                            uns={"dataset_id": "hand", "task_id": "unseen_perturbation", "method_id": "hand_method"})
    solution.write_h5ad(tmp_path / "solution.h5ad")
    prediction.write_h5ad(tmp_path / "prediction.h5ad")
    return tmp_path / "solution.h5ad", tmp_path / "prediction.h5ad"


def score(tmp_path, solution, prediction, *extra):
    output = tmp_path / "score.h5ad"
    result = run_component(COMPONENT, ["--input_solution", str(solution), "--input_prediction", str(prediction),
                                       "--output", str(output), *extra])
    return result, (ad.read_h5ad(output) if output.exists() else None)


@pytest.mark.parametrize("control_halves", [True, False, "identical"])
def test_values_equal_the_hand_computed_case(tmp_path, control_halves):
    """Row 1: non-target genes G2..G8, DE = {G4 up, G5 down}, |predicted delta| = .5 0 1 .5 0 .2 0.
    AUROC: G4 beats all 5 non-DE genes; G5 (.5) ties G2 (.5) and beats 4 -> (5 + 4.5) / 10 = 0.95.
    Recall: top-2 = G4 and one of the tied {G2, G5} (1/2 each); G4 has the right sign, G5 the wrong -> 1/2.
    Row 2: non-target G1, G4..G8, DE = {G6 up}; |delta| = .3 0 0 1 0 0 -> AUROC 1; G6 is top-1 but
    predicted down -> recall 0."""
    result, scored = score(tmp_path, *split_files(tmp_path, control_halves=control_halves))
    assert result.exit_code == 0
    assert list(scored.uns["n_de_genes"]) == [2, 1]
    assert np.allclose(scored.obs["limma_de_auroc"], [0.95, 1.0])
    assert np.allclose(scored.obs["limma_de_recall"], [0.5, 0.0])
    assert list(scored.uns["metric_ids"]) == ["limma_de_auroc", "limma_de_recall"]
    assert np.allclose(scored.uns["metric_values"], [0.975, 0.25])
    assert list(scored.obs["stratum"]) == ["single", "combo"] and list(scored.obs_names) == ROWS
    assert scored.uns["method_id"] == "hand_method" and scored.uns["n_conditions_without_de"] == 0


def test_a_prediction_with_empty_string_lists_in_uns_is_read(tmp_path):
    """A method without fallbacks writes an empty uns['fallback_conditions'] (a zero-length string dataset),
    which hdf5r cannot read: limma_de failed on every such prediction (found by benchmarks/scale.py)."""
    solution, prediction = split_files(tmp_path)
    adata = ad.read_h5ad(prediction)
    adata.uns["fallback_conditions"] = np.array([], dtype=object)
    adata.uns["empty_numbers"] = np.array([], dtype=np.float64)
    adata.write_h5ad(prediction)
    result, scored = score(tmp_path, solution, prediction)
    assert result.exit_code == 0
    assert np.allclose(scored.obs["limma_de_auroc"], [0.95, 1.0])


def test_no_change_prediction_scores_chance(tmp_path):
    solution, prediction = split_files(tmp_path)
    flat = ad.read_h5ad(prediction)
    flat.X = np.tile(BASE, (2, 1))  # the control: every |delta| is 0, all tied
    flat.write_h5ad(prediction)
    result, scored = score(tmp_path, solution, prediction)
    assert result.exit_code == 0
    assert np.allclose(scored.obs["limma_de_auroc"], 0.5) and np.allclose(scored.obs["limma_de_recall"], 0.0)


def test_a_strict_fdr_still_finds_the_planted_genes_and_bad_fdr_is_refused(tmp_path, capfd):
    files = split_files(tmp_path)
    result, scored = score(tmp_path, *files, "--fdr", "1e-6")
    assert result.exit_code == 0 and list(scored.uns["n_de_genes"]) == [2, 1]
    result, _ = score(tmp_path, *files, "--fdr", "0")
    assert result.exit_code == 1
    assert "[error] --fdr is 0; expected a number in (0, 1)" in capfd.readouterr().err


def test_without_replicates_the_metric_is_not_applicable(tmp_path, capfd):
    result, scored = score(tmp_path, *split_files(tmp_path, control_halves=False, single_replicate=True))
    assert result.exit_code == 99 and scored is None
    assert "[not applicable] no held-out condition has replicate halves" in capfd.readouterr().err


def test_misaligned_prediction_is_one_error_line_and_no_output(tmp_path, capfd):
    solution, prediction = split_files(tmp_path)
    shuffled = ad.read_h5ad(prediction)[:, ::-1].copy()
    shuffled.write_h5ad(prediction)
    result, scored = score(tmp_path, solution, prediction)
    assert result.exit_code == 1 and scored is None
    err = capfd.readouterr().err
    assert "genes (var_names) differ from the solution's or are in another order" in err
    assert not list(tmp_path.glob("score.h5ad*"))


def test_r_helper_reads_sparse_and_categorical_and_writes_what_python_reads(tmp_path):
    import scipy.sparse as sp

    dense = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 3.0]])
    obs = pd.DataFrame({"kind": pd.Categorical(["a", "b"]), "n": [1, 2], "s": ["x", "y'z"]},
                       index=pd.Index(["r1", "r2"], dtype=object))
    for name, matrix in (("csr", sp.csr_matrix(dense)), ("csc", sp.csc_matrix(dense)), ("dense", dense)):
        ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=pd.Index(["g1", "g2", "g3"], dtype=object)),
                   uns={"nested": {"v": np.array([1.0, 2.0])}, "id": "d"}).write_h5ad(tmp_path / f"{name}.h5ad")
    script = f"""
        source("{ROOT / 'src' / 'utils' / 'anndata_h5.R'}")
        for (name in c("csr", "csc", "dense")) {{
          a <- read_h5ad(file.path("{tmp_path}", paste0(name, ".h5ad")))
          stopifnot(identical(dim(a$X), c(2L, 3L)), a$X[2, 3] == 3, a$X[1, 2] == 1.5, sum(a$X) == 6.5)
          stopifnot(identical(rownames(a$X), c("r1", "r2")), identical(colnames(a$X), c("g1", "g2", "g3")))
          stopifnot(identical(as.character(a$obs$kind), c("a", "b")), identical(a$obs$s, c("x", "y'z")))
          stopifnot(identical(a$uns$nested$v, c(1, 2)), identical(a$uns$id, "d"))
        }}
        write_h5ad(file.path("{tmp_path}", "out.h5ad"), obs = data.frame(s = c("p", "q"), v = c(0.5, 1),
                   row.names = c("r1", "r2")), X = a$X, var = data.frame(row.names = colnames(a$X)),
                   uns = list(one = I("m"), scalar = 2.5, text = "t", deep = list(k = I(c(1L, 2L)))))
    """
    subprocess.run(["Rscript", "-e", script], check=True, capture_output=True, text=True)
    written = ad.read_h5ad(tmp_path / "out.h5ad")
    assert np.array_equal(written.X, dense) and list(written.var_names) == ["g1", "g2", "g3"]
    assert list(written.obs["s"]) == ["p", "q"] and list(written.obs["v"]) == [0.5, 1.0]
    assert list(written.uns["one"]) == ["m"] and written.uns["scalar"] == 2.5 and written.uns["text"] == "t"
    assert list(written.uns["deep"]["k"]) == [1, 2]
    assert not (tmp_path / "out.h5ad.partial").exists()


# ------------------------------------------------------------------ the closed-form fit against lmFit

# The implementation before the closed-form fit (commit 399d29a: one lmFit + eBayes per group of rows,
# O(n^2) grouping), kept verbatim as the reference the current script must reproduce.
REFERENCE = ROOT / "tests" / "fixtures" / "limma_de_lmfit.R"


# The row-wise implementation before the genes x rows one (commit 7a1d21d: every p-value computed, BH per
# row over all scored genes), kept verbatim: the current script must give exactly its numbers.
ROWWISE = ROOT / "tests" / "fixtures" / "limma_de_rowwise.R"


def run_reference(tmp_path, solution, prediction, fdr=0.05, reference=REFERENCE):
    """A reference script with its VIASH block replaced by the inputs, through Rscript."""
    text = reference.read_text()
    start, end = text.index("## VIASH START"), text.index("## VIASH END")
    output = tmp_path / f"reference_score_{reference.stem}.h5ad"
    block = (f'par <- list(input_solution = "{solution}", input_prediction = "{prediction}", output = "{output}", '
             f'fdr = {fdr})\nmeta <- list(name = "limma_de", resources_dir = "{ROOT / "src" / "utils"}")\n')
    script = tmp_path / f"{reference.stem}.R"
    script.write_text(text[:start] + block + text[end:])
    subprocess.run(["Rscript", str(script)], check=True, capture_output=True, text=True)
    return ad.read_h5ad(output)


def assert_same_scores(tmp_path, solution, prediction):
    result, current = score(tmp_path, solution, prediction)
    assert result.exit_code == 0
    reference = run_reference(tmp_path, solution, prediction)
    assert list(current.uns["n_de_genes"]) == list(reference.uns["n_de_genes"])  # the same DE calls
    for column in ("limma_de_auroc", "limma_de_recall"):
        assert np.allclose(current.obs[column], reference.obs[column], rtol=0, atol=1e-12), column
    assert np.allclose(current.uns["metric_values"], reference.uns["metric_values"], rtol=0, atol=1e-12)
    assert list(current.obs_names) == list(reference.obs_names)
    return current


def test_same_values_as_lmfit_on_the_test_resources(tmp_path):
    """Two contexts with control halves (two fits), a prediction with ties (train_mean)."""
    folder = ROOT / "resources_test" / "simulated_grn" / "unseen_perturbation"
    if not (folder / "solution.h5ad").exists():
        pytest.skip("resources_test/ is missing: scripts/create_test_resources.py makes it")
    scored = assert_same_scores(tmp_path, folder / "solution.h5ad", folder / "prediction.h5ad")
    assert sum(scored.uns["n_de_genes"]) > 0


@pytest.mark.parametrize("control_halves", [True, False, "identical"])
def test_same_values_as_lmfit_on_the_hand_case(tmp_path, control_halves):
    assert_same_scores(tmp_path, *split_files(tmp_path, control_halves=control_halves))


def test_same_values_as_lmfit_on_a_real_subset_with_single_replicates(tmp_path):
    """Norman 2019 (PerturBench devel subset), fold 0 of 2: 12 held-out conditions x 500 genes in 1 context
    with real control halves; every third condition made single-replicate (identical halves), a noisy
    prediction. Same DE calls, same scores."""
    import sys

    sys.path.insert(0, str(ROOT / "src" / "utils"))
    import partitions
    import splits

    from realdata import norman19_common

    common = norman19_common()
    is_test, stratum, exclude, _ = partitions.perturbation_fold(common.obs, 2, 0, 0)
    _, _, solution = splits.build_split(common, is_test, stratum, "unseen_perturbation", 0, exclude=exclude,
                                        n_folds=2, fold=0)
    single = np.arange(solution.n_obs) % 3 == 0
    solution.layers["replicate_2"][single] = solution.layers["replicate_1"][single]
    rng = np.random.default_rng(0)
    delta = np.asarray(solution.X) - solution.layers["control"]
    predicted = solution.layers["control"] + 0.5 * delta + rng.normal(0, 0.05, size=delta.shape)
    prediction = ad.AnnData(X=predicted.astype(np.float32), obs=pd.DataFrame(index=solution.obs_names.copy()),
                            var=pd.DataFrame(index=solution.var_names.copy()),
                            uns={"dataset_id": solution.uns["dataset_id"], "task_id": solution.uns["task_id"],
                                 "method_id": "noisy"})
    solution.write_h5ad(tmp_path / "solution.h5ad")
    prediction.write_h5ad(tmp_path / "prediction.h5ad")
    scored = assert_same_scores(tmp_path, tmp_path / "solution.h5ad", tmp_path / "prediction.h5ad")
    assert solution.n_obs >= 10 and sum(scored.uns["n_de_genes"]) > 0


# ------------------------------------------------------- the genes x rows version against the row-wise one

def mixed_split(tmp_path):
    """60 conditions x 300 genes in three contexts, built to reach every branch of the fit and the scores:
    context A has control halves that differ, and its last five rows another control (two fits); context B
    has identical control halves (the control is one sample); context C has none. Every fourth condition
    is a single replicate; genes 0-9 are constant in context B (not testable there); effects range from
    none to very strong (p-values below fdr / n, between the cut-offs and above fdr); doubles, a target
    that is not a measured gene; the prediction is rounded to 0.1 (ties, and exact zeros)."""
    rng = np.random.default_rng(7)
    n_genes, per_context = 300, 20
    genes = [f"G{i}" for i in range(n_genes)]
    rows, reps, controls, halves = [], [], [], []
    for c, context in enumerate("ABC"):
        base = rng.gamma(2.0, 1.0, size=n_genes)
        other_base = base + rng.normal(0, 0.3, size=n_genes)
        for i in range(per_context):
            own_base = other_base if context == "A" and i >= per_context - 5 else base
            first, second = rng.integers(n_genes), rng.integers(n_genes) if i % 3 == 0 else None
            effect = np.zeros(n_genes)
            strong = rng.choice(n_genes, size=30, replace=False)
            effect[strong] = rng.normal(0, 1.5, size=30) * rng.choice([0.05, 0.3, 3.0], size=30)
            mean = own_base + effect
            noise = rng.normal(0, 0.1, size=(2, n_genes))
            r1, r2 = mean + noise[0], mean + noise[1]
            if i % 4 == 1:
                r2 = r1.copy()  # a single replicate
            if context == "B":
                r1[:10] = r2[:10] = own_base[:10]  # constant over every sample of the context
            perturbation = genes[first] if second is None else f"{genes[first]}+{genes[second]}"
            if i == 7:
                perturbation = f"{genes[first]}+NOT_MEASURED"
            rows.append({"perturbation": perturbation, "cell_type": context, "n_targets": perturbation.count("+") + 1})
            reps.append((r1, r2))
            ctrl_noise = rng.normal(0, 0.05, size=n_genes) if context == "A" else np.zeros(n_genes)
            halves.append((own_base - ctrl_noise, own_base + ctrl_noise) if context != "C" else None)
            controls.append(own_base)
    obs = pd.DataFrame(rows)
    obs["perturbation_type"], obs["condition"], obs["n_cells"] = "knockdown", "none", 50
    obs["stratum"] = np.where(obs["n_targets"] > 1, "combo", "single")
    obs.index = pd.Index([f"{r.perturbation}|{r.cell_type}|{i}" for i, r in enumerate(obs.itertuples())], dtype=object)
    r1 = np.array([r[0] for r in reps]); r2 = np.array([r[1] for r in reps])
    control = np.array(controls)
    # context C has no halves of its own: the layers hold its control twice, which counts as one sample
    c1 = np.array([h[0] if h is not None else b for h, b in zip(halves, controls)])
    c2 = np.array([h[1] if h is not None else b for h, b in zip(halves, controls)])
    var = pd.DataFrame(index=pd.Index(genes, dtype=object))
    uns = {"dataset_id": "mixed", "task_id": "unseen_perturbation", "split_seed": 0, "normalization_id": "log1p"}
    solution = ad.AnnData(X=(r1 + r2) / 2, obs=obs, var=var, uns=uns, layers={
        "replicate_1": r1, "replicate_2": r2, "control": control, "control_replicate_1": c1,
        "control_replicate_2": c2})
    guess = control + np.round(0.6 * (solution.X - control) + rng.normal(0, 0.2, size=control.shape), 1)
    prediction = ad.AnnData(X=guess.astype(np.float32), obs=pd.DataFrame(index=obs.index.copy()), var=var.copy(),
                            uns={"dataset_id": "mixed", "task_id": "unseen_perturbation", "method_id": "rounded"})
    solution.write_h5ad(tmp_path / "solution.h5ad")
    prediction.write_h5ad(tmp_path / "prediction.h5ad")
    return tmp_path / "solution.h5ad", tmp_path / "prediction.h5ad"


def assert_same_as_rowwise(tmp_path, solution, prediction, fdr):
    result, current = score(tmp_path, solution, prediction, "--fdr", str(fdr))
    assert result.exit_code == 0
    reference = run_reference(tmp_path, solution, prediction, fdr=fdr, reference=ROWWISE)
    assert list(current.uns["n_de_genes"]) == list(reference.uns["n_de_genes"])  # the same DE calls
    for column in ("limma_de_auroc", "limma_de_recall"):
        assert np.allclose(current.obs[column], reference.obs[column], rtol=0, atol=1e-9), column
    assert np.allclose(current.uns["metric_values"], reference.uns["metric_values"], rtol=0, atol=1e-9)
    assert current.uns["n_conditions_without_de"] == reference.uns["n_conditions_without_de"]
    assert list(current.obs_names) == list(reference.obs_names)
    assert list(current.obs["stratum"]) == list(reference.obs["stratum"])
    return current, reference


@pytest.mark.parametrize("fdr", [0.05, 0.3, 1e-4])
def test_same_values_as_the_rowwise_version_on_a_mixed_split(tmp_path, fdr):
    current, _ = assert_same_as_rowwise(tmp_path, *mixed_split(tmp_path), fdr)
    n_de = np.asarray(current.uns["n_de_genes"])
    assert (n_de > 0).sum() > 30 and n_de.max() < 300  # DE genes in most conditions, not everywhere
    # ties in the prediction (rounded to 0.1): the tie share and average ranks are exercised
    assert 0 < np.mean(current.obs["limma_de_recall"]) < 1


def test_same_values_as_the_rowwise_version_on_the_test_resources(tmp_path):
    folder = ROOT / "resources_test" / "simulated_grn" / "unseen_perturbation"
    if not (folder / "solution.h5ad").exists():
        pytest.skip("resources_test/ is missing: scripts/create_test_resources.py makes it")
    assert_same_as_rowwise(tmp_path, folder / "solution.h5ad", folder / "prediction.h5ad", 0.05)
