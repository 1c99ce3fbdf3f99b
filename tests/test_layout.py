"""perturbcast.layout (step ids, folders, statuses, trace schema, results folders) and src/utils/vocabulary.py."""
from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbcast import engine, layout, scoring
from perturbcast.cli import main as cli_main
from perturbcast.engine_cli import selection_folder
from perturbcast.layout import Status

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src" / "utils"))
import vocabulary  # noqa: E402


def test_the_package_loads_the_components_vocabulary_file():
    assert Path(layout.vocabulary.__file__).resolve() == Path(vocabulary.__file__).resolve()
    assert layout.NOT_APPLICABLE_EXIT_CODE == vocabulary.NOT_APPLICABLE_EXIT_CODE == 99
    assert layout.NOT_INSTALLED_EXIT_CODE == vocabulary.NOT_INSTALLED_EXIT_CODE == 98


def test_one_target_parser():
    assert vocabulary.targets("control") == ()
    assert vocabulary.targets("KLF1") == ("KLF1",)
    assert vocabulary.targets("CEBPA+KLF1") == ("CEBPA", "KLF1")
    for bad in ("A+", "+A", "A + B", " A", ""):
        with pytest.raises(vocabulary.TargetLabelError):
            vocabulary.targets(bad)
    assert vocabulary.label(["KLF1", "CEBPA"]) == "CEBPA+KLF1"
    assert vocabulary.label(g for g in ()) == vocabulary.CONTROL  # any iterable, a generator too
    assert vocabulary.label(vocabulary.targets("A+B")) == "A+B"


def test_statuses():
    assert Status.of_exit_code(0) is Status.OK
    assert Status.of_exit_code(99) is Status.NOT_APPLICABLE
    assert Status.of_exit_code(98) is Status.NOT_INSTALLED
    assert Status.of_exit_code(1) is Status.FAILED and Status.of_exit_code(139) is Status.FAILED
    # a status is its string: in files, comparisons, dict keys and sets
    assert Status.OK == "ok" and str(Status.NOT_APPLICABLE) == "not_applicable" and f"{Status.SKIPPED}" == "skipped"
    assert {"failed": 1}[Status.FAILED] == 1 and {Status.OK: 2}["ok"] == 2
    assert Status.NOT_APPLICABLE.label == "not applicable"
    assert layout.status_label("not_installed") == "not installed" and layout.status_label("odd") == "odd"
    assert [s for s in Status if s.reusable] == [Status.OK, Status.NOT_APPLICABLE]


def test_blocked_by_is_structured():
    cause = layout.blocked_by("split/d/t/seed_0/fold_1", Status.NOT_APPLICABLE)
    assert cause == {"step": "split/d/t/seed_0/fold_1", "status": "not_applicable"}
    assert layout.blocked_reason(cause) == "upstream split/d/t/seed_0/fold_1 not applicable"
    assert layout.blocked_status(["not_applicable", "not_installed"]) is Status.NOT_APPLICABLE
    assert layout.blocked_status(["not_applicable", "failed"]) is Status.SKIPPED
    record = engine.StepRecord(id="predict/d/t/seed_0/fold_1/m", stage="predict", component="m", status="skipped",
                               blocked_by=layout.blocked_by("split/d/t/seed_0/fold_1", Status.FAILED))
    assert record.status is Status.SKIPPED
    row = layout.trace_row(record)
    assert list(row) == layout.TRACE_COLUMNS
    assert (row["blocked_by"], row["blocked_by_status"]) == ("split/d/t/seed_0/fold_1", "failed")


def test_every_planned_step_lies_where_the_layout_says(tmp_path):
    steps, declared = engine.plan(ROOT, tmp_path, engine.Selection(
        datasets=["simulated_grn_small"], methods=["train_mean", "ground_truth", "linear_baseline"],
        metrics=["delta_error"], priors=["go_embedding"], n_folds=2))
    assert {s.stage for s in steps} == set(layout.STAGES)
    # a method that reads a prior runs alone and as the variant `<method>+<prior>`, which reads the prior's file
    variant = [s for s in steps if s.labels.get("method_id") == "linear_baseline+go_embedding" and s.stage == layout.PREDICT]
    assert len(variant) == 6 and all(s.labels["prior_id"] == "go_embedding" for s in variant)  # 3 tasks x 2 folds
    prior = next(s for s in steps if s.stage == layout.PRIOR)
    assert prior.id == "prior/simulated_grn_small/go_embedding"
    assert all(v.inputs["input_prior"] == prior.outputs["output"] and prior.id in v.depends for v in variant)
    assert not any(s.labels.get("method_id") == "train_mean+go_embedding" for s in steps)
    for step in steps:
        stage, key = layout.split_step_id(step.id)
        assert stage == step.stage
        assert step.directory == layout.step_dir(tmp_path, stage, key)
        assert tmp_path / layout.log_of(step.id) == step.directory / layout.STEP_LOG
        files = layout.STAGE_OUTPUTS[stage]
        assert all(path == step.directory / files[name] for name, path in step.outputs.items())
    assert any(s.labels.get("fold") == 1 for s in steps)  # the folds are in the layout
    assert layout.log_of("partition/d/t/seed_0") is None and layout.log_of("config/methods/x") is None


def test_check_steps_of_a_plan_are_named_by_the_layout():
    partition = layout.step_id(layout.PARTITION, layout.partition_key("d", "t", 0))
    assert layout.check_step_id(partition) == "check/partition/d/t/seed_0"
    assert layout.checked_step_id("check/split/d/t/seed_0/fold_1") == "split/d/t/seed_0/fold_1"
    assert layout.checked_step_id(layout.check_step_id(partition)) == partition
    inputs = {"common": "c", layout.partition_test_input(10): "t10", layout.partition_test_input(2): "t2",
              layout.partition_test_input(0): "t0"}
    assert layout.partition_test_inputs(inputs) == ["t0", "t2", "t10"]
    assert layout.CHECK_RECORDS == {layout.SPLIT: "check.json", layout.PARTITION: "partition_check.json"}


def _score_file(path: Path, **uns):
    path.parent.mkdir(parents=True, exist_ok=True)
    obs = pd.DataFrame({"stratum": ["single"], "mse": [0.5]}, index=["A"])
    ad.AnnData(obs=obs, uns={"dataset_id": "d", "task_id": "t", "method_id": "m", "metric_ids": ["mse"],
                             "metric_values": [0.5], **uns}).write_h5ad(path)


def test_scoring_reads_labels_from_the_score_file_not_its_path(tmp_path):
    # a folder that contradicts every label the file carries
    path = tmp_path / "scores" / "other" / "task" / "seed_7" / "fold_9" / "method" / "delta_error" / "score.h5ad"
    _score_file(path, split_seed=np.int64(3), fold=2)
    labels = scoring.score_labels(path, ad.read_h5ad(path).uns)
    assert labels == {"dataset_id": "d", "task_id": "t", "seed": 3, "fold": 2, "method_id": "m",
                      "metric_component": "delta_error"}
    table = scoring.per_condition_table(tmp_path)
    assert table[["seed", "fold", "method_id"]].drop_duplicates().values.tolist() == [[3, 2, "m"]]
    # a task without folds: fold 0
    flat = tmp_path / "elsewhere" / "x" / "score.h5ad"
    _score_file(flat, split_seed=1, metric_component="delta_error")
    assert scoring.score_labels(flat, ad.read_h5ad(flat).uns) == {
        "dataset_id": "d", "task_id": "t", "seed": 1, "fold": 0, "method_id": "m", "metric_component": "delta_error"}


def test_a_selection_gets_its_own_results_folder():
    S = engine.Selection
    controls = engine.SCALE_CONTROLS  # what the command adds to a method selection (left out of the name)
    assert selection_folder(S(), controls) == layout.DEFAULT_RESULTS == Path("output/benchmark")
    assert selection_folder(S(methods=["mine", *controls]), controls) == Path("output/benchmark-methods_mine")
    assert selection_folder(S(methods=["train_mean", *controls[1:]]), controls[1:]) == \
        Path("output/benchmark-methods_train_mean")
    assert selection_folder(S(datasets=["a", "b"], seeds=[0, 1], n_folds=3, folds=[0]), controls, "my/spec.yaml") == \
        Path("output/benchmark-spec_spec-datasets_a+b-seeds_0+1-n_folds_3-folds_0")
    long = selection_folder(S(metrics=[f"metric_{i}" for i in range(20)]), controls)
    other = selection_folder(S(metrics=[f"metric_{i}" for i in range(21)]), controls)
    assert len(long.name) == len("benchmark-") + 89 and long != other  # shortened, still one folder per selection
    assert selection_folder(S(methods=["a/../b"]), controls) == Path("output/benchmark-methods_a_.._b")


def test_benchmark_prints_the_folder_of_a_selection(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code = cli_main(["benchmark", "--project", str(ROOT), "--datasets", "simulated_grn_small", "--methods", "train_mean",
                     "--metrics", "delta_error", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0
    assert "results in output/benchmark-datasets_simulated_grn_small-methods_train_mean-metrics_delta_error" in captured.err
    assert str(tmp_path / "output/benchmark-datasets_simulated_grn_small-methods_train_mean-metrics_delta_error") \
        in captured.out  # the planned steps write there
    code = cli_main(["benchmark", "--project", str(ROOT), "--datasets", "simulated_grn_small", "--methods", "train_mean",
                     "--metrics", "delta_error", "--dry-run", "--output", "mine"])
    captured = capsys.readouterr()
    assert code == 0 and "results in" not in captured.err and str(tmp_path / "mine") in captured.out


def test_a_model_setting_from_the_environment_is_part_of_the_step_cache_key(monkeypatch):
    from perturbcast.engine_run import _cache_key

    gears = next(c for c in engine.discover_components(ROOT) if c.name == "gears")
    step = engine.Step(id="predict/x/gears", stage=layout.PREDICT, component=gears, inputs={}, outputs={},
                       arguments={}, directory=Path("/tmp/x"))
    digests = {gears.path: "digest"}
    monkeypatch.delenv("PERTURBCAST_GEARS_ARGS", raising=False)
    monkeypatch.delenv("PERTURBCAST_GO_ANNOTATION", raising=False)
    plain = _cache_key(step, [], digests)
    monkeypatch.setenv("PERTURBCAST_GEARS_ARGS", "--epochs 2")
    two_epochs = _cache_key(step, [], digests)
    monkeypatch.setenv("PERTURBCAST_GEARS_ARGS", "--epochs 3")
    assert len({plain, two_epochs, _cache_key(step, [], digests)}) == 3
    monkeypatch.setenv("PERTURBCAST_CPA_ARGS", "--max_epochs 5")  # another component's setting
    assert _cache_key(step, [], digests) == _cache_key(step, [], digests)
    monkeypatch.delenv("PERTURBCAST_GEARS_ARGS")
    assert _cache_key(step, [], digests) == plain


def test_settings_from_environment_replace_arguments_and_reject_unknown_ones(monkeypatch, capsys):
    from component_io import settings_from_environment

    par = {"epochs": 20, "hidden_size": 64, "go_annotation": None}
    monkeypatch.setenv("PERTURBCAST_GEARS_ARGS", "--epochs 2 --go_annotation /data/go.tsv")
    assert settings_from_environment(par, "gears") == {"epochs": 2, "go_annotation": "/data/go.tsv"}
    assert par == {"epochs": 2, "hidden_size": 64, "go_annotation": "/data/go.tsv"}
    monkeypatch.setenv("PERTURBCAST_GEARS_ARGS", "--epoch 2")
    with pytest.raises(SystemExit):
        settings_from_environment(dict(par), "gears")
    assert "$PERTURBCAST_GEARS_ARGS: expected pairs '--argument value'" in capsys.readouterr().err
