"""docs/components.md's Python, R and Bash examples, copied into a project as a new user would, run with
`perturbcast run`, pass `perturbcast test` and appear in `perturbcast benchmark` results and the report
beside the project's own components (with the R metric limma_de)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbcast import report
from perturbcast.cli import main
from perturbcast.runner import run_component, run_component_tests

from conftest import ROOT

needs_r = pytest.mark.skipif(shutil.which("Rscript") is None,
                             reason="Rscript not on PATH (scripts/install_r.sh installs R from Debian)")
DOC = ROOT / "docs" / "components.md"
EXAMPLES = {"py_cell_type_mean": "methods", "r_cell_type_mean": "methods", "bash_control_mean": "control_methods"}


def doc_files() -> dict[str, str]:
    """path -> text of every fenced block that follows a `<!-- file: path -->` line."""
    text = DOC.read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```[a-z]*\n(.*?)\n```", text, flags=re.S)
    return {path: body + "\n" for path, body in blocks}


def test_the_doc_holds_a_complete_example_per_language():
    files = doc_files()
    for name, namespace in EXAMPLES.items():
        assert f"src/{namespace}/{name}/config.vsh.yaml" in files
    assert files["src/methods/r_cell_type_mean/config.vsh.yaml"].count("type: r_script") == 1
    assert "type: bash_script" in files["src/control_methods/bash_control_mean/config.vsh.yaml"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, test_resources):
    """The project as a new user has it, plus the doc's three components."""
    root = tmp_path_factory.mktemp("doc_project")
    shutil.copy(ROOT / "_viash.yaml", root)
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "resources_test").mkdir()
    (root / "resources_test" / "simulated_grn").symlink_to(test_resources)
    for path, text in doc_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


@pytest.fixture(autouse=True)
def python_with_anndata_first(monkeypatch):
    # the Bash example calls `python3` from PATH, which in the component's image has anndata
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def test_doc_configs_pass_the_viash_schema(project):
    validator = ROOT.parent / "shared" / "tools" / "validate-viash-config"
    if not validator.exists():
        pytest.skip("../shared/tools/validate-viash-config is absent")
    configs = [str(project / p) for p in doc_files() if p.endswith("config.vsh.yaml")]
    completed = subprocess.run([sys.executable, str(validator), *configs], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.parametrize("name", [pytest.param("r_cell_type_mean", marks=needs_r), "bash_control_mean"])
def test_doc_examples_run_and_match_the_python_one(project, name, tmp_path, monkeypatch):
    monkeypatch.setenv("VIASH_TEMP", str(tmp_path))
    split = project / "resources_test" / "simulated_grn" / "unseen_perturbation"
    outputs = {}
    for component in ("py_cell_type_mean", name):
        outputs[component] = tmp_path / f"{component}.h5ad"
        argv = ["--input_train", str(split / "train.h5ad"), "--input_test", str(split / "test.h5ad"),
                "--output", str(outputs[component])]
        if component == "bash_control_mean":
            argv += ["--input_solution", str(split / "solution.h5ad")]
        result = run_component(project / "src" / EXAMPLES[component] / component, argv)
        assert result.exit_code == 0 and not result.problems
    python, other = (ad.read_h5ad(outputs[c]) for c in ("py_cell_type_mean", name))
    assert other.uns["method_id"] == name and list(other.obs_names) == list(python.obs_names)
    train = ad.read_h5ad(split / "train.h5ad")
    X = np.asarray(train.X.todense() if hasattr(train.X, "todense") else train.X, dtype=np.float64)
    controls = train.obs["is_control"].to_numpy(dtype=bool)
    first_type = str(python.obs_names[0]).split("|")[1]
    same = train.obs["cell_type"].astype(str).to_numpy() == first_type
    if name == "r_cell_type_mean":  # the same method in R: the same numbers
        assert np.allclose(other.X, python.X, rtol=1e-12, atol=1e-12)
        assert np.allclose(python.X[0], X[~controls & same].mean(axis=0))
    else:  # the Bash control predicts the control mean of the row's cell type
        assert np.allclose(other.X[0], X[controls & same].mean(axis=0))


@pytest.mark.parametrize("name", [pytest.param("r_cell_type_mean", marks=needs_r), "bash_control_mean"])
def test_doc_examples_pass_perturbcast_test(project, name, tmp_path, monkeypatch):
    monkeypatch.setenv("VIASH_TEMP", str(tmp_path))
    result = run_component_tests(project / "src" / EXAMPLES[name] / name)
    assert result.failed == [] and len(result.passed) == 2


@needs_r
def test_doc_examples_and_limma_de_appear_in_benchmark_results_and_report(project, tmp_path):
    output = tmp_path / "bench"
    code = main(["benchmark", "--project", str(project), "--output", str(output), "--datasets", "simulated_grn_small",
                 "--tasks", "unseen_perturbation", "--methods", "train_mean", "replicate_ceiling", *EXAMPLES,
                 "--metrics", "delta_error", "limma_de", "--folds", "0", "--jobs", "2", "--n-resamples", "50"])
    assert code == 0
    trace = pd.read_csv(output / "trace.tsv", sep="\t")
    assert (trace.status == "ok").all(), trace[trace.status != "ok"][["step", "reason"]]
    limma_steps = trace[trace.component == "limma_de"]
    predictions = trace[trace.stage == "predict"]
    assert len(limma_steps) == len(predictions) >= 5 and (limma_steps.peak_rss_mib > 10).all()
    results = pd.read_parquet(output / "results.parquet")
    overall = results[results.stratum == "all"]
    assert set(EXAMPLES) <= set(overall.method_id)
    assert {"limma_de_auroc", "limma_de_recall"} <= set(overall.metric_id)
    values = overall.set_index(["method_id", "metric_id"])["value"]
    assert values["r_cell_type_mean", "mse_delta"] == pytest.approx(values["py_cell_type_mean", "mse_delta"])
    assert values["replicate_ceiling", "limma_de_auroc"] > 0.5
    html = report.write_report(output).read_text()
    for name in (*EXAMPLES, "limma_de_auroc"):
        assert name in html
