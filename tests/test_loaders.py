"""Dataset loaders (perturbench_devel, scperturb, gears) and their shared machinery (src/utils: harmonize,
pseudobulk, dataset_report), without network: source files are put into $PERTURBCAST_CACHE exactly as a
completed download leaves them (the file at the URL's cache path plus its checksum record).

The real subsets in ../shared/data stand in for PerturBench's development file and scPerturb's
DatlingerBock2017; GEARS archives and broken sources are written by the tests."""
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbcast.config import load_config
from perturbcast.runner import run_component

from conftest import ROOT, SHARED_DATA, shared_file

sys.path.insert(0, str(ROOT / "src" / "utils"))
import download  # noqa: E402
from dataset_report import dataset_report  # noqa: E402
from harmonize import (DEFAULT_DROP_PART, harmonize_cell_type, harmonize_perturbation,  # noqa: E402
                       harmonize_perturbation_type)
from pseudobulk import SourceError, assign_profiles, harmonize_cells, stream_sums  # noqa: E402

DATASETS = ROOT / "src" / "datasets"
PERTURBENCH_URL = "https://raw.githubusercontent.com/altoslabs/perturbench/d357dfae/src/perturbench/data/resources/devel.h5ad"
PERTURBENCH_SHA256 = "220998f5630c813228c8661c86dd52244b9ac87127511289af90e0d900d8429b"
ZENODO = "https://zenodo.org/records/13350497/files/{}.h5ad"
DATAVERSE = "https://dataverse.harvard.edu/api/access/datafile/{}"


def place(cache: Path, url: str, source: Path | bytes) -> Path:
    """Put a file where the loaders' downloader leaves `url`, with the record of a completed download."""
    target = Path(download.cache_path(url, root=str(cache)))
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, bytes):
        target.write_bytes(source)
    else:
        shutil.copyfile(source, target)
    download.write_record(str(target), url=url, sha256=download.sha256_file(str(target)),
                          verified_against="placed by the test")
    return target


def run_loader(component: str, args: list, workdir: Path) -> dict:
    """Run a loader through the runner (which validates the output); exit code, stderr and the output."""
    workdir.mkdir(parents=True, exist_ok=True)
    output, log = workdir / "output.h5ad", workdir / "stderr.txt"
    with open(log, "w") as stderr:
        result = run_component(DATASETS / component, [*map(str, args), "--output", str(output)],
                               stderr=stderr, stdout=subprocess.DEVNULL)
    return {"exit_code": result.exit_code, "stderr": log.read_text(), "output": output,
            "adata": ad.read_h5ad(output) if result.exit_code == 0 and output.exists() else None}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PERTURBCAST_CACHE", str(root))
        yield root


def gears_like(n_cells=600, n_genes=40, seed=0, conditions=None, cell_type=True) -> ad.AnnData:
    """A small file in GEARS' perturb_processed.h5ad layout: log-normalised X, obs['condition'] as ctrl/A+ctrl/A+B."""
    rng = np.random.default_rng(seed)
    symbols = [f"GENE{i}" for i in range(n_genes)]
    conditions = conditions or ["ctrl", "GENE1+ctrl", "ctrl+GENE2", "GENE3+ctrl", "GENE2+GENE1", "GENE5+ctrl"]
    obs = pd.DataFrame({"condition": pd.Categorical(rng.choice(conditions, n_cells)),
                        "dose_val": "1+1", "control": 0}, index=[f"c{i}" for i in range(n_cells)])
    if cell_type:
        obs["cell_type"] = "K562"
    X = sp.random(n_cells, n_genes, density=0.4, format="csr", random_state=seed, dtype=np.float32)
    X.data = np.log1p(X.data * 10).astype(np.float32)
    var = pd.DataFrame({"gene_name": symbols}, index=[f"ENSG{i:011d}" for i in range(n_genes)])
    return ad.AnnData(X=X, obs=obs, var=var)


def zipped(adata: ad.AnnData, folder: str, tmp: Path) -> bytes:
    h5ad = tmp / f"{folder}.h5ad"
    adata.write_h5ad(h5ad)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr(f"{folder}/go.csv", "a,b\n")
        bundle.write(h5ad, f"{folder}/perturb_processed.h5ad")
    return buffer.getvalue()


def tar_gz(adata: ad.AnnData, folder: str, tmp: Path) -> bytes:
    h5ad = tmp / f"{folder}.h5ad"
    adata.write_h5ad(h5ad)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        bundle.add(h5ad, arcname=f"{folder}/perturb_processed.h5ad")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def runs(cache, tmp_path_factory):
    """Every successful loader run of this module, made once and in parallel (each is a subprocess)."""
    tmp = tmp_path_factory.mktemp("loaders")
    jobs = {}
    devel = SHARED_DATA / "perturbench_devel.h5ad"
    datlinger = SHARED_DATA / "datlinger2017_jurkat_subset.h5ad"
    if devel.exists():
        place(cache, PERTURBENCH_URL, devel)
        jobs["norman19"] = ("perturbench_devel", ["--study", "norman19"])
        jobs["mcfaline23"] = ("perturbench_devel", ["--study", "mcfaline23"])
    if datlinger.exists():
        place(cache, ZENODO.format("DatlingerBock2017"), datlinger)
        jobs["datlinger"] = ("scperturb", ["--study", "DatlingerBock2017"])
        jobs["datlinger_top100"] = ("scperturb", ["--study", "DatlingerBock2017", "--n_top_genes", 100, "--seed", 1])
        jobs["datlinger_summed"] = ("scperturb", ["--study", "DatlingerBock2017", "--normalization", "log_cp10k"])
    place(cache, DATAVERSE.format(6154020), zipped(gears_like(), "norman", tmp))
    place(cache, DATAVERSE.format(7458694), tar_gz(gears_like(seed=1, cell_type=False), "replogle_rpe1_essential", tmp))
    jobs["gears_norman"] = ("gears", ["--dataset", "norman", "--min_cells_per_half", 5])
    jobs["gears_rpe1"] = ("gears", ["--dataset", "replogle_rpe1_essential", "--min_cells_per_half", 5])
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(run_loader, component, args, tmp / key) for key, (component, args) in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def successful(runs, key: str, data_file: str | None = None):
    if data_file:
        shared_file(data_file)  # skips with a clear reason when ../shared/data is absent
    run = runs[key]
    assert run["exit_code"] == 0, run["stderr"]
    return run["adata"], run["stderr"]


def condition_means(source: ad.AnnData, label_column: str, rows) -> pd.DataFrame:
    X = source.X[rows].toarray() if sp.issparse(source.X) else np.asarray(source.X[rows])
    return pd.DataFrame(X, index=source.obs[label_column].astype(str).to_numpy()[rows]).groupby(level=0).mean()


# ------------------------------------------------------------------------------------------ real data

def test_perturbench_norman2019(runs):
    adata, stderr = successful(runs, "norman19", "perturbench_devel.h5ad")
    obs = adata.obs
    assert adata.uns["dataset_id"] == "norman2019_devel"
    assert adata.uns["normalization_id"] == "log_cp10k_cell_mean" and "counts" not in adata.layers
    assert adata.uns["source_sha256"] == PERTURBENCH_SHA256
    assert set(obs["cell_type"]) == {"K562"} and set(obs["condition"]) == {"none"}
    assert set(obs["perturbation_type"]) == {"activation"} and set(obs["replicate"]) == {"r1", "r2"}
    # 33 perturbations x 2 replicate halves, and the control's 2 halves x 2 control parts
    assert obs["perturbation"].nunique() == 34 and adata.n_obs == 70 and adata.n_vars == 500
    assert sorted(obs.loc[obs["is_control"], "control_part"]) == [1, 1, 2, 2]
    combos = obs.loc[obs["n_targets"] == 2, "perturbation"].unique()
    assert len(combos) == 15 and "KLF1+MAP2K6" in combos and "KLF1+SET" in combos  # SET+KLF1 sorted
    assert all(p == "+".join(sorted(p.split("+"))) for p in obs["perturbation"])
    assert "MAP3K21" in set(obs["perturbation"]) and "KIAA1804" not in set(obs["perturbation"])
    assert obs.loc[obs["is_control"], "perturbation"].eq("control").all() and obs["is_control"].sum() == 4
    assert adata.var["highly_variable_rank"].sort_values().tolist() == list(range(500))
    # the replicate halves together are the mean of all of the condition's cells
    source = ad.read_h5ad(shared_file("perturbench_devel.h5ad"))
    expected = condition_means(source, "condition", np.flatnonzero(source.obs["dataset"] == "norman19"))
    weights = obs["n_cells"].to_numpy()[:, None]
    observed = (pd.DataFrame(adata.X * weights, index=obs["perturbation"].to_numpy()).groupby(level=0).sum()
                / obs.groupby("perturbation", observed=True)["n_cells"].sum().to_numpy()[:, None])
    expected.index = [harmonize_perturbation(i) for i in expected.index]
    np.testing.assert_allclose(observed.loc[expected.index].to_numpy(), expected.to_numpy(), atol=1e-5)
    in_study = source.obs["dataset"] == "norman19"
    assert obs["n_cells"].sum() == in_study.sum() == 3375
    assert obs.loc[obs["is_control"], "n_cells"].sum() == ((source.obs["condition"] == "control") & in_study).sum()
    report = adata.uns["dataset_report"]
    assert report["n_perturbations"] == 33 and report["n_combinations"] == 15 and report["n_cell_types"] == 1
    assert report["perturbations_per_type"] == {"activation": 33}
    assert -1 <= report["replicate_reproducibility"] <= 1 and -1 <= report["median_pairwise_delta_correlation"] <= 1
    assert "dataset report (norman2019_devel)" in stderr and "replicate reproducibility" in stderr
    # the QC card: no replicate column in the devel file, so random halves; 30 of the 31 targets are not
    # among PerturBench's 500 genes; 29 of 33 perturbations agree between halves beyond r = 0.2
    assert adata.uns["replicate_kind"] == "random_half" and adata.uns["n_conditions_too_few_cells"] == 0
    assert (report["replicate_kind"], report["n_replicates"], report["min_cells_per_half"]) == ("random_half", 2, 10)
    assert (report["cells_per_condition_min"], report["cells_per_condition_median"], report["cells_per_condition_max"]) \
        == (80, 100.0, 100)
    assert report["n_targets"] == 31 and report["n_targets_missing_from_panel"] == 30
    assert "KLF1" in set(report["targets_missing_from_panel"]) and report["gene_selection"].startswith("all 500 genes")
    assert (report["n_reproducible_effect"], report["n_perturbation_conditions_assessed"]) == (29, 33)
    assert "reproducible effect (split-half Pearson of deltas > 0.2): 29 of 33" in stderr


def test_perturbench_mcfaline2023(runs):
    adata, _ = successful(runs, "mcfaline23", "perturbench_devel.h5ad")
    obs = adata.obs
    assert adata.uns["dataset_id"] == "mcfaline2023_devel"
    assert set(obs["cell_type"]) == {"A172", "T98G", "U87MG"}
    assert set(obs["perturbation_type"]) == {"knockdown"}
    assert obs.groupby("cell_type", observed=True)["perturbation"].nunique().to_dict() == {"A172": 10, "T98G": 10, "U87MG": 10}
    assert obs["n_cells"].sum() == 2586 and adata.uns["dataset_report"]["n_cell_types"] == 3
    report = adata.uns["dataset_report"]
    assert report["n_targets_missing_from_panel"] == 9 == report["n_targets"]  # no target among the 500 genes
    assert (report["cells_per_condition_min"], report["cells_per_condition_max"]) == (46, 100)
    assert (report["n_reproducible_effect"], report["n_perturbation_conditions_assessed"]) == (4, 27)


def test_scperturb_datlinger2017(runs):
    adata, stderr = successful(runs, "datlinger", "datlinger2017_jurkat_subset.h5ad")
    obs = adata.obs
    assert adata.uns["dataset_id"] == "datlinger2017" and adata.uns["normalization_id"] == "log_cp10k_cell_mean"
    assert set(obs["condition"]) == {"stimulated", "unstimulated"}
    assert set(obs["cell_type"]) == {"Jurkat"} and set(obs["perturbation_type"]) == {"knockout"}
    # 40 perturbation conditions x 2 halves, 2 control conditions x 2 halves x 2 control parts
    assert obs[["perturbation", "condition"]].drop_duplicates().shape[0] == 42 and adata.n_obs == 88
    assert obs["perturbation"].nunique() == 21 and obs["n_cells"].sum() == 7500 and adata.n_vars == 2000
    # counts are the sums of the cells' raw counts; X is the mean of the cells' log1p(cp10k): a condition's
    # profiles, weighted by their cells, average to the mean over all its cells
    source = ad.read_h5ad(shared_file("datlinger2017_jurkat_subset.h5ad"))
    key = (source.obs["perturbation"].astype(str) + "|" + source.obs["perturbation_2"].astype(str)).to_numpy()
    raw = source.X.toarray().astype(np.float64)
    expected = pd.DataFrame(raw, index=key, columns=source.var_names).groupby(level=0).sum()
    profile_key = (obs["perturbation"].astype(str) + "|" + obs["condition"].astype(str)).to_numpy()
    counts = adata.layers["counts"]
    observed = pd.DataFrame(counts, index=profile_key, columns=adata.var_names).groupby(level=0).sum()
    np.testing.assert_array_equal(observed.loc[expected.index, expected.columns].to_numpy(), expected.to_numpy())
    cell_logs = pd.DataFrame(np.log1p(raw / raw.sum(axis=1, keepdims=True) * 1e4), index=key,
                             columns=source.var_names).groupby(level=0).mean()
    weighted = pd.DataFrame(adata.X * obs["n_cells"].to_numpy()[:, None], index=profile_key,
                            columns=adata.var_names).groupby(level=0).sum()
    weighted = weighted.div(obs.groupby(profile_key)["n_cells"].sum(), axis=0)
    np.testing.assert_allclose(weighted.loc[cell_logs.index, cell_logs.columns].to_numpy(), cell_logs.to_numpy(),
                               rtol=1e-5, atol=1e-5)
    # --normalization log_cp10k: the same profiles' summed counts, X = log1p(cp10k) of them
    summed, _ = successful(runs, "datlinger_summed")
    assert summed.uns["normalization_id"] == "log_cp10k" and list(summed.obs_names) == list(obs.index)
    np.testing.assert_array_equal(summed.layers["counts"], counts)
    np.testing.assert_allclose(summed.X, np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4), rtol=1e-5, atol=1e-5)
    assert "log1p(counts per 10k)" in summed.uns["dataset_description"]
    # per-cell normalisation finds reproducible effects where the log of summed counts finds none
    # (benchmarks/normalisation.py)
    assert (summed.uns["dataset_report"]["n_reproducible_effect"],
            summed.uns["dataset_report"]["n_perturbation_conditions_assessed"]) == (0, 40)
    report = adata.uns["dataset_report"]
    assert report["conditions"] == {"stimulated": 21, "unstimulated": 21} and report["cells_per_profile_min"] >= 10
    assert "obs has no column 'cell_line'" in stderr  # the subset lacks it: the known study's cell type is used
    # nor has it the study's replicate column: random halves, said in the log, uns and the card
    assert "obs has no column 'replicate' with the replicates of study DatlingerBock2017" in stderr
    assert adata.uns["replicate_kind"] == "random_half" and adata.uns["replicate_column"] == "none"
    assert "seeded random half" in adata.uns["dataset_description"]
    assert (report["cells_per_condition_min"], report["cells_per_condition_median"], report["cells_per_condition_max"]) \
        == (60, 173.0, 279)
    assert report["n_targets"] == 20 and report["n_targets_missing_from_panel"] == 14
    assert "LCK" in set(report["targets_missing_from_panel"])
    assert (report["n_reproducible_effect"], report["n_perturbation_conditions_assessed"]) == (9, 40)
    assert report["n_conditions_too_few_cells"] == 0


def test_scperturb_gene_selection_and_seed(runs):
    top, _ = successful(runs, "datlinger_top100", "datlinger2017_jurkat_subset.h5ad")
    full, _ = successful(runs, "datlinger", "datlinger2017_jurkat_subset.h5ad")
    targets = {t for p in full.obs["perturbation"] if p != "control" for t in p.split("+")} & set(full.var_names)
    assert targets <= set(top.var_names)
    assert top.n_vars == 100 + len(targets - set(top.var_names[top.var["highly_variable_rank"] < 100]))
    assert sorted(top.var["highly_variable_rank"]) == list(range(top.n_vars))
    # another seed splits each condition's cells into other halves; together they are the same cells
    assert list(top.obs_names) == list(full.obs_names)
    seed0, seed1 = full[:, top.var_names].layers["counts"], top.layers["counts"]
    assert not np.array_equal(seed0, seed1)
    conditions = list(zip(full.obs["perturbation"], full.obs["condition"]))

    def per_condition(counts):  # the profiles of a condition (halves, control parts) add up to its cells
        frame = pd.DataFrame(np.asarray(counts, dtype=np.float64))
        return frame.groupby(pd.Index(conditions)).sum().to_numpy()
    np.testing.assert_array_equal(per_condition(seed0), per_condition(seed1))


def test_gears_archives(runs):
    norman, stderr = successful(runs, "gears_norman")
    assert norman.uns["dataset_id"] == "norman2019_gears" and norman.uns["normalization_id"] == "log_normalized_cell_mean"
    assert set(norman.obs["perturbation"]) == {"control", "GENE1", "GENE2", "GENE3", "GENE1+GENE2", "GENE5"}
    assert set(norman.obs["perturbation_type"]) == {"activation"} and "counts" not in norman.layers
    assert norman.var_names[0] == "GENE0" and norman.var["gene_id"].iloc[0] == "ENSG00000000000"
    assert "extracted perturb_processed.h5ad" in stderr
    rpe1, _ = successful(runs, "gears_rpe1")  # a tar.gz archive, and no cell_type column
    assert rpe1.uns["dataset_id"] == "replogle2022_rpe1_essential_gears"
    assert set(rpe1.obs["cell_type"]) == {"RPE1"} and set(rpe1.obs["perturbation_type"]) == {"knockdown"}
    source = gears_like()
    expected = condition_means(source, "condition", np.arange(source.n_obs))
    expected.index = [harmonize_perturbation(i) for i in expected.index]
    obs = norman.obs
    observed = (pd.DataFrame(norman.X * obs["n_cells"].to_numpy()[:, None], index=obs["perturbation"].to_numpy())
                .groupby(level=0).sum() / obs.groupby("perturbation", observed=True)["n_cells"].sum().to_numpy()[:, None])
    np.testing.assert_allclose(observed.loc[expected.index].to_numpy(), expected.to_numpy(), atol=1e-5)


def test_info_datasets_name_the_ids_the_loaders_write(runs):
    written = {key: run["adata"].uns["dataset_id"] for key, run in runs.items() if run["adata"] is not None}
    declared = {}
    for component in ("perturbench_devel", "scperturb", "gears"):
        config = load_config(DATASETS / component)
        for dataset in config.info["datasets"]:
            assert dataset["default"] is False  # they need the network
            declared[tuple(sorted(dataset["arguments"].items()))] = dataset["id"]
    expected = {"norman19": (("study", "norman19"),), "mcfaline23": (("study", "mcfaline23"),),
                "datlinger": (("study", "DatlingerBock2017"),), "gears_norman": (("dataset", "norman"),),
                "gears_rpe1": (("dataset", "replogle_rpe1_essential"),)}
    for key, arguments in expected.items():
        if key in written:
            assert written[key] == declared[arguments], key


# ------------------------------------------------------------------------------------------ bad sources

def _write(adata: ad.AnnData, tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.h5ad"
    adata.write_h5ad(path)
    return path


def _counts_source(rng, n_cells=60, n_genes=12) -> ad.AnnData:
    X = sp.csr_matrix(rng.poisson(2.0, (n_cells, n_genes)).astype(np.float32))
    obs = pd.DataFrame({"perturbation": rng.choice(["control", "GENE1", "GENE2"], n_cells),
                        "perturbation_type": "CRISPR", "cell_line": "K562"}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"GENE{i}" for i in range(n_genes)]))


@pytest.fixture(scope="module")
def broken_runs(cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("broken")
    rng = np.random.default_rng(0)
    sources = {}
    no_column = _counts_source(rng)
    no_column.obs = no_column.obs.rename(columns={"perturbation": "guide"})
    sources["no_perturbation_column"] = (_write(no_column, tmp, "a"), "no perturbation column 'perturbation'")
    no_controls = _counts_source(rng)
    no_controls.obs["perturbation"] = rng.choice(["GENE1", "GENE2"], no_controls.n_obs)
    sources["no_controls"] = (_write(no_controls, tmp, "b"), "no control cells")
    normalised = _counts_source(rng)
    normalised.X = normalised.X.copy()
    normalised.X.data = np.log1p(normalised.X.data)
    sources["non_integer_counts"] = (_write(normalised, tmp, "c"), "non-integer values")
    duplicated = _counts_source(rng)
    duplicated.var_names = ["GENE0", "GENE1"] * 6
    sources["duplicated_genes"] = (_write(duplicated, tmp, "d"), "duplicated gene name")
    sources["empty_file"] = (b"", "file is empty")
    jobs = {}
    for name, (source, problem) in sources.items():
        study = f"Broken_{name}"
        cached = place(cache, ZENODO.format(study), source if isinstance(source, bytes) else Path(source))
        jobs[name] = ("scperturb", ["--study", study], cached, problem)
    no_member = io.BytesIO()
    with zipfile.ZipFile(no_member, "w") as bundle:
        bundle.writestr("dixit/readme.txt", "nothing here")
    cached = place(cache, DATAVERSE.format(6154416), no_member.getvalue())
    jobs["archive_without_h5ad"] = ("gears", ["--dataset", "dixit"], cached, "holds no 'perturb_processed.h5ad'")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_loader, component, args, tmp / name)
                   for name, (component, args, _, _) in jobs.items()}
        return {name: (future.result(), jobs[name][2], jobs[name][3]) for name, future in futures.items()}


@pytest.mark.parametrize("case", ["no_perturbation_column", "no_controls", "non_integer_counts", "duplicated_genes",
                                  "empty_file", "archive_without_h5ad"])
def test_malformed_source_ends_with_one_clear_message(broken_runs, case):
    run, cached, problem = broken_runs[case]
    assert run["exit_code"] == 1, run["stderr"]
    errors = [line for line in run["stderr"].splitlines() if line.startswith("[error]")]
    assert len(errors) == 1, run["stderr"]
    assert str(cached) in errors[0] and problem in errors[0], errors[0]
    assert "Traceback" not in run["stderr"]
    assert not run["output"].exists()


# ------------------------------------------------------------------------------------------ shared machinery

def test_harmonize_labels_and_types():
    scperturb = {"separators": ("+", "_"), "drop_part": DEFAULT_DROP_PART}
    assert harmonize_perturbation("KLF1_CEBPE", **scperturb) == "CEBPE+KLF1"
    assert harmonize_perturbation("SNAI1_pDS266", **scperturb) == "SNAI1"
    assert harmonize_perturbation("ZAP70_2", **scperturb) == "ZAP70"
    assert harmonize_perturbation("PSG11", **scperturb) == "PSG11"  # a gene, not a plasmid id
    for control in ("ctrl", "control", "non-targeting", "NT", "Non-Targeting", "ctrl+ctrl"):
        assert harmonize_perturbation(control) == "control"
    assert harmonize_perturbation("MAPK1+ctrl") == "MAPK1" and harmonize_perturbation("ctrl+MAPK1") == "MAPK1"
    assert harmonize_perturbation("TGFBR2+MAPK1") == "MAPK1+TGFBR2"
    assert harmonize_perturbation("G12") == "G12"  # guide-number parts are only dropped when asked
    for unassigned in (None, "nan", "*", "", "<NA>"):
        assert harmonize_perturbation(unassigned) is None
    expected = {"CRISPR": "knockout", "CRISPRko": "knockout", "KO": "knockout", "CRISPRi": "knockdown",
                "CRISPRa": "activation", "ORF": "overexpression", "overexpression": "overexpression"}
    assert {k: harmonize_perturbation_type(k) for k in expected} == expected
    assert harmonize_perturbation_type("drug") is None
    assert [harmonize_cell_type(c) for c in ("k562", "Jurkat cells", "hTERT-RPE1", "neurons")] == \
        ["K562", "Jurkat", "RPE1", "neurons"]


def test_assign_profiles_is_seeded_and_drops_small_conditions():
    cells = pd.DataFrame({"perturbation": ["control"] * 10 + ["A"] * 7 + ["B"] * 3 + [None] * 2,
                          "perturbation_type": "knockdown", "cell_type": "K562", "condition": "none"})
    messages = []
    codes, profiles = assign_profiles(cells, seed=3, min_cells=2, log=messages.append)
    # each control half (5 cells) is cut into its two control parts (3 and 2)
    assert list(profiles.index) == ["A|K562|none|r1", "A|K562|none|r2", "control|K562|none|r1|p1",
                                    "control|K562|none|r1|p2", "control|K562|none|r2|p1", "control|K562|none|r2|p2"]
    assert profiles["n_cells"].tolist() == [4, 3, 3, 2, 3, 2]
    assert profiles["control_part"].tolist() == [0, 0, 1, 2, 1, 2]
    assert (codes[17:] == -1).all() and any("left out 1 of 3 conditions (3 cells): fewer than 2 cells per random half" in m and "B/K562/none (3 cells)" in m for m in messages)
    again, _ = assign_profiles(cells, seed=3, min_cells=2, log=messages.append)
    other, _ = assign_profiles(cells, seed=4, min_cells=2, log=messages.append)
    assert np.array_equal(codes, again) and not np.array_equal(codes, other)


@pytest.mark.parametrize("layout", ["csr", "csc", "dense"])
def test_stream_sums_match_an_in_memory_sum(tmp_path, monkeypatch, layout):
    rng = np.random.default_rng(1)
    X = sp.random(500, 30, density=0.3, format="csr", random_state=1, dtype=np.float32)
    X.data = np.round(X.data * 20) + 1
    matrix = {"csr": X, "csc": X.tocsc(), "dense": X.toarray()}[layout]
    path = tmp_path / "x.h5ad"
    ad.AnnData(X=matrix, var=pd.DataFrame(index=[f"g{i}" for i in range(30)])).write_h5ad(path)
    dense = X.toarray()
    for codes in (rng.integers(-1, 7, 500), np.sort(rng.integers(0, 7, 500))):  # shuffled; ordered by profile
        sums = stream_sums(path, codes, 7, counts=True, chunk_nnz=100)  # many small blocks
        np.testing.assert_allclose(sums, np.vstack([dense[codes == k].sum(axis=0) for k in range(7)]))
    X.data[5] = 0.5
    ad.AnnData(X={"csr": X, "csc": X.tocsc(), "dense": X.toarray()}[layout]).write_h5ad(path)
    with pytest.raises(SourceError, match="non-integer values"):
        stream_sums(path, np.zeros(500, dtype=int), 1, counts=True)
    import matrix_stream

    monkeypatch.setattr(matrix_stream, "COUNT_CHECK_SAMPLE", 2)  # past the checked values: the sums show it
    with pytest.raises(SourceError, match=r"non-integer values \(e.g. [0-9.]*5\)"):
        stream_sums(path, codes.clip(0), 7, counts=True)
    X.data[5] = -1
    ad.AnnData(X={"csr": X, "csc": X.tocsc(), "dense": X.toarray()}[layout]).write_h5ad(path)
    with pytest.raises(SourceError, match="negative values"):
        stream_sums(path, codes, 7, counts=True)


@pytest.mark.parametrize("layout", ["csr", "csc"])
def test_stream_sums_without_the_compiled_kernels(tmp_path, monkeypatch, layout):
    import matrix_stream

    X = sp.random(200, 10, density=0.5, format=layout, random_state=2, dtype=np.float32)
    path = tmp_path / "x.h5ad"
    ad.AnnData(X=X).write_h5ad(path)
    codes = np.arange(200) % 4 - 1  # some cells left out
    expected = stream_sums(path, codes, 3)
    for kernel in ("_coo_todense", "_csr_todense", "_csr_row_index"):  # the numpy fallbacks
        monkeypatch.setattr(matrix_stream, kernel, None)
    np.testing.assert_allclose(stream_sums(path, codes, 3, chunk_nnz=50), expected)
    np.testing.assert_allclose(expected, np.vstack([X.toarray()[codes == k].sum(axis=0) for k in range(3)]), rtol=1e-6)


def test_harmonize_cells_messages_name_the_file():
    obs = pd.DataFrame({"perturbation": ["control", "A", "B"], "perturbation_type": ["CRISPRi"] * 3})
    with pytest.raises(SourceError, match=r"file 'x.h5ad': obs has no cell type column 'cell_line'"):
        harmonize_cells("x.h5ad", obs, perturbation_column="perturbation", perturbation_type_column="perturbation_type",
                        cell_type_column="cell_line")
    adamson = pd.DataFrame({"guide": ["62(mod)_pBA581", "SNAI1_pDS266", "*", "63(mod)_pBA580"], "kind": "CRISPR"})
    cells = harmonize_cells("x.h5ad", adamson, perturbation_column="guide", perturbation_type="CRISPRi",
                            cell_type="k562", control_labels=["62(mod)", "63(mod)"], separators=("+", "_"),
                            drop_part=DEFAULT_DROP_PART, log=lambda message: None)
    assert cells["perturbation"].tolist() == ["control", "SNAI1", None, "control"]
    assert set(cells["perturbation_type"]) == {"knockdown"} and set(cells["cell_type"]) == {"K562"}
    obs["perturbation_type"] = ["drug"] * 3
    with pytest.raises(SourceError, match="not a genetic perturbation type"):
        harmonize_cells("x.h5ad", obs, perturbation_column="perturbation", perturbation_type_column="perturbation_type",
                        cell_type="K562")


def test_dataset_report_on_a_known_dataset(tmp_path):
    genes = [f"g{i}" for i in range(6)]
    control = np.zeros(6)
    effect_a = np.array([0, 1.0, 2.0, 0.0, -1.0, 0.5])
    effect_b = -effect_a
    rows, X = [], []
    for name, effect in (("control", control), ("A", effect_a), ("B", effect_b)):
        for replicate in ("r1", "r2"):
            rows.append({"perturbation": name, "is_control": name == "control", "perturbation_type": "knockout",
                         "n_targets": int(name != "control"), "cell_type": "K562", "condition": "none",
                         "replicate": replicate, "n_cells": 10 if replicate == "r1" else 12})
            X.append(5 + effect)
    adata = ad.AnnData(X=np.array(X, dtype=np.float32), obs=pd.DataFrame(rows, index=[str(i) for i in range(6)]),
                       var=pd.DataFrame(index=genes))
    report = dataset_report(adata)
    assert report["replicate_reproducibility"] == pytest.approx(1.0)  # identical replicates
    assert report["median_pairwise_delta_correlation"] == pytest.approx(-1.0)  # A and B are opposite
    assert report["n_perturbations"] == 2 and report["cells_per_profile_min"] == 10
    assert report["cells_per_profile_median"] == 11.0
    adata.uns["dataset_report"] = report  # writable into an h5ad as it is
    adata.write_h5ad(tmp_path / "report.h5ad")
    assert ad.read_h5ad(tmp_path / "report.h5ad").uns["dataset_report"]["n_perturbations"] == 2


def test_configs_pass_the_viash_schema():
    validator = ROOT.parent / "shared" / "tools" / "validate-viash-config"
    if not validator.exists():
        pytest.skip("../shared/tools/validate-viash-config is absent")
    configs = [str(DATASETS / name / "config.vsh.yaml") for name in ("perturbench_devel", "scperturb", "gears")]
    completed = subprocess.run([sys.executable, str(validator), *configs], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
