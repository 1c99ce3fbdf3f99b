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
