"""Biological replicates, left-out conditions, gene selection and the QC card of the dataset loaders.

A generated cell-level screen in scPerturb's layout (raw counts) has three biological replicates (`bio_rep`)
with a batch effect larger than any perturbation effect on five genes; it is put into $PERTURBCAST_CACHE as a
completed download (see test_loaders.place) and loaded through the scperturb component."""
import sys
from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from conftest import ROOT
from test_loaders import ZENODO, gears_like, place, run_loader

sys.path.insert(0, str(ROOT / "src" / "utils"))
from dataset_report import dataset_report, replicate_halves  # noqa: E402
from profiles import assign_profiles  # noqa: E402
from harmonize import harmonize_perturbation  # noqa: E402
from pseudobulk import gene_table, harmonize_cells, pseudobulk  # noqa: E402

REPLICATES = ("rep1", "rep2", "rep3")
BATCH = {"rep1": 1.0, "rep2": 4.0, "rep3": 0.25}  # multiplies the mean of the batch genes G5..G9
BATCH_GENES = [f"G{i}" for i in range(5, 10)]
RESPONSIVE = {"T1": [f"G{i}" for i in range(10, 15)], "T2": [f"G{i}" for i in range(15, 20)]}
# cells per replicate: T4's rep3 and T5's rep2/rep3 are too small for --min_cells_per_half 10
CELLS = {"control": (60, 60, 60), "T1": (30, 30, 30), "T2": (30, 30, 30), "T3": (30, 30, 30), "TX": (30, 30, 30),
         "T4": (30, 30, 3), "T5": (30, 4, 0)}
GENES = ["T1", "T2", "T3", "T4", "T5"] + [f"G{i}" for i in range(5, 60)]


def replicate_screen(seed=0) -> ad.AnnData:
    """Raw counts (Poisson, mean 5) with a replicate batch effect; T1 and T2 raise five genes each 5-fold,
    T3 and TX do nothing (TX is not measured), knockouts leave their own target's mRNA alone."""
    rng = np.random.default_rng(seed)
    rows = [(p, r) for p, sizes in CELLS.items() for r, n in zip(REPLICATES, sizes) for _ in range(n)]
    obs = pd.DataFrame(rows, columns=["perturbation", "bio_rep"])
    obs["perturbation_type"] = "CRISPR"
    obs["cell_line"] = "K562"
    obs.index = [f"c{i}" for i in range(len(obs))]
    mean = np.full((len(obs), len(GENES)), 5.0)
    position = {g: j for j, g in enumerate(GENES)}
    for rep, factor in BATCH.items():
        mean[np.ix_((obs["bio_rep"] == rep).to_numpy(), [position[g] for g in BATCH_GENES])] *= factor
    for target, genes in RESPONSIVE.items():
        mean[np.ix_((obs["perturbation"] == target).to_numpy(), [position[g] for g in genes])] *= 5.0
    X = sp.csr_matrix(rng.poisson(mean).astype(np.float32))
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    tmp = tmp_path_factory.mktemp("replicates")
    source = tmp / "screen.h5ad"
    replicate_screen().write_h5ad(source)
    place(cache, ZENODO.format("GeneratedReplicates"), source)
    # the same cells as a file of a listed study whose replicate column is known (Norman 2019: `gemgroup`)
    known = replicate_screen()
    known.obs = known.obs.rename(columns={"bio_rep": "gemgroup"})
    known.write_h5ad(tmp / "known.h5ad")
    place(cache, ZENODO.format("NormanWeissman2019_filtered"), tmp / "known.h5ad")
    common = ["--study", "GeneratedReplicates", "--perturbation_type", "knockout"]
    jobs = {"biological": common + ["--replicate_column", "bio_rep"],
            "random_half": common,
            "no_such_column": common + ["--replicate_column", "donor"],
            "known_study": ["--study", "NormanWeissman2019_filtered"],
            "known_study_off": ["--study", "NormanWeissman2019_filtered", "--replicate_column", "none"]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PERTURBCAST_CACHE", str(cache))
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {key: pool.submit(run_loader, "scperturb", args, tmp / key) for key, args in jobs.items()}
            results = {key: future.result() for key, future in futures.items()}
    return {**results, "source": ad.read_h5ad(source)}


def profile(adata, perturbation, replicate) -> np.ndarray:
    # a control replicate comes in two control parts: its profile is their cell-weighted mean (cell means)
    rows = (adata.obs["perturbation"] == perturbation).to_numpy() & (adata.obs["replicate"] == replicate).to_numpy()
    weights = adata.obs["n_cells"].to_numpy(dtype=np.float64)[rows]
    return (np.asarray(adata.X[rows], dtype=np.float64) * weights[:, None]).sum(axis=0) / weights.sum()


def test_profiles_follow_biological_replicates(runs):
    run = runs["biological"]
    assert run["exit_code"] == 0, run["stderr"]
    adata, source = run["adata"], runs["source"]
    assert adata.uns["replicate_kind"] == "biological" and adata.uns["replicate_column"] == "bio_rep"
    assert adata.uns["n_replicates"] == 3 and adata.uns["min_cells_per_half"] == 10
    per_condition = adata.obs.groupby("perturbation", observed=True)["replicate"].apply(lambda r: sorted(r)).to_dict()
    assert per_condition == {"control": sorted(list(REPLICATES) * 2), "T1": list(REPLICATES), "T2": list(REPLICATES),
                             "T3": list(REPLICATES), "TX": list(REPLICATES), "T4": ["rep1", "rep2"]}
    controls = adata.obs[adata.obs["is_control"].to_numpy()]
    assert sorted(zip(controls["replicate"], controls["control_part"])) == [(r, k) for r in REPLICATES for k in (1, 2)]
    # each profile is exactly the cells of its perturbation and replicate: counts summed, n_cells counted
    key = (source.obs["perturbation"].astype(str) + "|" + source.obs["bio_rep"].astype(str)).to_numpy()
    expected = pd.DataFrame(source.X.toarray(), index=key, columns=source.var_names).groupby(level=0).sum()
    observed = pd.DataFrame(adata.layers["counts"], columns=adata.var_names,
                            index=(adata.obs["perturbation"].astype(str) + "|" + adata.obs["replicate"].astype(str)).to_numpy())
    observed = observed.groupby(level=0, sort=False).sum()  # a control replicate's two parts together
    np.testing.assert_array_equal(observed.to_numpy(), expected.loc[observed.index, observed.columns].to_numpy())
    n_cells = adata.obs.groupby(["perturbation", "replicate"], observed=True, sort=False)["n_cells"].sum()
    assert {k: int(v) for k, v in n_cells.items()} == {(p, r): CELLS[p][REPLICATES.index(r)] for p, r in n_cells.index}
    # controls per replicate carry the batch effect, so a delta against the same replicate's control removes it
    batch = [adata.var_names.get_loc(g) for g in BATCH_GENES]
    counts = observed  # summed over each control replicate's two parts
    ratio = counts.loc["control|rep2", BATCH_GENES] / counts.loc["control|rep1", BATCH_GENES]
    assert ratio.between(3.2, 4.8).all()  # 4-fold batch effect (Poisson noise of about 1,200 vs 300 counts)
    # T3 has no effect: noise only. rep3 has 4-fold fewer counts on the batch genes (1.25 per cell), where a
    # profile, the mean of 30 cells' log1p(cp10k) (0 or about 3.6 and more per cell), has an SD of about 0.3
    noise = {"rep1": 0.3, "rep2": 0.3, "rep3": 0.6}
    for replicate in REPLICATES:
        assert np.abs(profile(adata, "T3", replicate)[batch] - profile(adata, "control", replicate)[batch]).mean() \
            < noise[replicate]
    assert np.abs(profile(adata, "T3", "rep2")[batch] - profile(adata, "control", "rep1")[batch]).mean() > 1.0


def test_too_small_replicates_and_conditions_are_left_out_and_counted(runs):
    adata, stderr = runs["biological"]["adata"], runs["biological"]["stderr"]
    assert adata.uns["n_replicate_profiles_too_few_cells"] == 1  # T4 rep3, 3 cells
    assert adata.uns["n_conditions_too_few_cells"] == 1 and adata.uns["n_cells_too_few_cells"] == 34  # T5
    assert "left out 1 replicate profiles of kept conditions with fewer than 10 cells (3 cells)" in stderr
    assert ("left out 1 of 7 conditions (34 cells): fewer than two replicates with at least 10 cells: "
            "T5/K562/none (34 cells)") in stderr
    card = adata.uns["dataset_report"]
    assert card["n_conditions_too_few_cells"] == 1 and card["min_cells_per_half"] == 10
    assert card["replicate_kind"] == "biological" and card["n_replicates"] == 3
    assert (card["replicates_per_condition_min"], card["replicates_per_condition_max"]) == (2, 3)
    assert (card["cells_per_condition_min"], card["cells_per_condition_median"], card["cells_per_condition_max"]) \
        == (60, 90.0, 180)


def test_random_halves_without_a_replicate_column(runs):
    run = runs["random_half"]
    assert run["exit_code"] == 0, run["stderr"]
    adata = run["adata"]
    assert adata.uns["replicate_kind"] == "random_half" and adata.uns["replicate_column"] == "none"
    assert set(adata.obs["replicate"]) == {"r1", "r2"} and adata.uns["n_replicates"] == 2
    # T5 (34 cells) has two halves of 17 cells now; nothing is left out
    assert adata.uns["n_conditions_too_few_cells"] == 0 and "T5" in set(adata.obs["perturbation"])
    assert "seeded random half" in adata.uns["dataset_description"]


def test_a_listed_study_uses_its_known_replicate_column_unless_turned_off(runs):
    on, off = runs["known_study"], runs["known_study_off"]
    assert on["exit_code"] == 0 and off["exit_code"] == 0, on["stderr"] + off["stderr"]
    assert on["adata"].uns["replicate_kind"] == "biological" and on["adata"].uns["replicate_column"] == "gemgroup"
    assert set(on["adata"].obs["replicate"]) == set(REPLICATES)
    assert "replicate (obs['gemgroup']: 10x GEM group (lane))" in on["adata"].uns["dataset_description"]
    assert off["adata"].uns["replicate_kind"] == "random_half" and set(off["adata"].obs["replicate"]) == {"r1", "r2"}


def test_a_replicate_column_that_does_not_exist_is_an_error(runs):
    run = runs["no_such_column"]
    errors = [line for line in run["stderr"].splitlines() if line.startswith("[error]")]
    assert run["exit_code"] == 1 and len(errors) == 1, run["stderr"]
    assert "obs has no replicate column 'donor'" in errors[0] and "bio_rep" in errors[0]
    assert not run["output"].exists()


def load_in_process(path, source, *, replicate_column, seed=0, n_top_genes=10, keep=None):
    cells = harmonize_cells(path, source.obs, perturbation_column="perturbation", perturbation_type="knockout",
                            cell_type="K562", replicate_column=replicate_column, keep=keep, log=lambda m: None)
    genes = pd.DataFrame({"symbol": source.var_names.to_numpy(), "gene_id": None})
    return pseudobulk(path, cells, values="counts", seed=seed, min_cells=10, n_top_genes=n_top_genes, genes=genes,
                      uns={"dataset_id": "generated"}, log=lambda m: None)


def test_genes_are_chosen_on_condition_means_not_on_replicate_batches(tmp_path):
    source = replicate_screen()
    path = tmp_path / "screen.h5ad"
    source.write_h5ad(path)
    adata = load_in_process(path, source, replicate_column="bio_rep")
    # per profile the batch genes vary most (16-fold between rep2 and rep3); across condition means they hardly do
    assert set(adata.var_names) == {g for genes in RESPONSIVE.values() for g in genes} | {"T1", "T2", "T3", "T4"}
    assert sorted(adata.var.loc[[g for genes in RESPONSIVE.values() for g in genes], "highly_variable_rank"]) \
        == list(range(10))  # the measured targets (no effect on their own mRNA here) are kept, ranked after
    assert adata.uns["gene_selection"] == ("14 of 60 genes: the 10 most variable across condition means "
                                           "(log-normalised expression of each perturbation x cell type x condition "
                                           "over all its cells, every condition of the dataset counted once, controls "
                                           "included; the same genes for every split and fold) plus 4 measured target "
                                           "genes outside them")


def test_card_names_missing_targets_and_the_gene_selection(runs):
    adata = runs["biological"]["adata"]
    card = adata.uns["dataset_report"]
    assert card["n_targets"] == 5 and card["n_targets_missing_from_panel"] == 1
    assert list(card["targets_missing_from_panel"]) == ["TX"]
    assert card["gene_selection"] == adata.uns["gene_selection"] == \
        "all 60 genes of the source (no selection by the loader)"


def test_gene_selection_does_not_depend_on_how_cells_are_split_into_replicates(tmp_path):
    """The same cells pseudobulked per biological replicate or in random halves (or with another seed)
    give the same genes and the same variability ranks: each condition counts once, whatever its profiles."""
    source = replicate_screen(seed=3)
    path = tmp_path / "screen.h5ad"
    source.write_h5ad(path)
    kept = ~source.obs["perturbation"].isin(["T4", "T5"]).to_numpy()  # no replicate profile is too small
    results = {name: load_in_process(path, source, replicate_column=column, seed=seed, n_top_genes=8, keep=kept)
               for name, column, seed in (("biological", "bio_rep", 0), ("halves", None, 0), ("other_seed", None, 5))}
    # biological: 4 conditions x 3 replicates + 3 control replicates x 2 control parts; halves: 4 x 2 + 2 x 2
    assert results["biological"].n_obs == 18 and results["halves"].n_obs == 12
    for name in ("halves", "other_seed"):
        assert list(results[name].var_names) == list(results["biological"].var_names)
        np.testing.assert_array_equal(results[name].var["highly_variable_rank"],
                                      results["biological"].var["highly_variable_rank"])


def test_log_normalised_sources_average_each_replicates_cells(tmp_path):
    """GEARS-like log values: a replicate's profile is the mean of its own cells' values."""
    source = gears_like(n_cells=900, seed=4)
    source.obs["bio_rep"] = np.random.default_rng(99).choice(["rep1", "rep2", "rep3"], source.n_obs)
    path = tmp_path / "gears.h5ad"
    source.write_h5ad(path)
    cells = harmonize_cells(path, source.obs, perturbation_column="condition", perturbation_type="activation",
                            cell_type_column="cell_type", replicate_column="bio_rep", log=lambda m: None)
    adata = pseudobulk(path, cells, values="log", seed=0, min_cells=5, n_top_genes=0,
                       genes=gene_table(path, symbol_column="gene_name"), uns={"dataset_id": "gears_like"},
                       log=lambda m: None)
    assert adata.uns["replicate_kind"] == "biological" and adata.n_obs == 6 * 3 + 3  # + the controls' parts
    labels = [f"{harmonize_perturbation(c)}|{r}" for c, r in zip(source.obs["condition"], source.obs["bio_rep"])]
    expected = pd.DataFrame(source.X.toarray(), index=labels).groupby(level=0).mean()
    keys = (adata.obs["perturbation"].astype(str) + "|" + adata.obs["replicate"].astype(str)).to_numpy()
    weights = adata.obs["n_cells"].to_numpy(dtype=np.float64)
    weighted = pd.DataFrame(np.asarray(adata.X, dtype=np.float64) * weights[:, None], index=keys).groupby(level=0).sum()
    means = weighted.div(pd.Series(weights, index=keys).groupby(level=0).sum(), axis=0)
    np.testing.assert_allclose(means.to_numpy(), expected.loc[means.index].to_numpy(), atol=1e-5)


def test_assign_profiles_with_replicate_labels():
    cells = pd.DataFrame({"perturbation": ["control"] * 9 + ["A"] * 7 + ["B"] * 4 + ["C"] * 2,
                          "perturbation_type": "knockdown", "cell_type": "K562", "condition": "none",
                          "replicate": ["b1", "b2", "b10"] * 3 + ["b1"] * 3 + ["b2"] * 3 + [None] + ["b1", "b2"] * 2
                          + ["b1", "b10"]})
    messages = []
    codes, profiles = assign_profiles(cells, seed=0, min_cells=2, log=messages.append)
    # natural label order (b2 before b10); A's cell without a label is left out; C has one cell per label
    assert list(profiles.index) == ["A|K562|none|b1", "A|K562|none|b2", "B|K562|none|b1", "B|K562|none|b2",
                                    "control|K562|none|b1", "control|K562|none|b2", "control|K562|none|b10"]
    assert profiles["n_cells"].tolist() == [3, 3, 2, 2, 3, 3, 3] and codes[15] == -1 and (codes[20:] == -1).all()
    assert profiles.attrs["replicate_kind"] == "biological" and profiles.attrs["left_out"]["n_conditions"] == 1
    assert any("C/K562/none (2 cells)" in m for m in messages)
    again, _ = assign_profiles(cells, seed=7, min_cells=2, log=messages.append)
    assert np.array_equal(codes, again)  # whole replicates: the seed plays no part


def test_card_on_known_biological_replicates(tmp_path):
    """Profiles = base + replicate batch + perturbation effect: against the same replicates' controls the
    halves' deltas are the effect itself (split-half Pearson 1); a perturbation without effect has only noise."""
    rng = np.random.default_rng(0)
    n_genes = 200
    base, effect = rng.normal(5, 1, n_genes), rng.normal(0, 1, n_genes)
    batch = {r: rng.normal(0, 2, n_genes) for r in REPLICATES}  # larger than the effect
    rows, X = [], []
    for name, signal in (("control", 0 * effect), ("A", effect), ("NULL", 0 * effect)):
        for r in REPLICATES:
            noise = rng.normal(0, 0.3, n_genes) if name == "NULL" else 0
            rows.append({"perturbation": name, "is_control": name == "control", "perturbation_type": "knockout",
                         "n_targets": int(name != "control"), "cell_type": "K562", "condition": "none",
                         "replicate": r, "n_cells": 20})
            X.append(base + batch[r] + signal + noise)
    adata = ad.AnnData(X=np.array(X, dtype=np.float32), obs=pd.DataFrame(rows, index=[str(i) for i in range(9)]),
                       var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
                       uns={"replicate_kind": "biological", "replicate_column": "bio_rep"})
    assert replicate_halves(["rep1", "rep2", "rep3"], REPLICATES) == (["rep1", "rep3"], ["rep2"])
    assert replicate_halves(["rep1", "rep3"], REPLICATES) == (["rep1"], ["rep3"])  # both in half 1: alternate
    report = dataset_report(adata)
    assert report["replicate_reproducibility_per_context"]["K562|none"] < 0.6  # A at 1, NULL near 0
    assert report["n_reproducible_effect"] == 1 and report["share_reproducible_effect"] == 0.5
    assert report["n_targets_missing_from_panel"] == 2 and list(report["targets_missing_from_panel"]) == ["A", "NULL"]
    assert report["replicate_kind"] == "biological" and report["n_replicates"] == 3
    assert report["n_conditions_too_few_cells"] == 0 and report["cells_per_condition_median"] == 60.0
    adata.uns["dataset_report"] = report  # writable into an h5ad as it is
    adata.write_h5ad(tmp_path / "card.h5ad")
    assert ad.read_h5ad(tmp_path / "card.h5ad").uns["dataset_report"]["n_reproducible_effect"] == 1



def test_cells_without_a_replicate_label_are_left_out():
    obs = pd.DataFrame({"perturbation": ["control", "A", "A", "B"], "bio_rep": ["r1", None, " r2 ", "nan"]})
    messages = []
    cells = harmonize_cells("x.h5ad", obs, perturbation_column="perturbation", perturbation_type="knockout",
                            cell_type="K562", replicate_column="bio_rep", log=messages.append)
    assert cells["perturbation"].tolist() == ["control", None, "A", None]
    assert cells["replicate"].tolist() == ["r1", None, "r2", None]
    assert messages == ["left out 2 cells without a replicate label in obs['bio_rep']"]
    obs["bio_rep"] = None
    with pytest.raises(Exception, match=r"file 'x.h5ad': obs\['bio_rep'\] gives no cell a replicate label"):
        harmonize_cells("x.h5ad", obs, perturbation_column="perturbation", perturbation_type="knockout",
                        cell_type="K562", replicate_column="bio_rep", log=messages.append)
