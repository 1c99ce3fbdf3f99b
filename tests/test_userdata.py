"""Bring your own data: `perturbcast.userdata` and the h5ad_file loader on generated files."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbcast.runner import run_component
from perturbcast.userdata import UserDataError, dataset_step_arguments, parse_dataset_args

from conftest import ROOT

LOADER = ROOT / "src" / "datasets" / "h5ad_file"
TASKS = ("unseen_perturbation", "unseen_combination", "cell_type_transfer")
N_GENES = 40


def screen(n_cells_per_condition=40, seed=0) -> ad.AnnData:
    """A CRISPRi screen as a user would have it: raw counts, obs `target_gene` and `perturbation_type`
    (no `cell_line`), 12 single targets, 6 pairs, non-targeting controls; each target gene is knocked down
    and moves two downstream genes with it."""
    rng = np.random.default_rng(seed)
    genes = [f"GENE{i}" for i in range(N_GENES)]
    base = rng.gamma(2.0, 4.0, size=N_GENES)
    singles = genes[:12]
    pairs = [f"{singles[i]}+{singles[i + 1]}" for i in range(0, 12, 2)]
    labels, rows = [], []
    for label in ["non-targeting"] + singles + pairs:
        mean = base.copy()
        if label != "non-targeting":
            for target in label.split("+"):
                g = genes.index(target)
                mean[g] *= 0.1
                mean[12 + g] *= 3.0
                mean[24 + (g % 12)] *= 0.4
        rows.append(rng.poisson(mean, size=(n_cells_per_condition, N_GENES)))
        labels += [label] * n_cells_per_condition
    counts = np.vstack(rows).astype(np.float32)
    obs = pd.DataFrame({"target_gene": labels, "perturbation_type": "CRISPRi",
                        "guide": [f"g{i % 3}" for i in range(len(labels))]},
                       index=[f"cell{i}" for i in range(len(labels))])
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture(scope="module")
def screen_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "My Screen.h5ad"
    screen().write_h5ad(path)
    return path


def loader_argv(arguments: dict, output) -> list[str]:
    return [x for key, value in arguments.items() for x in (f"--{key}", str(value))] + ["--output", str(output)]


def test_cell_level_file_runs_through_the_loader_and_every_task(screen_file, tmp_path):
    loader, dataset_id, arguments = dataset_step_arguments(
        screen_file, dataset_args=parse_dataset_args(["perturbation_column=target_gene"]))
    assert (loader, dataset_id) == ("h5ad_file", "my_screen")
    assert arguments["input_format"] == "cells" and arguments["input"] == str(screen_file.resolve())
    dataset = tmp_path / "dataset.h5ad"
    assert run_component(LOADER, loader_argv(arguments, dataset)).exit_code == 0
    common = ad.read_h5ad(dataset)
    assert common.uns["dataset_id"] == "my_screen"
    assert common.uns["normalization_id"] == "log_cp10k_cell_mean"  # integer X is read as raw counts, the default
    assert set(common.obs["cell_type"]) == {"unspecified"}
    assert set(common.obs["perturbation_type"]) == {"knockdown"}  # CRISPRi, from the file's column
    # the two random halves of the non-targeting cells, each cut into its two control parts
    controls = common.obs[common.obs["is_control"].to_numpy()]
    assert len(controls) == 4 and sorted(zip(controls["replicate"], controls["control_part"])) == [
        ("r1", 1), ("r1", 2), ("r2", 1), ("r2", 2)]
    assert sorted(set(common.obs["perturbation"]) - {"control"})[:2] == ["GENE0", "GENE0+GENE1"]
    assert len(common.obs) == 2 * 18 + 4
    # the knocked-down target really is lower than in the controls (log cp10k of the pseudobulk)
    x = pd.DataFrame(np.asarray(common.X), index=common.obs["perturbation"].to_numpy(), columns=common.var_names)
    assert x.loc["GENE3", "GENE3"].mean() < x.loc["control", "GENE3"].mean() - 1.5

    outcomes = {}
    for task in TASKS:
        split = tmp_path / task
        result = run_component(ROOT / "src" / "tasks" / task, [
            "--input", str(dataset), "--output_train", str(split / "train.h5ad"), "--output_test",
            str(split / "test.h5ad"), "--output_solution", str(split / "solution.h5ad"), "--seed", "0"])
        outcomes[task] = result.exit_code
        if result.exit_code == 0:
            test = ad.read_h5ad(split / "test.h5ad")
            assert len(test) > 0 and "control" not in set(test.obs["perturbation"])
    # one cell type and condition: nothing to transfer between, so that task is not applicable (99)
    assert outcomes == {"unseen_perturbation": 0, "unseen_combination": 0, "cell_type_transfer": 99}


def test_log_normalised_x_and_a_fixed_cell_type(tmp_path):
    adata = screen(n_cells_per_condition=12, seed=1)
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray() / adata.X.toarray().sum(1, keepdims=True) * 1e4))
    path = tmp_path / "lognorm.h5ad"
    adata.write_h5ad(path)
    _, dataset_id, arguments = dataset_step_arguments(path, "lognorm_k562", {
        "perturbation_column": "target_gene", "perturbation_type": "knockdown", "cell_type": "K562",
        "control_label": "non-targeting", "min_cells_per_half": "3", "n_top_genes": "0"})
    output = tmp_path / "out.h5ad"
    assert run_component(LOADER, loader_argv(arguments, output)).exit_code == 0
    common = ad.read_h5ad(output)
    assert dataset_id == common.uns["dataset_id"] == "lognorm_k562"
    assert common.uns["normalization_id"] == "log_normalized_cell_mean" and "counts" not in common.layers
    assert set(common.obs["cell_type"]) == {"K562"} and common.n_vars == N_GENES
    # a profile is the mean of its cells' log values
    half = common.obs_names[(common.obs["perturbation"] == "GENE5").to_numpy()][0]
    assert common.obs.loc[half, "n_cells"] == 6


def test_common_dataset_is_passed_through(screen_file, tmp_path):
    _, _, arguments = dataset_step_arguments(screen_file, "first", {
        "perturbation_column": "target_gene", "perturbation_type": "knockdown", "control_label": "non-targeting",
        "min_cells_per_half": "5"})
    first = tmp_path / "first.h5ad"
    assert run_component(LOADER, loader_argv(arguments, first)).exit_code == 0
    loader, dataset_id, arguments = dataset_step_arguments(first)
    assert (dataset_id, arguments["input_format"]) == ("first", "common")
    again = tmp_path / "again.h5ad"
    assert run_component(LOADER, loader_argv({**arguments, "dataset_id": "renamed"}, again)).exit_code == 0
    a, b = ad.read_h5ad(first), ad.read_h5ad(again)
    assert b.uns["dataset_id"] == "renamed"
    np.testing.assert_array_equal(np.asarray(a.X), np.asarray(b.X))
    assert a.obs.equals(b.obs)
    with pytest.raises(UserDataError, match="already a common dataset"):
        dataset_step_arguments(first, dataset_args={"perturbation_column": "x"})


def test_broken_common_dataset_is_refused_with_one_line(screen_file, tmp_path, capfd):
    _, _, arguments = dataset_step_arguments(screen_file, "x", {
        "perturbation_column": "target_gene", "perturbation_type": "knockdown", "min_cells_per_half": "5"})
    good = tmp_path / "good.h5ad"
    assert run_component(LOADER, loader_argv(arguments, good)).exit_code == 0
    adata = ad.read_h5ad(good)
    del adata.obs["cell_type"]
    adata.write_h5ad(tmp_path / "bad.h5ad")
    _, _, arguments = dataset_step_arguments(tmp_path / "bad.h5ad")
    capfd.readouterr()
    assert run_component(LOADER, loader_argv(arguments, tmp_path / "out.h5ad")).exit_code == 1
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("[error]")]
    assert len(errors) == 1 and "cell_type" in errors[0] and "file_common_dataset" in errors[0]
    assert not (tmp_path / "out.h5ad").exists()


@pytest.mark.parametrize("args, dataset_id, message", [
    ({"perturbation_colum": "target_gene"}, None, "perturbation_colum: not an argument of the h5ad_file loader"),
    ({"perturbation_column": "gene"}, None, "obs has no column 'gene' (perturbation_column)"),
    ({"n_top_genes": "many"}, None, "n_top_genes=many: expected an integer"),
    ({"values": "raw"}, None, "values=raw: expected one of auto, counts, log"),
    ({"input": "x.h5ad"}, None, "input: set by perturbcast itself"),
    ({"perturbation_column": "target_gene"}, "my screen", "--dataset-id 'my screen'"),
    ({"perturbation_column": "target_gene", "cell_type_column": "cell_line"}, None,
     "obs has no column 'cell_line' (cell_type_column)"),
])
def test_bad_arguments_are_one_line(screen_file, args, dataset_id, message):
    with pytest.raises(UserDataError) as error:
        dataset_step_arguments(screen_file, dataset_id, args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_files_are_one_line(tmp_path):
    with pytest.raises(UserDataError, match="does not exist"):
        dataset_step_arguments(tmp_path / "absent.h5ad")
    (tmp_path / "table.h5ad").write_text("gene,value\n")
    with pytest.raises(UserDataError, match="not an h5ad"):
        dataset_step_arguments(tmp_path / "table.h5ad")
    with pytest.raises(UserDataError, match="expected KEY=VALUE"):
        parse_dataset_args(["perturbation_column"])
    assert parse_dataset_args(["control_label=NT", "control_label=safe"]) == {"control_label": ["NT", "safe"]}


def test_benchmark_runs_a_users_file_and_shows_it_in_the_report(screen_file, tmp_path):
    """`perturbcast benchmark --dataset-file` on a cell-level file without a cell_line column: every applicable
    task runs, the scale-setting controls are added, and the dataset is in the results and the report."""
    import pandas as pd

    from perturbcast.cli import main

    output = tmp_path / "bench"
    code = main(["benchmark", "--project", str(ROOT), "--output", str(output), "--dataset-file", str(screen_file),
                 "--dataset-id", "my_screen", "--dataset-arg", "perturbation_column=target_gene",
                 "--methods", "linear_baseline", "--metrics", "delta_error", "--folds", "0", "--n-resamples", "50",
                 "--jobs", "2"])
    assert code == 0
    trace = pd.read_csv(output / "trace.tsv", sep="\t")
    splits = trace[trace.stage == "split"].set_index("step")["status"]
    assert splits["split/my_screen/unseen_perturbation/seed_0/fold_0"] == "ok"
    assert splits["split/my_screen/cell_type_transfer/seed_0/fold_0"] == "not_applicable"  # one cell type
    results = pd.read_parquet(output / "results.parquet")
    assert set(results.dataset_id) == {"my_screen"}
    assert {"linear_baseline", "train_mean", "replicate_ceiling"} <= set(results.method_id)
    assert "my_screen" in (output / "report.html").read_text()


def test_benchmark_refuses_a_dataset_arg_without_a_file(tmp_path, capsys):
    from perturbcast.cli import main

    assert main(["benchmark", "--project", str(ROOT), "--output", str(tmp_path / "b"),
                 "--dataset-arg", "perturbation_column=x"]) == 2
    assert "--dataset-file" in capsys.readouterr().err


def test_a_common_dataset_file_with_cell_level_metrics_runs_them_as_not_applicable(tmp_path):
    """A `--dataset-file` already in the common format has profiles and no cells: its loader is not asked for
    cells (asking failed the dataset step and with it every step: found by benchmarks/scale.py --profiles-only),
    and the cell-level metric is not applicable while the others score."""
    import pandas as pd

    from perturbcast.cli import main

    output = tmp_path / "bench"
    code = main(["benchmark", "--project", str(ROOT), "--output", str(output), "--dataset-file",
                 str(ROOT / "resources_test" / "simulated_grn" / "common_dataset.h5ad"), "--dataset-id", "profiles",
                 "--tasks", "unseen_perturbation", "--methods", "train_mean", "--metrics", "delta_error",
                 "distribution_distance", "--folds", "0", "--n-resamples", "50", "--jobs", "2"])
    assert code == 0
    trace = pd.read_csv(output / "trace.tsv", sep="\t")
    assert trace.set_index("step").loc["dataset/profiles", "status"] == "ok"
    assert not (output / "datasets" / "profiles" / "dataset_cells.h5ad").exists()
    scores = trace[trace.stage == "score"]
    assert set(scores[scores.component == "distribution_distance"].status) == {"not_applicable"}
    assert "ok" in set(scores[scores.component == "delta_error"].status)
