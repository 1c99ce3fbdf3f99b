"""Shared fixtures: the repository root, the generated test resources and the real data in ../shared.

The suite runs in parallel (pytest-xdist, `-n auto` in pyproject.toml; `-n 0` runs it serially): a
session fixture runs once per worker, so anything it writes outside its own tmp folder is built under a
file lock (`file_lock`) and reused by the other workers.
"""
import contextlib
import fcntl
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

# Under xdist every worker (and the components it runs) would start a BLAS/OpenMP thread per core: two
# workers on two cores then run four busy threads. Each worker's share of the cores instead, unless the
# caller set the variables; set before any test module imports numpy, inherited by the components.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, _threads)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on `path` (created if absent) while the block runs: one pytest worker (or one
    of several pytest sessions) at a time; the others wait. Released when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _test_resources_complete() -> bool:
    return (RESOURCES / "unseen_perturbation" / "score.h5ad").exists() and (ROOT / "resources_test" / "loaders").exists() \
        and (RESOURCES / "unseen_perturbation" / "solution_cells.h5ad").exists() and (RESOURCES / "prior_file.h5ad").exists() \
        and (RESOURCES / "reference_dataset.h5ad").exists()


@pytest.fixture(scope="session")
def test_resources() -> Path:
    """resources_test/simulated_grn, made once by scripts/create_test_resources.py through the components;
    under a lock, so parallel workers neither build it twice nor read it half-written."""
    if not _test_resources_complete():
        with file_lock(ROOT / "resources_test" / ".create.lock"):
            if not _test_resources_complete():
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
