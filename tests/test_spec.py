"""Benchmark spec files (perturbcast/spec.py)."""
from __future__ import annotations

import pytest

from perturbcast.spec import SpecError, load_spec, nextflow_params

from conftest import ROOT
from test_userdata import screen


def write(tmp_path, text: str):
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    return path


def test_nextflow_params_are_read_from_the_config():
    names = nextflow_params(ROOT)
    assert {"datasets", "seeds", "n_folds", "folds", "publish_dir", "max_retries", "datasets_dir"} <= names
    assert "cpus" not in names and "executor" not in names  # process/profile settings, not params


def test_full_spec(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    screen(n_cells_per_condition=6).write_h5ad(data / "screen.h5ad")
    spec = load_spec(write(tmp_path, """
datasets:
  - norman2019_devel
  - id: datlinger2017
    arguments: {n_top_genes: 1000, control_label: [NT, safe]}
  - file: data/screen.h5ad
    id: mine
    arguments: {perturbation_column: target_gene, min_cells_per_half: 2}
tasks: [unseen_perturbation]
methods: linear_baseline, train_mean
seeds: '0,1'
n_folds: 3
folds: [0, 2]
max_retries: 1
"""), root=ROOT)
    assert [d["id"] for d in spec["datasets"]] == ["norman2019_devel", "datlinger2017", "mine"]
    assert spec["datasets"][1]["arguments"] == {"n_top_genes": 1000, "control_label": ["NT", "safe"]}
    mine = spec["datasets"][2]
    assert mine["loader"] == "h5ad_file" and mine["file"] == str((data / "screen.h5ad").resolve())
    assert mine["arguments"]["perturbation_column"] == "target_gene" and mine["arguments"]["min_cells_per_half"] == "2"
    assert spec["tasks"] == ["unseen_perturbation"] and spec["methods"] == ["linear_baseline", "train_mean"]
    assert (spec["seeds"], spec["n_folds"], spec["folds"]) == ([0, 1], 3, [0, 2])
    assert spec["metrics"] is None and spec["nextflow"] == {"max_retries": 1}


def test_empty_spec_means_the_defaults(tmp_path):
    spec = load_spec(write(tmp_path, ""), root=ROOT)
    assert spec["datasets"] is None and spec["seeds"] == [0] and spec["n_folds"] == 5 and spec["folds"] is None


@pytest.mark.parametrize("text, message", [
    ("method: [x]", "unknown key 'method' (did you mean methods?)"),
    ("seeds: [0, a]", "seeds: expected integers"),
    ("n_folds: 1", "n_folds: expected integers >= 2"),
    ("folds: [5]", "expected folds between 0 and 4"),
    ("methods: {a: 1}", "methods: expected a list of ids"),
    ("use_test_arguments: yes please", "use_test_arguments: expected true or false"),
    ("datasets: [{id: x, argumnts: {}}]", "datasets[0]: unknown key 'argumnts'"),
    ("datasets: [{arguments: {}}]", "datasets[0]: needs an id"),
    ("datasets: [a, a]", "dataset id 'a' appears twice"),
    ("datasets: [{file: absent.h5ad}]", "does not exist"),
    ("- a\n- b", "expected a mapping of keys"),
    ("methods: [a", "not valid YAML"),
])
def test_bad_specs_are_one_line(tmp_path, text, message):
    with pytest.raises(SpecError) as error:
        load_spec(write(tmp_path, text), root=ROOT)
    assert message in str(error.value) and "\n" not in str(error.value) and "bench.yaml" in str(error.value)


def test_missing_spec(tmp_path):
    with pytest.raises(SpecError, match="file does not exist"):
        load_spec(tmp_path / "nope.yaml", root=ROOT)


# ---------------------------------------------------------------- a spec on the command line (engine_cli)

def selection(tmp_path, spec_text: str | None, *options):
    """(engine.Selection or None, exit code, stderr) of `perturbcast benchmark [--spec FILE] OPTIONS`."""
    import contextlib
    import io

    from perturbcast.cli import build_parser
    from perturbcast.engine_cli import selection_from_args

    argv = ["benchmark", "--project", str(ROOT), *options]
    if spec_text is not None:
        argv += ["--spec", str(write(tmp_path, spec_text))]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        _, chosen, code = selection_from_args(build_parser().parse_args(argv), "benchmark")
    return chosen, code, err.getvalue()


def test_a_spec_methods_key_gets_the_same_controls_as_the_command_line(tmp_path):
    from perturbcast import engine

    by_spec, code, err = selection(tmp_path, "methods: [linear_baseline]\n")
    assert code == 0 and "added the controls that set the scale" in err
    by_flag, _, _ = selection(tmp_path, None, "--methods", "linear_baseline")
    assert by_spec.methods == by_flag.methods == ["linear_baseline", *engine.SCALE_CONTROLS]
    # a control the spec names itself is not added twice
    both, _, _ = selection(tmp_path, "methods: linear_baseline,train_mean\n")
    assert both.methods.count("train_mean") == 1 and set(engine.SCALE_CONTROLS) <= set(both.methods)
    # without a methods key (or option) every method runs: nothing to add
    neither, _, err = selection(tmp_path, "tasks: [unseen_perturbation]\n")
    assert neither.methods is None and "added the controls" not in err
    # the results folder is named after the selection, without the controls the command added
    from perturbcast.engine_cli import selection_folder
    assert selection_folder(by_spec, engine.SCALE_CONTROLS, "bench.yaml") == \
        selection_folder(engine.Selection(methods=["linear_baseline"]), (), "bench.yaml")


def test_command_line_options_override_the_spec_keys(tmp_path):
    spec = "methods: [knn_perturbation]\ntasks: [unseen_combination]\nseeds: [1, 2]\nn_folds: 3\nfolds: [2]\n"
    from_spec, code, _ = selection(tmp_path, spec)
    assert code == 0
    assert (from_spec.seeds, from_spec.n_folds, from_spec.folds, from_spec.tasks) == ([1, 2], 3, [2], ["unseen_combination"])
    assert from_spec.methods[0] == "knn_perturbation"
    # --seeds 0 is the default value, and still overrides the spec's seeds (it did not before)
    chosen, code, _ = selection(tmp_path, spec, "--seeds", "0", "--tasks", "unseen_perturbation",
                                "--methods", "additive")
    assert code == 0
    assert (chosen.seeds, chosen.n_folds, chosen.folds, chosen.tasks) == ([0], 3, [2], ["unseen_perturbation"])
    assert chosen.methods[0] == "additive" and "knn_perturbation" not in chosen.methods
    # each option replaces its own key only
    chosen, _, _ = selection(tmp_path, spec, "--n-folds", "5")
    assert (chosen.seeds, chosen.n_folds, chosen.folds) == ([1, 2], 5, [2])
    chosen, _, _ = selection(tmp_path, spec, "--folds", "0", "1")
    assert (chosen.n_folds, chosen.folds) == (3, [0, 1])
    # without a spec the defaults stay
    default, _, _ = selection(tmp_path, None)
    assert (default.seeds, default.n_folds, default.folds) == ([0], 5, None)


def test_an_override_that_leaves_a_fold_out_of_range_is_one_line(tmp_path):
    chosen, code, err = selection(tmp_path, "n_folds: 5\nfolds: [4]\n", "--n-folds", "3")
    assert chosen is None and code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[error] --n-folds is 3 and --folds [4]") \
        and "override the spec's keys" in lines[0]
