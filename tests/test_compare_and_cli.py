"""A new method compared with everything, folders that record their selection, exit codes a script can trust, and
the rough edges of the command line (issue 23: frictions 5-8 and 10)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from perturbcast import compare, layout
from perturbcast.cli import main
from perturbcast.engine_cli import exit_code, hint_lines, not_installed_lines, run_summary
from perturbcast.engine_guard import Progress
from perturbcast.steps import Selection, StepRecord

from conftest import ROOT

BASE = ["--datasets", "simulated_grn_small", "--tasks", "unseen_perturbation", "--metrics", "delta_error",
        "--n-folds", "2", "--n-resamples", "50", "--jobs", "2"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("compare") / "benchmark"
    assert main(["benchmark", "--project", str(ROOT), "--output", str(output), "--methods", "train_mean", *BASE]) == 0
    return output


def trace(output: Path) -> pd.DataFrame:
    return pd.read_csv(output / layout.TRACE, sep="\t")


def test_compare_runs_only_the_new_methods_steps_and_keeps_every_method(base_run, capsys):
    """Friction 8: `--methods mine` reran everything and left the other methods out."""
    capsys.readouterr()
    assert main(["benchmark", "--project", str(ROOT), "--compare", str(base_run), "--methods", "linear_baseline",
                 "--n-resamples", "50", "--jobs", "2"]) == 0
    output = Path(f"{base_run}-with_linear_baseline")
    assert f"results in {output}" in capsys.readouterr().err.replace("\n    ", " ")
    steps = trace(output)
    ran = steps[(~steps["cached"]) & (steps["status"] == "ok") & ~steps["step"].str.startswith(layout.PARTITION)]
    # 2 folds: linear_baseline's 2 predictions and their 2 delta_error scores; nothing else ran again
    assert sorted(ran["step"]) == sorted(
        [f"predict/simulated_grn_small/unseen_perturbation/seed_0/fold_{f}/linear_baseline" for f in (0, 1)]
        + [f"score/simulated_grn_small/unseen_perturbation/seed_0/fold_{f}/linear_baseline/delta_error" for f in (0, 1)])
    reused = steps[steps["cached"]]
    assert len(reused) == len(trace(base_run)) - 1  # all but the partition check, which is a record, not a step
    before = set(pd.read_parquet(base_run / layout.RESULTS)["method_id"])
    after = set(pd.read_parquet(output / layout.RESULTS)["method_id"])
    assert after == before | {"linear_baseline"}
    assert not (base_run / "predictions" / "simulated_grn_small" / "unseen_perturbation" / "seed_0" / "fold_0"
                / "linear_baseline").exists()  # the earlier folder is only read
    assert "linear_baseline" in (output / layout.LEADERBOARD).read_text()


def test_compare_needs_a_results_folder_and_methods(tmp_path, capsys):
    assert main(["benchmark", "--project", str(ROOT), "--compare", str(tmp_path), "--methods", "x"]) == 2
    assert "--compare" in capsys.readouterr().err
    assert main(["benchmark", "--project", str(ROOT), "--compare", str(tmp_path)]) == 2
    assert "needs --methods" in capsys.readouterr().err


def own_dataset(arguments: dict) -> Selection:
    return Selection(datasets=["my_screen"], extra_datasets=[{"id": "my_screen", "loader": "h5ad_file",
                                                             "arguments": arguments}])


def test_a_folder_made_with_other_dataset_arguments_is_never_reused(tmp_path):
    """Friction 7: a rerun with other --dataset-arg values wrote into the same folder."""
    folder = tmp_path / "benchmark-datasets_my_screen"
    folder.mkdir()
    compare.write_selection(folder, compare.selection_record(own_dataset({"condition_column": "perturbation_2"})))
    same = compare.selection_record(own_dataset({"condition_column": "perturbation_2"}))
    other = compare.selection_record(own_dataset({}))
    assert compare.folder_for(folder, same, chosen=False) == (folder, None)
    assert compare.folder_for(folder, compare.selection_record(Selection(datasets=["my_screen"], extra_datasets=[
        {"id": "my_screen", "loader": "h5ad_file", "arguments": {"condition_column": "perturbation_2"}}],
        methods=["mine"])), chosen=True) == (folder, None)  # other methods, same data: the same folder
    picked, problem = compare.folder_for(folder, other, chosen=False)
    assert problem is None and re.fullmatch(r"benchmark-datasets_my_screen-[0-9a-f]{8}", picked.name)
    assert compare.folder_for(folder, other, chosen=False)[0] == picked  # one folder per selection
    kept, problem = compare.folder_for(folder, other, chosen=True)
    assert kept == folder and "other datasets or dataset arguments" in problem and "perturbation_2" in problem


def test_benchmark_refuses_an_output_folder_of_other_data(base_run, tmp_path, capsys):
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for name in (layout.SELECTION_RECORD, layout.RESULTS_MARKER):  # a results folder of perturbcast, of other data
        (copy / name).write_text((base_run / name).read_text())
    assert main(["benchmark", "--project", str(ROOT), "--output", str(copy), "--datasets", "simulated_grn",
                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("[error] --output") and "simulated_grn_small" in err
    assert json.loads((base_run / layout.SELECTION_RECORD).read_text())["datasets"] == ["simulated_grn_small"]


def record(step, status, stage="predict", component="m", reason="", cached=False):
    return StepRecord(id=step, stage=stage, component=component, status=status, reason=reason, cached=cached)


def test_exit_code_is_not_zero_when_nothing_was_scored_or_a_step_failed():
    """Friction 6: 'no scores' exited 0."""
    ok = record("score/d/t/seed_0/m/e", "ok", stage="score")
    assert exit_code([record("dataset/d", "failed", stage="dataset")], []) == layout.NO_SCORES_EXIT_CODE == 3
    assert exit_code([ok, record("predict/d/t/seed_0/x", "failed")], [ok]) == layout.STEPS_FAILED_EXIT_CODE == 1
    assert exit_code([ok, record("predict/d/t/seed_0/x", "skipped")], [ok]) == 1
    not_run = [record("predict/d/t/seed_0/y", "not_installed"), record("predict/d/t/seed_0/z", "not_applicable")]
    assert exit_code([ok, *not_run], [ok]) == 0


def test_offline_download_failure_points_to_cache_add_and_not_installed_is_listed_once(tmp_path):
    records = [record("dataset/norman2019_devel", "failed", stage="dataset", component="perturbench_devel",
                      reason="[error] cannot download https://example.org/x.h5ad: the host name does not resolve "
                             "([Errno -2] Name or service not known); is there a network connection?")]
    records += [record(f"predict/d/t/seed_0/fold_{f}/latent_additive", "not_installed", component="latent_additive",
                       reason="[not installed] latent_additive needs PyTorch: pip install -e '.[torch]'")
                for f in range(15)]
    progress = Progress(len(records))
    for r in records:
        progress.update(r)
    lines = run_summary(records, progress, tmp_path)
    assert max(map(len, lines)) <= layout.LINE_WIDTH
    text = "\n".join(lines)
    assert "perturbcast cache add FILE --dataset norman2019_devel" in text
    assert text.count("latent_additive") == 1  # once, with its install command, not as a failure
    assert not_installed_lines(records) == ["  not installed (not a failure; 15 steps): latent_additive needs "
                                            "PyTorch: pip install -e '.[torch]'"]
    assert text.splitlines()[-1] == "no score was produced: exit code 3"


def test_dataset_hints_are_printed_from_the_loaders_log(tmp_path):
    log = tmp_path / "datasets" / "my_screen" / layout.STEP_LOG
    log.parent.mkdir(parents=True)
    log.write_text("reading\n[hint] obs['perturbation_2'] splits the control cells; rerun with --dataset-arg "
                   "condition_column=perturbation_2\n")
    lines = hint_lines([record("dataset/my_screen", "ok", stage="dataset")], tmp_path)
    assert lines == ["  hint (my_screen): obs['perturbation_2'] splits the control cells; rerun with --dataset-arg "
                     "condition_column=perturbation_2"]


def test_progress_shows_an_eta_from_the_steps_that_ran():
    class Stream:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    stream = Stream()
    progress = Progress(10, stream=stream)
    progress.started -= 20.0  # 20 s ago
    for i in range(5):
        progress.update(record(f"predict/d/t/seed_0/m{i}", "ok", cached=i < 3))
    # 5 left at the rate of the 2 steps that ran in 20 s: 50 s
    assert progress.eta() == " ETA 0:50"
    assert "ETA 0:50" in stream.text or "ETA 0:5" in stream.text


def test_list_marks_opt_in_and_not_installed_methods(capsys):
    assert main(["list", "--project", str(ROOT), "--kind", "methods"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  gears +\[opt-in\]", out, re.MULTILINE)
    assert re.search(r"^  cpa +\[opt-in\]", out, re.MULTILINE)
    assert not re.search(r"^  linear_baseline +\[", out, re.MULTILINE)
    assert max(map(len, out.splitlines())) <= layout.LINE_WIDTH


def test_list_marks_a_method_whose_extra_is_absent(monkeypatch, capsys):
    from perturbcast import list_cli

    monkeypatch.setattr(list_cli, "extra_installed", lambda extra: extra != "torch")
    assert main(["list", "--project", str(ROOT), "--kind", "methods"]) == 0
    assert re.search(r"^  latent_additive +\[not installed: pip install -e '\.\[torch\]'\]",
                     capsys.readouterr().out, re.MULTILINE)


def test_cli_runs_from_a_subdirectory_and_from_outside_the_project(monkeypatch, tmp_path, capsys):
    """Friction 10: `[error] no _viash.yaml at or above '.'` outside the repository root."""
    monkeypatch.chdir(ROOT / "src" / "methods")
    assert main(["list", "--kind", "tasks"]) == 0
    assert "unseen_perturbation" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert main(["list", "--project", str(ROOT), "--kind", "tasks"]) == 0
    assert "unseen_perturbation" in capsys.readouterr().out
    assert main(["list", "--kind", "tasks"]) == 0  # the project this perturbcast was installed from
    assert "unseen_perturbation" in capsys.readouterr().out
