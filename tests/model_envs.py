"""When the tests of a component with its own environment (scGPT, CPA) run: when that environment is
already built (`perturbcast envs build`, which CI runs before the tests), or when
PERTURBCAST_TEST_MODEL_ENVS=1 asks the test to build it (minutes); PERTURBCAST_TEST_MODEL_ENVS=0 skips them."""
from __future__ import annotations

import os

import pytest
import yaml

from conftest import ROOT
from perturbcast import envs


def skip_unless_environment(name: str, raw: dict | None = None) -> None:
    setting = os.environ.get("PERTURBCAST_TEST_MODEL_ENVS", "")
    if setting == "1":
        return
    if setting != "0":
        if raw is None:
            raw = yaml.safe_load((ROOT / "src" / "methods" / name / "config.vsh.yaml").read_text())
        if envs.ready(name, raw) is not None:
            return
    pytest.skip(f"{name} runs in its own environment, which is not built here: `perturbcast envs build {name}` "
                "builds it (minutes), or PERTURBCAST_TEST_MODEL_ENVS=1 lets the test build it")
