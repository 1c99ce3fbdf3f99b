"""Shared fixtures: the repository root, the generated test resources and the real data in ../shared."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The real data subsets (README: "Tests with real data"); beside the repository on the project's machines
SHARED_DATA = Path(os.environ.get("PERTURBCAST_TEST_DATA") or ROOT.parent / "shared" / "data")
RESOURCES = ROOT / "resources_test" / "simulated_grn"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def test_resources() -> Path:
    """resources_test/simulated_grn, made once by scripts/create_test_resources.py through the components."""
    if not (RESOURCES / "unseen_perturbation" / "score.h5ad").exists() or not (ROOT / "resources_test" / "loaders").exists() \
            or not (RESOURCES / "unseen_perturbation" / "solution_cells.h5ad").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "create_test_resources.py")], check=True, cwd=ROOT)
    return RESOURCES


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent: real data subset; set PERTURBCAST_TEST_DATA to a folder holding it "
                    "(README, 'Tests with real data', says where to get it)")
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked `torch` skip with a reason where PyTorch is not installed (`.[test]` does not pull it)."""
    if importlib.util.find_spec("torch") is not None:
        return
    skip = pytest.mark.skip(reason="PyTorch is not installed; pip install -e '.[torch]' "
                                   "--extra-index-url https://download.pytorch.org/whl/cpu (the CPU build)")
    for item in items:
        if item.get_closest_marker("torch") is not None:
            item.add_marker(skip)
