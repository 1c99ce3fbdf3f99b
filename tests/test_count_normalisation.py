"""Profiles of count data: the mean of the cells' log1p(cp10k) (`log_cp10k_cell_mean`, the default) and
log1p(cp10k) of summed counts (`log_cp10k`), in src/utils/pseudobulk.py and matrix_stream.py.

Hand-computed profiles for a tiny matrix in every layout, and a Poisson null screen whose control profiles pool
5x more cells than the perturbations' (as in real screens): there the summed version shows a fake effect
that the cell mean does not. The real subset's numbers are in benchmarks/normalisation.py."""
import math
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import ROOT

sys.path.insert(0, str(ROOT / "src" / "utils"))
from baselines import profile_of_cells  # noqa: E402
from pseudobulk import count_normalization, harmonize_cells, pseudobulk, stream_sums  # noqa: E402

# two cells of different depth (4 and 16 counts) in profile 0, a third cell left out (code -1)
COUNTS = np.array([[1, 0, 3, 0],
                   [2, 6, 0, 8],
                   [5, 5, 5, 5]], dtype=np.float32)
CODES = np.array([0, 0, -1])
# each cell's log1p(1e4 x count / its total): cell 0 [log 2501, 0, log 7501, 0], cell 1 [log 1251, log 3751, 0, log 5001]
CELL_MEAN = [(math.log(2501) + math.log(1251)) / 2, math.log(3751) / 2, math.log(7501) / 2, math.log(5001) / 2]
# summed counts [3, 6, 3, 8] of 20: log1p of [1500, 3000, 1500, 4000]
SUMMED = [math.log(1501), math.log(3001), math.log(1501), math.log(4001)]
LAYOUTS = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}


def write(path, matrix, obs=None, var_names=None):
    n_cells, n_genes = matrix.shape
    ad.AnnData(X=matrix, obs=obs if obs is not None else pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
               var=pd.DataFrame(index=var_names or [f"g{i}" for i in range(n_genes)])).write_h5ad(path)
    return path


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cell_totals_and_cell_mean_sums_by_hand(tmp_path, layout):
    path = write(tmp_path / "x.h5ad", LAYOUTS[layout](COUNTS))
    sums, totals = stream_sums(path, CODES, 1, counts=True, cell_totals=True, chunk_nnz=2)  # one cell per block
    np.testing.assert_array_equal(sums, [[3, 6, 3, 8]])
    np.testing.assert_array_equal(totals[:2], [4, 16])  # over all genes; the left-out cell may not be read
    scale = 1e4 / np.where(totals > 0, totals, 1.0)
    for chunk_nnz in (2, None):
        log_sums = stream_sums(path, CODES, 1, cell_scale=scale, chunk_nnz=chunk_nnz)
        np.testing.assert_allclose(log_sums[0] / 2, CELL_MEAN, rtol=1e-12)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pseudobulk_profiles_by_hand(tmp_path, layout):
    """Four profiles (control and A, replicates r1 and r2), each of the two cells above (the third cell goes
    to every profile's second cell in turn, scaled): X is the mean of the cells' log1p(cp10k) with totals
    over all genes, also for the genes the selection keeps; counts are summed; the cells file agrees."""
    blocks = [COUNTS[:2], COUNTS[:2] * 2, np.vstack([COUNTS[0], COUNTS[2]]), COUNTS[1:]]
    matrix = np.vstack(blocks)
    obs = pd.DataFrame({"perturbation": ["control"] * 4 + ["A"] * 4, "rep": ["r1", "r1", "r2", "r2"] * 2},
                       index=[f"c{i}" for i in range(8)])
    genes = ["A", "g1", "g2", "g3"]
    path = write(tmp_path / "screen.h5ad", LAYOUTS[layout](matrix), obs, genes)
    cells = harmonize_cells(path, obs, perturbation_column="perturbation", perturbation_type="knockout",
                            cell_type="K562", replicate_column="rep", log=lambda m: None)
    table = pd.DataFrame({"symbol": genes, "gene_id": None})
    cell_logs = np.log1p(1e4 * matrix / matrix.sum(axis=1, keepdims=True))
    expected = {}
    for name, normalization in (("cell_mean", None), ("summed", "log_cp10k")):
        adata = pseudobulk(path, cells, values="counts", seed=0, min_cells=2, n_top_genes=1, genes=table,
                           uns={"dataset_id": "tiny", "normalization_id": "overridden"}, log=lambda m: None,
                           cells_output=str(tmp_path / f"cells_{name}.h5ad"),
                           cells_options={"max_cells": 0, "max_control": 0, "seed": 0},
                           **({"normalization": normalization} if normalization else {}))
        keep = [genes.index(g) for g in adata.var_names]
        assert "A" in adata.var_names and adata.n_vars < 4  # the target plus the most variable gene
        rows = {(p, r): [i for i in range(8) if obs["perturbation"].iloc[i] == p and obs["rep"].iloc[i] == r]
                for p in ("control", "A") for r in ("r1", "r2")}
        order = [rows[(p, r)] for p, r in zip(adata.obs["perturbation"], adata.obs["replicate"])]
        np.testing.assert_array_equal(adata.layers["counts"], [matrix[o].sum(axis=0)[keep] for o in order])
        if name == "cell_mean":
            assert adata.uns["normalization_id"] == "log_cp10k_cell_mean"
            expected[name] = [cell_logs[o].mean(axis=0)[keep] for o in order]
            first = order.index(rows[("control", "r1")])  # the two cells of the module's hand computation
            np.testing.assert_allclose(adata.X[first], np.asarray(CELL_MEAN)[keep], rtol=1e-6)
        else:
            assert adata.uns["normalization_id"] == "log_cp10k"
            sums = [matrix[o].sum(axis=0) for o in order]
            expected[name] = [np.log1p(1e4 * s / s.sum())[keep] for s in sums]
            first = order.index(rows[("control", "r1")])
            np.testing.assert_allclose(adata.X[first], np.asarray(SUMMED)[keep], rtol=1e-6)
        np.testing.assert_allclose(adata.X, expected[name], rtol=1e-6)
        # the cells file: each cell's log1p(cp10k) (totals over all genes) under the dataset's normalization_id;
        # for cell means, the profile made of them as profile_of_cells makes it is exactly the dataset's (for
        # summed counts it is log1p of the mean cp10k, which differs where the cells' depths differ)
        written = ad.read_h5ad(tmp_path / f"cells_{name}.h5ad")
        assert written.uns["normalization_id"] == adata.uns["normalization_id"]
        position = written.obs["source_index"].to_numpy()
        np.testing.assert_allclose(written.X.toarray(), cell_logs[position][:, keep], rtol=1e-6)
        if name == "cell_mean":
            for row, profile_id in enumerate(adata.obs_names):
                members = (written.obs["profile_id"] == profile_id).to_numpy()
                np.testing.assert_allclose(profile_of_cells(written.X[members], written.uns["normalization_id"]),
                                           adata.X[row], rtol=1e-5)
    assert not np.allclose(expected["cell_mean"], expected["summed"])


def null_screen(seed=0, n_genes=300, n_control=250, n_perturbations=30, n_cells=50, depth=60) -> ad.AnnData:
    """No perturbation does anything: every cell's counts are Poisson(depth x size factor x gene share), about
    60 counts per cell as on the Datlinger subset; the control has 5x the cells of each perturbation."""
    rng = np.random.default_rng(seed)
    shares = rng.gamma(0.5, 1.0, n_genes)
    shares /= shares.sum()
    labels = ["control"] * n_control + [f"P{p}" for p in range(n_perturbations) for _ in range(n_cells)]
    size = depth * rng.lognormal(0.0, 0.3, len(labels))
    X = sp.csr_matrix(rng.poisson(size[:, None] * shares[None, :]).astype(np.float32))
    return ad.AnnData(X=X, obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
                      var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))


def test_a_profile_does_not_depend_on_how_many_cells_it_pools(tmp_path):
    """On the null screen the mean delta (perturbation minus control, over genes and perturbations) is within
    noise of 0 for cell means and far below it for logs of summed counts, whose control pools more depth."""
    source = null_screen()
    path = tmp_path / "null.h5ad"
    source.write_h5ad(path)
    cells = harmonize_cells(path, source.obs, perturbation_column="perturbation", perturbation_type="knockout",
                            cell_type="K562", log=lambda m: None)
    table = pd.DataFrame({"symbol": source.var_names.to_numpy(), "gene_id": None})
    z = {}
    for normalization in ("log_cp10k_cell_mean", "log_cp10k"):
        adata = pseudobulk(path, cells, values="counts", seed=0, min_cells=10, n_top_genes=0, genes=table,
                           uns={"dataset_id": "null"}, log=lambda m: None, normalization=normalization)
        control = adata.obs["is_control"].to_numpy()
        assert adata.obs.loc[control, "n_cells"].tolist() == [63, 62, 63, 62]  # halves of 125, each in 2 parts
        assert set(adata.obs.loc[~control, "n_cells"]) == {25}
        level = np.asarray(adata.X, dtype=np.float64).mean(axis=1)  # each profile's mean over genes
        perturbed = pd.Series(level[~control]).groupby(adata.obs["perturbation"].to_numpy()[~control]).mean()
        delta = perturbed.to_numpy().mean() - level[control].mean()
        # SE: a perturbation's mean is of 2 profiles of 25 cells, the control's of 250 cells
        sd = level[~control].std(ddof=1)
        z[normalization] = delta / np.sqrt(sd ** 2 / 2 / len(perturbed) + sd ** 2 * 25 / 250)
    assert abs(z["log_cp10k_cell_mean"]) < 3, z
    assert z["log_cp10k"] < -8, z  # measured: -14.3 (mean delta -0.195 against an SE of 0.014)


def test_count_normalization_names_its_choices():
    assert count_normalization(None) == "log_cp10k_cell_mean" and count_normalization("log_cp10k") == "log_cp10k"
    with pytest.raises(ValueError, match="--normalization is 'cp10k', expected one of log_cp10k_cell_mean, log_cp10k"):
        count_normalization("cp10k")
