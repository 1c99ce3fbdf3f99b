"""Every component passes `perturbcast test` (its config metadata, and a run on the test data whose
outputs conform to the API formats) and the viash schema check."""
import shutil
import subprocess
import sys

import pytest

from perturbcast.config import discover_components
from perturbcast.runner import run_component_tests

from conftest import ROOT
from model_envs import skip_unless_environment

COMPONENTS = discover_components(ROOT)


def test_components_are_discovered():
    types = {c.component_type for c in COMPONENTS}
    assert {"dataset_loader", "task", "control_method", "metric"} <= types


def needs_torch(config) -> bool:
    """The component's image installs PyTorch (latent_additive): its test is marked `torch`."""
    return "torch" in str(config.raw.get("engines") or "")


@pytest.mark.parametrize("component", [pytest.param(c, marks=[pytest.mark.torch] if needs_torch(c) else [])
                                       for c in COMPONENTS], ids=[f"{c.namespace}/{c.name}" for c in COMPONENTS])
def test_component(component, test_resources, tmp_path, monkeypatch, capfd):
    if component.main_script.get("type") == "r_script" and shutil.which("Rscript") is None:
        pytest.skip("Rscript not on PATH (scripts/install_r.sh installs R from Debian)")
    if component.info.get("isolated_environment"):
        skip_unless_environment(component.name, component.raw)
    monkeypatch.setenv("VIASH_TEMP", str(tmp_path))
    report = run_component_tests(component.directory)
    if report.failed and component.info.get("extra"):
        captured = capfd.readouterr()
        text = captured.out + captured.err
        if "exited with code 98" in text:
            pytest.skip(f"{component.name} is not installed here (extra `{component.info['extra']}`)")
        if "cells.h5ad' is missing" in text:
            pytest.skip(f"{component.name} needs cells of a dataset with real gene symbols, which the simulated test "
                        "resources are not; tests/test_models_*.py run it on the Norman cells")
    assert report.failed == [], f"failed test scripts: {report.failed} (kept in {report.directory})"
    assert len(report.passed) >= 2


def test_folder_name_is_component_name():
    for component in COMPONENTS:
        assert component.directory.name == component.name, component.path


def test_every_config_passes_the_viash_schema():
    validator = ROOT.parent / "shared" / "tools" / "validate-viash-config"
    if not validator.exists():
        pytest.skip("../shared/tools/validate-viash-config is absent")
    configs = [str(c.path) for c in COMPONENTS]
    completed = subprocess.run([sys.executable, str(validator), *configs], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
