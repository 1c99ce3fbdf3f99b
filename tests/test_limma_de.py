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
