"""The local engine end to end: the DAG, the leaderboard, caching, failure isolation, selection."""
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from perturbcast.cli import main

from conftest import ROOT

CRASHING_SCRIPT = """\
import sys
## VIASH START
par = {}
## VIASH END
raise RuntimeError("this method always crashes")
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project with one extra method that always crashes."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "_viash.yaml", root)
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    crashing = root / "src" / "methods" / "crashing"
    crashing.mkdir(parents=True)
    config = yaml.safe_load((ROOT / "src" / "control_methods" / "no_change" / "config.vsh.yaml").read_text())
    config.update({"__merge__": "../../api/comp_method.yaml", "name": "crashing", "label": "Crashing",
                   "summary": "Always raises.", "info": {}})
    config["resources"] = [{"type": "python_script", "path": "script.py"}]
    (crashing / "config.vsh.yaml").write_text(yaml.safe_dump(config))
    (crashing / "script.py").write_text(CRASHING_SCRIPT)
    return root


def benchmark(project, output, *extra):
    return main(["benchmark", "--project", str(project), "--output", str(output), "--datasets", "simulated_grn_small",
                 "--tasks", "unseen_perturbation", "--metrics", "delta_error", "--folds", "0", "--jobs", "2", *extra])


@pytest.fixture(scope="module")
def first_run(project, tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    assert benchmark(project, output) == 0
    return output


def trace(output: Path) -> pd.DataFrame:
    return pd.read_csv(output / "trace.tsv", sep="\t")


def test_every_step_runs_and_failures_are_isolated(first_run):
    steps = trace(first_run)
    crashed = steps[steps.step.str.contains("/crashing")]
    assert list(crashed.status) == ["failed", "skipped"]  # its prediction fails, its score is skipped
    assert "this method always crashes" in crashed.iloc[0].reason or "RuntimeError" in crashed.iloc[0].reason
    others = steps[~steps.step.str.contains("/crashing")]
    # additive has nothing to add where a fold holds no combination: not applicable, never failed
    # and a method whose extra is absent (latent_additive without PyTorch, as on a plain install) is
    # not installed, its scores not applicable because of it
    not_installed = others[others.status == "not_installed"]
    assert not_installed.step.str.contains("/latent_additive").all()
    inapplicable = others[others.status == "not_applicable"]
    assert (inapplicable.step.str.contains("/additive") | inapplicable.step.str.contains("/latent_additive")).all()
    others = others[~others.status.isin(["not_applicable", "not_installed"])]
    assert (others.status == "ok").all(), others[others.status != "ok"]
    assert (others.wall_seconds > 0).all() and (others.peak_rss_mib > 10).all()


def test_leaderboard_orders_controls(first_run):
    results = pd.read_parquet(first_run / "results.parquet")
    overall = results[results.stratum == "all"].set_index(["method_id", "metric_id"])["value"]
    # ground_truth predicts the observation itself; its delta differs from the observed one only by the two
    # independent control parts (tests/test_null_screen.py computes that difference by hand)
    others = [m for m in overall.index.get_level_values(0).unique() if m != "ground_truth"]
    assert all(overall["ground_truth", "pearson_delta"] > overall[m, "pearson_delta"] for m in others)
    assert all(overall["ground_truth", "mse_delta"] < overall[m, "mse_delta"] for m in others)
    for method in ("no_change", "train_mean"):
        assert overall[method, "pearson_delta"] < 0.99
        assert overall[method, "mse_delta"] > 1e-6
    scores = results[results.stratum == "all"].set_index(["method_id", "metric_id"])["score"]
    assert scores["train_mean", "pearson_delta"] == pytest.approx(0.0)
    assert scores["replicate_ceiling", "pearson_delta"] == pytest.approx(1.0)
    assert scores["ground_truth", "pearson_delta"] >= 1.0
    assert set(results.stratum) >= {"all", "single"}
    assert "ground_truth" in (first_run / "leaderboard.txt").read_text()


def test_rerun_is_cached(project, first_run):
    assert benchmark(project, first_run) == 0
    steps = trace(first_run)
    ok = steps[steps.status == "ok"]
    assert ok.cached.all()


def test_changed_component_reruns_only_its_steps(project, first_run):
    script = project / "src" / "control_methods" / "train_mean" / "script.py"
    script.write_text(script.read_text() + "\n# changed\n")
    assert benchmark(project, first_run) == 0
    steps = trace(first_run)
    rerun = set(steps[(steps.status == "ok") & ~steps.cached].step)
    assert rerun == {"predict/simulated_grn_small/unseen_perturbation/seed_0/fold_0/train_mean",
                     "score/simulated_grn_small/unseen_perturbation/seed_0/fold_0/train_mean/delta_error"}


def test_dry_run_lists_jobs(project, tmp_path, capsys):
    assert benchmark(project, tmp_path / "dry", "--dry-run") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("dataset/simulated_grn_small\tdatasets/simulated_grn")
    assert any(line.startswith("score/simulated_grn_small/unseen_perturbation/seed_0/fold_0/crashing/delta_error") for line in lines)
    assert not (tmp_path / "dry").exists()


def test_unknown_selection_is_a_clear_error(project, tmp_path, capsys):
    assert main(["benchmark", "--project", str(project), "--output", str(tmp_path), "--methods", "nope"]) == 1
    assert "unknown component(s) ['nope']" in capsys.readouterr().err


def test_every_fold_runs_and_the_partition_is_checked(project, tmp_path):
    """All folds of a partition: every eligible perturbation tested once, the check recorded in the trace,
    and results pool the folds (one row set per partition, n = all tested conditions)."""
    output = tmp_path / "bench"
    assert main(["benchmark", "--project", str(project), "--output", str(output), "--datasets", "simulated_grn_small",
                 "--tasks", "unseen_perturbation", "--methods", "train_mean", "--metrics", "delta_error",
                 "--n-folds", "3", "--jobs", "2", "--n-resamples", "50"]) == 0
    steps = trace(output)
    assert set(steps[steps.stage == "split"].step) == {
        *(f"split/simulated_grn_small/unseen_perturbation/seed_0/fold_{f}" for f in range(3)),
        "partition/simulated_grn_small/unseen_perturbation/seed_0"}
    assert (steps[steps.step.str.startswith("partition/")].status == "ok").all()
    per_condition = pd.read_parquet(output / "results_per_condition.parquet")
    mine = per_condition[(per_condition.method_id == "train_mean") & (per_condition.metric_id == "mse_delta")]
    assert sorted(mine.fold.unique()) == [0, 1, 2]
    assert not mine.condition.duplicated().any()  # each condition tested in exactly one fold
    import anndata as ad
    common = ad.read_h5ad(output / "datasets" / "simulated_grn_small" / "dataset.h5ad")
    perturbations = set(common.obs.loc[~common.obs.is_control.astype(bool), "perturbation"].astype(str))
    tested = {c.split("|")[0] for c in mine.condition}
    assert tested == perturbations
    results = pd.read_parquet(output / "results.parquet")
    row = results[(results.method_id == "train_mean") & (results.metric_id == "mse_delta") & (results.stratum == "all")]
    assert len(row) == 1 and int(row.n_conditions.iloc[0]) == len(mine)
