"""Cells through the contract: loaders' dataset_cells, tasks' train_cells / solution_cells, the leakage
checks of cells, and the engine passing cells files only to components that declare them.

Real data: the Norman 2019 cells of PerturBench's development file and the Datlinger 2017 CROP-seq subset
(../shared/data; skipped when absent); generated data for the memory bound (200,000 cells).
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from conftest import ROOT, shared_file
from perturbcast.leakage import check_split
from perturbcast.runner import run_component

sys.path.insert(0, str(ROOT / "src" / "utils"))
import cell_files  # noqa: E402
import partitions  # noqa: E402
import splits  # noqa: E402
from formats import check_anndata  # noqa: E402

FORMATS = {name: yaml.safe_load((ROOT / "src" / "api" / f"file_{name}.yaml").read_text())["info"]["format"]
           for name in ("dataset_cells", "train_cells", "solution_cells", "prediction_cells")}


def run(component, args, workdir: Path):
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "log.txt", "w") as log:
        result = run_component(ROOT / component, [str(a) for a in args], stderr=log, stdout=subprocess.DEVNULL)
    return result.exit_code, (workdir / "log.txt").read_text()


@pytest.fixture(scope="module")
def norman(tmp_path_factory):
    source = shared_file("perturbench_devel.h5ad")
    out = tmp_path_factory.mktemp("norman")
    code, log = run("src/datasets/perturbench_devel", ["--input", source, "--study", "norman19", "--output",
                    out / "common.h5ad", "--output_cells", out / "cells.h5ad", "--max_cells_per_condition", 40,
                    "--max_control_cells", 60], out)
    assert code == 0, log
    return {"source": source, "common": out / "common.h5ad", "cells": out / "cells.h5ad", "dir": out}


@pytest.fixture(scope="module")
def datlinger(tmp_path_factory):
    source = shared_file("datlinger2017_jurkat_subset.h5ad")
    out = tmp_path_factory.mktemp("datlinger")
    code, log = run("src/datasets/scperturb", ["--input", source, "--study", "DatlingerBock2017", "--output",
                    out / "common.h5ad", "--output_cells", out / "cells.h5ad", "--max_cells_per_condition", 0,
                    "--max_control_cells", 0], out)
    assert code == 0, log
    return {"source": source, "common": out / "common.h5ad", "cells": out / "cells.h5ad", "dir": out}


def test_norman_cells_are_the_profiles_cells_capped_and_seeded(norman, tmp_path):
    cells, common = ad.read_h5ad(norman["cells"]), ad.read_h5ad(norman["common"])
    assert check_anndata(cells, FORMATS["dataset_cells"]) == []
    assert sp.issparse(cells.X) and cells.X.format == "csr" and cells.X.dtype == np.float32
    assert list(cells.var_names) == list(common.var_names)
    sizes = cells.obs.groupby(["perturbation", "cell_type", "condition"], observed=True).size()
    control = sizes.index.get_level_values("perturbation") == "control"
    assert sizes[~control].max() == 40 and sizes[control].max() == 60
    # every profile keeps cells (the draw deals over the replicates), labels are the profile's
    assert set(cells.obs["profile_id"]) == set(common.obs_names)
    profile = common.obs.loc[cells.obs["profile_id"].to_numpy()]
    for column in ("perturbation", "cell_type", "condition", "replicate", "perturbation_type"):
        assert (profile[column].astype(str).to_numpy() == cells.obs[column].astype(str).to_numpy()).all()
    # X is the source's log-normalised values of those cells
    source = ad.read_h5ad(norman["source"])
    rows = cells.obs["source_index"].to_numpy()
    assert np.abs(source.X[rows].toarray() - cells.X.toarray()).max() < 1e-5
    # the same seed draws the same cells, another seed others
    code, log = run("src/datasets/perturbench_devel", ["--input", norman["source"], "--output", tmp_path / "c.h5ad",
                    "--output_cells", tmp_path / "cells.h5ad", "--max_cells_per_condition", 40,
                    "--max_control_cells", 60, "--cells_seed", 1], tmp_path)
    assert code == 0, log
    other = ad.read_h5ad(tmp_path / "cells.h5ad").obs["source_index"].to_numpy()
    assert len(other) == len(rows) and not np.array_equal(other, rows)


def test_datlinger_cells_counts_add_up_to_the_profiles(datlinger):
    cells, common = ad.read_h5ad(datlinger["cells"]), ad.read_h5ad(datlinger["common"])
    assert check_anndata(cells, FORMATS["dataset_cells"]) == []
    counts = cells.layers["counts"]
    assert sp.issparse(counts) and np.array_equal(counts.data, np.round(counts.data))
    # uncapped: the cells' counts summed per profile are the profile's counts exactly
    codes = pd.Series(np.arange(common.n_obs), index=common.obs_names).loc[cells.obs["profile_id"]].to_numpy()
    indicator = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(common.n_obs, len(codes)))
    assert np.array_equal((indicator @ counts.astype(np.float64)).toarray(), np.asarray(common.layers["counts"]))
    # X = log1p(counts per 10k), the total over all of the source's 2,000 genes (here all are kept)
    source = ad.read_h5ad(datlinger["source"])
    rows = cells.obs["source_index"].to_numpy()
    raw = source.X[rows][:, source.var_names.get_indexer(cells.var_names)].toarray()
    totals = np.asarray(source.X[rows].sum(axis=1)).ravel()
    assert np.array_equal(raw, counts.toarray())
    assert np.abs(np.log1p(raw / totals[:, None] * 1e4) - cells.X.toarray()).max() < 1e-5


def split_with_cells(common_path, cells_path, task, fold, out: Path, n_folds=5):
    """One fold of a task made in process (the functions the task components call) with its cells files."""
    common = ad.read_h5ad(common_path)
    folds = {"unseen_perturbation": partitions.perturbation_fold, "unseen_combination": partitions.combination_fold,
             "cell_type_transfer": partitions.transfer_fold}
    is_test, stratum, exclude, info = folds[task](common.obs, n_folds, fold, 0)
    assignment = {}
    train, test, solution = splits.build_split(common, is_test, stratum, task_id=task, seed=0, n_folds=n_folds,
                                               fold=fold, exclude=exclude, assignment=assignment)
    out.mkdir(parents=True, exist_ok=True)
    for name, adata in (("train", train), ("test", test), ("solution", solution)):
        adata.write_h5ad(out / f"{name}.h5ad")
    cell_files.write_split_cells(cells_path, common, assignment, out / "train_cells.h5ad",
                                 out / "solution_cells.h5ad", dict(train.uns), dict(train.uns), log=lambda m: None)
    return train, solution


@pytest.mark.parametrize("task", ["unseen_combination", "unseen_perturbation"])
def test_every_fold_of_norman_splits_its_cells_without_leakage(norman, tmp_path, task):
    dataset_cells = ad.read_h5ad(norman["cells"], backed="r").obs
    solution_cells_seen = set()
    for fold in range(5):
        out = tmp_path / f"fold_{fold}"
        train, solution = split_with_cells(norman["common"], norman["cells"], task, fold, out)
        assert check_split(out / "train.h5ad", out / "test.h5ad", out / "solution.h5ad", common_path=norman["common"],
                           train_cells_path=out / "train_cells.h5ad", solution_cells_path=out / "solution_cells.h5ad",
                           cells_path=norman["cells"]) == []
        train_cells, solution_cells = ad.read_h5ad(out / "train_cells.h5ad"), ad.read_h5ad(out / "solution_cells.h5ad")
        assert check_anndata(train_cells, FORMATS["train_cells"]) == []
        assert check_anndata(solution_cells, FORMATS["solution_cells"]) == []
        assert set(train_cells.obs["profile_id"]) == set(train.obs_names)
        assert set(solution_cells.obs["condition_id"]) == set(solution.obs_names)
        # a condition's cells in half h are the cells of the profiles averaged into replicate_h
        for condition_id, group in solution_cells.obs.groupby("condition_id", observed=True):
            assert set(group["replicate_half"]) == {1, 2}
            for half in (1, 2):
                members = group[group["replicate_half"] == half]
                cells_mean = np.asarray(solution_cells[members.index].X.mean(axis=0)).ravel()
                layer = np.asarray(solution[condition_id].layers[f"replicate_{half}"]).ravel()
                # the devel file has all cells of a profile only uncapped: compare directions, not values
                assert np.corrcoef(cells_mean, layer)[0, 1] > 0.9
        solution_cells_seen |= set(solution_cells.obs["source_index"])
    # across the folds every eligible condition's cells were held out once
    eligible = dataset_cells[dataset_cells["n_targets"] >= (2 if task == "unseen_combination" else 1)]
    assert set(eligible["source_index"]) == solution_cells_seen


def test_leakage_check_catches_cells_in_the_wrong_file(norman, tmp_path):
    out = tmp_path / "split"
    split_with_cells(norman["common"], norman["cells"], "unseen_combination", 0, out)
    solution_cells = ad.read_h5ad(out / "solution_cells.h5ad")
    train_cells = ad.read_h5ad(out / "train_cells.h5ad")
    # one held-out cell smuggled into training, relabelled as a training profile's cell
    leaked = ad.concat([train_cells, solution_cells[:1]], merge="first")
    smuggled = train_cells.obs.iloc[:1].rename(index=lambda i: "leak")
    smuggled["source_index"] = solution_cells.obs["source_index"].iloc[:1].to_numpy()
    leaked.obs = pd.concat([train_cells.obs, smuggled])
    leaked.uns = dict(train_cells.uns)
    leaked.write_h5ad(tmp_path / "leaked_train_cells.h5ad")
    problems = check_split(out / "train.h5ad", out / "test.h5ad", out / "solution.h5ad",
                           train_cells_path=tmp_path / "leaked_train_cells.h5ad",
                           solution_cells_path=out / "solution_cells.h5ad", cells_path=norman["cells"])
    assert any("identical cell" in p for p in problems), problems
    assert any("unexpected" in p for p in problems), problems
    # a cell with its own labels: caught by its profile and its condition
    labelled = ad.concat([train_cells, solution_cells[:1]], merge="first")
    labelled.obs = pd.concat([train_cells.obs, solution_cells.obs.iloc[:1][train_cells.obs.columns]])
    labelled.uns = dict(train_cells.uns)
    labelled.write_h5ad(tmp_path / "labelled.h5ad")
    problems = check_split(out / "train.h5ad", out / "test.h5ad", out / "solution.h5ad",
                           train_cells_path=tmp_path / "labelled.h5ad")
    assert any("not in training" in p for p in problems) and any("held-out conditions" in p for p in problems)
    # a held-out condition without cells
    first = solution_cells.obs["condition_id"].iloc[0]
    solution_cells[solution_cells.obs["condition_id"] != first].write_h5ad(tmp_path / "partial.h5ad")
    problems = check_split(out / "train.h5ad", out / "test.h5ad", out / "solution.h5ad",
                           solution_cells_path=tmp_path / "partial.h5ad")
    assert any("have no cells" in p for p in problems), problems


def test_task_component_writes_cells_and_refuses_half_the_arguments(datlinger, tmp_path):
    files = {name: tmp_path / f"{name}.h5ad" for name in ("train", "test", "solution", "train_cells", "solution_cells")}
    base = ["--input", datlinger["common"], "--output_train", files["train"], "--output_test", files["test"],
            "--output_solution", files["solution"], "--fold", 2]
    code, log = run("src/tasks/unseen_perturbation", base + ["--input_cells", datlinger["cells"],
                    "--output_train_cells", files["train_cells"], "--output_solution_cells", files["solution_cells"]],
                    tmp_path / "ok")
    assert code == 0, log
    assert check_split(files["train"], files["test"], files["solution"], train_cells_path=files["train_cells"],
                       solution_cells_path=files["solution_cells"], cells_path=datlinger["cells"]) == []
    assert "counts" in ad.read_h5ad(files["solution_cells"]).layers
    with h5py.File(files["train_cells"]) as handle:  # cells files are stored compressed (component_io.COMPRESSION)
        assert {handle[f"{matrix}/{part}"].compression for matrix in ("X", "layers/counts")
                for part in ("data", "indices")} == {"gzip"}
    for name in files.values():
        name.unlink()
    code, log = run("src/tasks/unseen_perturbation", base + ["--output_train_cells", files["train_cells"]],
                    tmp_path / "half")
    assert code == 1 and "[error] --output_train_cells was given without --input_cells" in log
    assert not any(path.exists() for path in files.values())
    # cells of another dataset: one line, nothing written
    code, log = run("src/tasks/unseen_perturbation", base + ["--input_cells", shared_file("perturbench_devel.h5ad"),
                    "--output_train_cells", files["train_cells"], "--output_solution_cells", files["solution_cells"]],
                    tmp_path / "wrong")
    assert code == 1 and "[error] --input_cells" in log
    assert not any(path.exists() for path in files.values())


def test_simulated_grn_cells_add_up_exactly(tmp_path):
    loader = yaml.safe_load((ROOT / "src/datasets/simulated_grn/config.vsh.yaml").read_text())
    small = [x for key, value in loader["info"]["test_arguments"].items() for x in (f"--{key}", value)]
    code, log = run("src/datasets/simulated_grn", ["--output", tmp_path / "c.h5ad", "--output_cells",
                    tmp_path / "cells.h5ad", "--max_cells_per_condition", 0, "--max_control_cells", 0, *small], tmp_path)
    assert code == 0, log
    cells, common = ad.read_h5ad(tmp_path / "cells.h5ad"), ad.read_h5ad(tmp_path / "c.h5ad")
    assert len(cells) == int(common.obs["n_cells"].sum())
    per_profile = pd.DataFrame.sparse.from_spmatrix(cells.layers["counts"]).groupby(
        cells.obs["profile_id"].to_numpy()).sum()
    assert np.array_equal(per_profile.loc[common.obs_names].to_numpy(dtype=np.float64),
                          np.asarray(common.layers["counts"], dtype=np.float64))


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, sys.argv[1])
    import anndata as ad, numpy as np
    import cell_files, partitions, splits
    from pseudobulk import gene_table, harmonize_cells, pseudobulk, read_obs
    source, out = sys.argv[2], sys.argv[3]
    start = time.time()
    obs = read_obs(source, ["perturbation", "replicate"])
    cells = harmonize_cells(source, obs, perturbation_column="perturbation", perturbation_type="knockdown",
                            cell_type="K562", log=lambda m: None)
    common = pseudobulk(source, cells, values="counts", seed=0, min_cells=5, n_top_genes=0,
                        genes=gene_table(source), uns={"dataset_id": "generated", "normalization_id": "log_cp10k"},
                        log=lambda m: None, chunk_nnz=2_000_000, cells_output=out + "/cells.h5ad",
                        cells_options={"max_cells": 0, "max_control": 0, "seed": 0})
    loader_seconds = time.time() - start
    is_test, stratum, exclude, info = partitions.perturbation_fold(common.obs, 5, 0, 0)
    assignment = {}
    train, test, solution = splits.build_split(common, is_test, stratum, task_id="unseen_perturbation", seed=0,
                                               n_folds=5, fold=0, exclude=exclude, assignment=assignment)
    n_train, n_solution = cell_files.write_split_cells(out + "/cells.h5ad", common, assignment,
                                                       out + "/train_cells.h5ad", out + "/solution_cells.h5ad",
                                                       dict(train.uns), dict(train.uns), log=lambda m: None)
    # ru_maxrss survives fork+exec, so it would report the (large, late in a full run) pytest parent;
    # VmHWM belongs to this process's own address space.
    try:
        status = open("/proc/self/status").read()
        peak_bytes = int(status.split("VmHWM:")[1].split()[0]) * 1024
    except (OSError, IndexError):
        peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": peak_bytes,
                      "loader_seconds": loader_seconds, "task_seconds": time.time() - start - loader_seconds,
                      "n_genes": common.n_vars, "n_train": n_train, "n_solution": n_solution}))
""")


def write_generated_source(path: Path, n_cells: int, n_genes: int, density: float, seed: int = 0):
    """A CSR count matrix of n_cells written block by block with h5py (never whole in memory)."""
    import h5py

    rng = np.random.default_rng(seed)
    n_perturbations = 400
    labels = np.array(["control"] + [f"GENE{i}" for i in range(1, n_perturbations)], dtype=object)
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels[rng.integers(0, n_perturbations, n_cells)])},
                       index=[f"c{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"GENE{i}" for i in range(n_genes)])
    ad.AnnData(obs=obs, var=var).write_h5ad(path)
    with h5py.File(path, "a") as handle:
        if "X" in handle:
            del handle["X"]
        group = handle.create_group("X")
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                            "shape": np.array([n_cells, n_genes])})
        data = group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 16,))
        indices = group.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 16,))
        indptr = [np.zeros(1, dtype=np.int64)]
        for start in range(0, n_cells, 20_000):
            block = sp.random(min(20_000, n_cells - start), n_genes, density=density, format="csr", random_state=rng,
                              data_rvs=lambda k: rng.integers(1, 20, k))
            n = data.shape[0]
            data.resize((n + block.nnz,))
            indices.resize((n + block.nnz,))
            data[n:], indices[n:] = block.data, block.indices
            indptr.append(block.indptr[1:] + indptr[-1][-1])
        group.create_dataset("indptr", data=np.concatenate(indptr))


def test_200k_cells_stream_in_bounded_memory(tmp_path):
    n_cells, n_genes = 200_000, 2_000
    source = tmp_path / "generated.h5ad"
    write_generated_source(source, n_cells, n_genes, density=0.03)
    completed = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(ROOT / "src" / "utils"), str(source),
                                str(tmp_path)], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    cells = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    assert cells.shape == (n_cells, measured["n_genes"]) and measured["n_train"] + measured["n_solution"] <= n_cells
    dense_bytes = n_cells * measured["n_genes"] * 4  # the float32 dense matrix of the kept genes alone
    print(f"200k cells: peak {measured['peak_bytes'] / 2**20:.0f} MiB vs dense {dense_bytes / 2**20:.0f} MiB; "
          f"loader {measured['loader_seconds']:.1f} s, task {measured['task_seconds']:.1f} s; "
          f"cells file {os.path.getsize(tmp_path / 'cells.h5ad') / 2**20:.0f} MiB")
    assert measured["peak_bytes"] < 0.5 * dense_bytes


# ---------------------------------------------------------------------------------------------- engine

CELL_METHOD = '''\
import sys
import anndata as ad
import numpy as np
import pandas as pd
## VIASH START
par = {}
meta = {"resources_dir": "."}
## VIASH END
sys.path.append(meta["resources_dir"])
from component_io import ComponentIO
io = ComponentIO(par, meta)
train, test = io.read("input_train"), io.read("input_test")
cells = ad.read_h5ad(par["input_train_cells"])
control = cells[cells.obs["is_control"].to_numpy()]
mean = np.asarray(control.X.mean(axis=0)).ravel()
uns = {"dataset_id": train.uns["dataset_id"], "task_id": train.uns["task_id"], "method_id": "control_cells"}
prediction = ad.AnnData(X=np.tile(mean, (test.n_obs, 1)).astype(np.float32), obs=pd.DataFrame(index=test.obs_names),
                        var=pd.DataFrame(index=train.var_names), uns=uns)
import scipy.sparse as sp
per_condition = control.X[:5]  # every test condition gets the same five training control cells
predicted = ad.AnnData(X=sp.vstack([per_condition] * test.n_obs).tocsr(), var=pd.DataFrame(index=train.var_names),
                       uns=uns, obs=pd.DataFrame({"condition_id": np.repeat(test.obs_names.to_numpy(), per_condition.shape[0])},
                                                 index=[f"p{i}" for i in range(per_condition.shape[0] * test.n_obs)]))
io.write_all({"output": prediction, "output_cells": predicted})
'''


@pytest.fixture(scope="module")
def cell_project(tmp_path_factory):
    """The project plus a method that reads training cells and writes cells, and a metric that declares them."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "_viash.yaml", root)
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    method = root / "src" / "methods" / "control_cells"
    method.mkdir()
    config = yaml.safe_load((ROOT / "src" / "methods" / "additive" / "config.vsh.yaml").read_text())
    config.update({"name": "control_cells", "label": "Control cells", "summary": "Training control cells.",
                   "info": {}, "resources": [{"type": "python_script", "path": "script.py"},
                                             {"path": "/src/utils/component_io.py"}, {"path": "/src/utils/formats.py"},
                                             {"path": "/src/utils/vocabulary.py"}]})
    config["arguments"] = [
        {"name": "--input_train_cells", "__merge__": "/src/api/file_train_cells.yaml", "direction": "input",
         "required": False},
        {"name": "--output_cells", "__merge__": "/src/api/file_prediction_cells.yaml", "direction": "output",
         "required": False}]
    (method / "config.vsh.yaml").write_text(yaml.safe_dump(config))
    (method / "script.py").write_text(CELL_METHOD)
    metric = root / "src" / "metrics" / "delta_error"
    config = yaml.safe_load((metric / "config.vsh.yaml").read_text())
    config.setdefault("arguments", []).append(
        {"name": "--input_prediction_cells", "__merge__": "/src/api/file_prediction_cells.yaml", "direction": "input",
         "required": False})
    (metric / "config.vsh.yaml").write_text(yaml.safe_dump(config))
    return root


def test_engine_passes_cells_only_where_declared(cell_project, tmp_path):
    from perturbcast.cli import main
    from perturbcast.engine import Selection, plan

    steps, _ = plan(cell_project, tmp_path, Selection(datasets=["simulated_grn_small"], tasks=["unseen_perturbation"],
                                                      methods=["control_cells", "linear_baseline"],
                                                      metrics=["delta_error", "delta_correlation"], folds=[0]))
    by_id = {step.id: step for step in steps}
    split = "simulated_grn_small/unseen_perturbation/seed_0/fold_0"
    assert "output_cells" in by_id["dataset/simulated_grn_small"].outputs
    assert {"input_cells"} <= set(by_id[f"split/{split}"].inputs)
    assert {"output_train_cells", "output_solution_cells"} <= set(by_id[f"split/{split}"].outputs)
    assert "input_train_cells" in by_id[f"predict/{split}/control_cells"].inputs
    assert "output_cells" in by_id[f"predict/{split}/control_cells"].outputs
    assert not any("cells" in name for name in {**by_id[f"predict/{split}/linear_baseline"].inputs,
                                                **by_id[f"predict/{split}/linear_baseline"].outputs})
    assert "input_prediction_cells" in by_id[f"score/{split}/control_cells/delta_error"].inputs
    assert "input_prediction_cells" not in by_id[f"score/{split}/linear_baseline/delta_error"].inputs  # no cells made
    assert not any("cells" in name for name in by_id[f"score/{split}/control_cells/delta_correlation"].inputs)
    # end to end: every step runs, the split's cells pass the leakage check, the method's cells are scored
    output = tmp_path / "bench"
    assert main(["benchmark", "--project", str(cell_project), "--output", str(output), "--datasets",
                 "simulated_grn_small", "--tasks", "unseen_perturbation", "--methods", "control_cells", "--metrics",
                 "delta_error", "--folds", "0", "--jobs", "2"]) == 0
    trace = pd.read_csv(output / "trace.tsv", sep="\t")
    assert set(trace["status"]) == {"ok"}, trace[trace["status"] != "ok"].to_string()
    assert (output / "tasks" / split / "train_cells.h5ad").exists()
    predicted = ad.read_h5ad(output / "predictions" / split / "control_cells" / "prediction_cells.h5ad")
    assert check_anndata(predicted, FORMATS["prediction_cells"]) == []
    log = (output / "scores" / split / "control_cells" / "delta_error" / "log.txt").read_text()
    assert "--input_prediction_cells" in log.splitlines()[0]


def test_row_hashes_match_cells_equal_to_four_decimals_whatever_the_file_layout(tmp_path):
    """The content check's hashes (perturbcast.leakage_cells.row_hashes): a cell equal to another to 4 decimals
    hashes alike, in a plain or a compressed file; a value that differs in the 4th decimal, a value on another
    gene, an empty cell: all different."""
    import scipy.sparse as sp

    from perturbcast.leakage_cells import row_hashes

    rows = sp.csr_matrix(np.array([[0.0, 1.23456, 2.0], [0.0, 1.23436, 2.0], [0.0, 1.2347, 2.0],
                                   [1.23456, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 1.234561, 2.0]], dtype=np.float32))
    ad.AnnData(X=rows).write_h5ad(tmp_path / "plain.h5ad")
    ad.AnnData(X=rows).write_h5ad(tmp_path / "gzip.h5ad", compression="gzip")
    plain, packed = row_hashes(tmp_path / "plain.h5ad"), row_hashes(tmp_path / "gzip.h5ad")
    assert np.array_equal(plain, packed)
    assert plain[0] == plain[5]  # 1.23456 and 1.234561: 1.2346 both
    assert len(set(plain[[0, 1, 2, 3, 4]])) == 5  # 1.2346, 1.2344, 1.2347, another gene, none
