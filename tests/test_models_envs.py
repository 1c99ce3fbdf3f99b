"""Per-component environments (perturbcast/envs.py): install steps from the docker setup, the cache key,
building, reuse, the runner running a component with the environment's interpreter, and exit code 98
when an environment cannot be built. Offline: the only package installed is a wheel made here."""
from __future__ import annotations

import base64
import hashlib
import json
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from perturbcast import envs
from perturbcast.runner import run_component

SETUP = {"engines": [{"type": "docker", "image": "x", "setup": [
    {"type": "apt", "packages": ["procps"]},
    {"type": "docker", "run": ["pip install --no-cache-dir torch==2.13.0 --index-url https://example.org/cpu",
                               "apt-get update"]},
    {"type": "python", "packages": ["numpy<2", "anndata<0.10"], "pip": ["scipy"]},
    {"type": "docker", "run": "pip install --no-deps cpa-tools==0.8.1"},
]}]}


def test_install_steps_follow_the_docker_setup_in_order():
    assert envs.install_steps(SETUP) == [
        ["torch==2.13.0", "--index-url", "https://example.org/cpu"],
        ["numpy<2", "anndata<0.10", "scipy"],
        ["--no-deps", "cpa-tools==0.8.1"],
    ]


def test_key_changes_with_any_step_and_only_then():
    steps = envs.install_steps(SETUP)
    assert envs.environment_key(steps) == envs.environment_key([list(s) for s in steps])
    changed = [list(s) for s in steps]
    changed[1][0] = "numpy<2.1"
    assert envs.environment_key(changed) != envs.environment_key(steps)


def test_wanted_by_config_option_and_environment(monkeypatch):
    monkeypatch.delenv(envs.ISOLATED_ENV, raising=False)
    assert not envs.wanted({})
    assert envs.wanted({"info": {"isolated_environment": True}})
    assert envs.wanted({}, isolated=True)
    monkeypatch.setenv(envs.ISOLATED_ENV, "1")
    assert envs.wanted({})
    assert not envs.wanted({}, isolated=False)
    monkeypatch.setenv(envs.ISOLATED_ENV, "gears, cpa")
    assert envs.wanted({"name": "cpa"}) and not envs.wanted({"name": "additive"})
    monkeypatch.setenv(envs.ISOLATED_ENV, "0")
    assert not envs.wanted({"info": {"isolated_environment": True}}, isolated=True)


def make_wheel(directory: Path, name: str = "pcenvprobe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (no dependencies), so pip installs it without any index."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": f"VALUE = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    records = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        records.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(records + [f"{dist}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def write_component(directory: Path, packages: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "script.py").write_text(
        "import sys\n## VIASH START\npar = {'output': 'out.json'}\n## VIASH END\n"
        "import json\nimport pcenvprobe\n"
        "json.dump({'prefix': sys.prefix, 'value': pcenvprobe.VALUE}, open(par['output'], 'w'))\n")
    config = {"name": "envprobe", "namespace": "methods", "info": {"isolated_environment": True},
              "arguments": [{"name": "--output", "type": "file", "direction": "output", "required": True}],
              "resources": [{"type": "python_script", "path": "script.py"}],
              "engines": [{"type": "docker", "image": "python:3.11", "setup": [{"type": "python", "packages": packages}]}]}
    (directory / "config.vsh.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory


def test_component_runs_in_its_own_built_and_reused_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PERTURBCAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(envs.ISOLATED_ENV, raising=False)
    wheel = make_wheel(tmp_path)
    component = write_component(tmp_path / "probe", [str(wheel)])
    with pytest.raises(ModuleNotFoundError):
        __import__("pcenvprobe")  # the test's own environment does not have it
    log = tmp_path / "run.log"
    with open(log, "w") as handle:
        result = run_component(component, ["--output", str(tmp_path / "out.json")], stdout=handle, stderr=handle)
    assert result.exit_code == 0, log.read_text()
    out = json.loads((tmp_path / "out.json").read_text())
    built = list((tmp_path / "cache" / "envs").glob("envprobe-*"))
    assert len(built) == 1 and out["value"] == "1.0" and Path(out["prefix"]) == built[0]
    assert "built its environment" in log.read_text()
    assert f"[environment] envprobe: step 1/1: pip install {wheel.parent}" in log.read_text()
    record = json.loads((built[0] / envs.READY_FILE).read_text())
    assert record["steps"] == [[str(wheel)]] and record["build_seconds"] > 0

    # reused: no second build, same folder
    with open(log, "w") as handle:
        result = run_component(component, ["--output", str(tmp_path / "out2.json")], stdout=handle, stderr=handle)
    assert result.exit_code == 0 and "built its environment" not in log.read_text()
    assert list((tmp_path / "cache" / "envs").glob("envprobe-*")) == built

    # PERTURBCAST_ISOLATED_ENVIRONMENTS=0: the current interpreter, which lacks the package
    monkeypatch.setenv(envs.ISOLATED_ENV, "0")
    with open(log, "w") as handle:
        result = run_component(component, ["--output", str(tmp_path / "out3.json")], stdout=handle, stderr=handle)
    assert result.exit_code == 1 and "No module named 'pcenvprobe'" in log.read_text()


def test_environment_that_cannot_be_built_is_not_installed_98_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PERTURBCAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(envs.ISOLATED_ENV, raising=False)
    component = write_component(tmp_path / "broken", [str(tmp_path / "no-such-package.whl")])
    log = tmp_path / "run.log"
    with open(log, "w") as handle:
        result = run_component(component, ["--output", str(tmp_path / "out.json")], stdout=handle, stderr=handle)
    assert result.exit_code == envs.NOT_INSTALLED_EXIT_CODE == 98
    lines = [line for line in log.read_text().splitlines() if line.startswith("[not installed]")]
    assert len(lines) == 1 and "envprobe: environment not built" in lines[0] and "no-such-package" in lines[0]
    assert not (tmp_path / "out.json").exists()
    assert not [p for p in (tmp_path / "cache" / "envs").iterdir() if p.is_dir()]


def test_envs_cli_lists_builds_and_reuses_environments(tmp_path, monkeypatch, capsys):
    from perturbcast.cli import main
    monkeypatch.setenv("PERTURBCAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(envs.ISOLATED_ENV, raising=False)
    project = tmp_path / "project"
    (project / "src" / "methods").mkdir(parents=True)
    (project / "_viash.yaml").write_text("name: probe\n")
    write_component(project / "src" / "methods" / "envprobe", [str(make_wheel(tmp_path))])
    monkeypatch.chdir(project)

    assert main(["envs", "list"]) == 0
    assert "envprobe   not built (built on its first run" in capsys.readouterr().out

    assert main(["envs", "build"]) == 0
    err = capsys.readouterr().err
    assert "[envs] envprobe: step 1/1: pip install " in err and "[envs] envprobe: built in" in err
    listed = capsys.readouterr().out if main(["envs", "list", "src/methods/envprobe"]) == 0 else ""
    built = next((tmp_path / "cache" / "envs").glob("envprobe-*"))
    assert listed.startswith("envprobe   built (") and str(built) in listed

    assert main(["envs", "build", "envprobe"]) == 0
    assert f"[envs] envprobe: already built: {built}" in capsys.readouterr().err

    assert main(["envs", "build", "nosuch"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[error] no component with Python packages") and "nosuch" in err[0]


def test_envs_cli_build_that_fails_says_so_in_one_line_and_exits_1(tmp_path, monkeypatch, capsys):
    from perturbcast.cli import main
    monkeypatch.setenv("PERTURBCAST_CACHE", str(tmp_path / "cache"))
    project = tmp_path / "project"
    (project / "src" / "methods").mkdir(parents=True)
    (project / "_viash.yaml").write_text("name: probe\n")
    write_component(project / "src" / "methods" / "envprobe", [str(tmp_path / "no-such-package.whl")])
    assert main(["envs", "build", "--project", str(project)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[error]")]
    assert len(errors) == 1 and "envprobe: environment not built" in errors[0] and "no-such-package" in errors[0]
    assert not [p for p in (tmp_path / "cache" / "envs").iterdir() if p.is_dir()]
