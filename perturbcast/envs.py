"""Per-component Python environments: the local stand-in for a component's own container.

A component's docker engine `setup` lists what its image installs. Some model packages cannot share an
environment with the rest (CPA needs numpy < 2 and an old anndata), so the runner can run a component
with a virtual environment built from that same list:

- `type: python` entries: `pip install <packages...>` (also `pip:` / `pypi:` lists), in order;
- `type: docker` `run:` lines that are `pip install ...` commands: run with the environment's pip, as
  written (e.g. `--no-deps`, `--index-url` of a CPU wheel index); other `run:` lines and `apt`/`r`
  entries are system set-up that a virtual environment cannot reproduce and are skipped (logged).

Environments live in `$PERTURBCAST_CACHE/envs/<component>-<hash>` (default cache `~/.cache/perturbcast`),
where the hash covers the install steps and the Python version, so a changed `setup` builds a new one and
an unchanged one is reused. An environment is built in a temporary folder and renamed into place only
when every step succeeded, so a half-built environment is never reused.

When: the component's config sets `info.isolated_environment: true`, or the user asks for it for every
Python component (`PERTURBCAST_ISOLATED_ENVIRONMENTS=1`, or the runner's `isolated=True`) or for the
components it names (`PERTURBCAST_ISOLATED_ENVIRONMENTS=gears,cpa`), or
`PERTURBCAST_ISOLATED_ENVIRONMENTS=0` turns it off everywhere (e.g. inside a container that already
has the packages). A build that fails ends the component with `NOT_INSTALLED_EXIT_CODE`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Exit code of a component whose packages are not installed (its extra is absent or its environment
# cannot be built); the engine records it as "not installed", not as a failure (defined in perturbcast.layout).
from .layout import NOT_INSTALLED_EXIT_CODE
ISOLATED_ENV = "PERTURBCAST_ISOLATED_ENVIRONMENTS"
READY_FILE = "perturbcast-env.json"
# A CPU environment must not pull CUDA libraries (GBs that a CPU run never uses); a GPU run may.
GPU_DISTRIBUTION_PREFIXES = ("nvidia-", "triton")


class EnvironmentError_(Exception):
    """The environment cannot be built; the message is one line naming the step that failed."""


@dataclass
class Environment:
    path: Path
    python: Path
    built: bool  # True when this call built it, False when it was reused
    build_seconds: float


def cache_root() -> Path:
    return Path(os.environ.get("PERTURBCAST_CACHE") or Path.home() / ".cache" / "perturbcast") / "envs"


def _docker_setup(raw: dict) -> list[dict]:
    for engine in raw.get("engines", []) or []:
        if engine.get("type") == "docker":
            return list(engine.get("setup", []) or [])
    return []


def install_steps(raw: dict) -> list[list[str]]:
    """The `pip install` argument lists the component's docker setup declares, in order."""
    steps: list[list[str]] = []
    for entry in _docker_setup(raw):
        kind = entry.get("type")
        if kind == "python":
            packages = []
            for key in ("packages", "pip", "pypi"):
                value = entry.get(key) or []
                packages += [value] if isinstance(value, str) else list(value)
            if packages:
                steps.append(packages)
        elif kind == "docker":
            runs = entry.get("run") or []
            for line in [runs] if isinstance(runs, str) else runs:
                words = shlex.split(line)
                for start in range(len(words) - 1):
                    if words[start].endswith("pip") and words[start + 1] == "install":
                        args = [w for w in words[start + 2:] if w != "--no-cache-dir"]
                        if args:
                            steps.append(args)
                        break
    return steps


def environment_key(steps: list[list[str]]) -> str:
    text = json.dumps({"python": list(sys.version_info[:2]), "steps": steps})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def wanted(raw: dict, isolated: bool | None = None) -> bool:
    """Whether this component runs in its own environment (see the module text for the rules);
    `PERTURBCAST_ISOLATED_ENVIRONMENTS` may also list component names (`gears,cpa`): those only."""
    setting = os.environ.get(ISOLATED_ENV, "").strip().lower()
    if setting in ("0", "false", "no"):
        return False
    if isolated is not None:
        return isolated
    if setting in ("1", "true", "yes"):
        return True
    if setting and str(raw.get("name", "")).lower() in {n.strip() for n in setting.split(",")}:
        return True
    return bool((raw.get("info") or {}).get("isolated_environment"))


def _pip(python: Path, args: list[str], log) -> None:
    # The running interpreter's pip installs into the new environment (`--python`), so building one needs
    # no ensurepip step; pip's own configuration (indexes, find-links) applies as for any install.
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-input", *args]
    completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise EnvironmentError_(f"'pip install {' '.join(args)}' failed (exit {completed.returncode})")


def _installed(python: Path) -> list[str]:
    listing = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "list", "--format=json"],
                             capture_output=True, text=True)
    return [item["name"].lower() for item in json.loads(listing.stdout or "[]")]


def python_too_old(raw: dict) -> str | None:
    """Why this interpreter cannot build the component's environment (`info.requires_python`, e.g. "3.11":
    the environment is made from the running Python), or None when it can."""
    required = str((raw.get("info") or {}).get("requires_python") or "").strip()
    if not required:
        return None
    wanted_version = tuple(int(part) for part in required.split("."))
    if sys.version_info[:len(wanted_version)] >= wanted_version:
        return None
    return f"needs Python >= {required}; this interpreter is {sys.version.split()[0]}"


def location(name: str, raw: dict) -> Path:
    """Where the component's environment lives (whether or not it is built); its setup's hash names it."""
    return cache_root() / f"{name}-{environment_key(install_steps(raw))}"


def ready(name: str, raw: dict) -> Environment | None:
    """The component's environment if a finished build of its current setup exists, else None."""
    path = location(name, raw)
    python, marker = path / "bin" / "python", path / READY_FILE
    if not (marker.exists() and python.exists()):
        return None
    return Environment(path, python, False, json.loads(marker.read_text()).get("build_seconds", 0.0))


def ensure(name: str, raw: dict, *, gpu: bool = False, progress=None) -> Environment:
    """The component's environment, built now if no ready one exists. Raises EnvironmentError_.
    `progress(text)`, if given, hears each install step as it starts (a build takes minutes)."""
    steps = install_steps(raw)
    if not steps:
        raise EnvironmentError_(f"{name}: its docker engine's setup declares no Python packages to install")
    too_old = python_too_old(raw)
    if too_old:
        raise EnvironmentError_(f"{name}: environment not built: {too_old}")
    existing = ready(name, raw)
    if existing is not None:
        return existing
    root = cache_root()
    path = location(name, raw)
    python = path / "bin" / "python"
    ready_marker = path / READY_FILE
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".building-{name}-", dir=root))
    started = time.perf_counter()
    log_path = staging.with_suffix(".log")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(staging)], check=True,
                       capture_output=True)
        with open(log_path, "w") as log:
            for number, args in enumerate(steps, 1):
                if progress:
                    command = " ".join(args)
                    progress(f"{name}: step {number}/{len(steps)}: pip install "
                             f"{command if len(command) <= 90 else command[:87] + '...'}")
                _pip(staging / "bin" / "python", args, log)
        gpu_packages = [d for d in _installed(staging / "bin" / "python") if d.startswith(GPU_DISTRIBUTION_PREFIXES)]
        if gpu_packages and not gpu:
            raise EnvironmentError_(
                f"the install pulled GPU libraries ({', '.join(gpu_packages[:3])}...): make a CPU torch wheel "
                "findable to pip (e.g. PyTorch's CPU wheel index as an extra index URL)")
        seconds = time.perf_counter() - started
        (staging / READY_FILE).write_text(json.dumps({"steps": steps, "build_seconds": round(seconds, 1)}, indent=1))
        # venv writes absolute paths into pyvenv.cfg's `command` line only; bin/python finds its home
        # through pyvenv.cfg beside it, so the renamed folder works.
        try:
            staging.rename(path)
        except OSError:  # another process finished the same environment first
            if not ready_marker.exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)
        log_path.unlink(missing_ok=True)
        return Environment(path, python, True, seconds)
    except (EnvironmentError_, subprocess.CalledProcessError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        detail = error if isinstance(error, EnvironmentError_) else f"creating the virtual environment failed ({error})"
        raise EnvironmentError_(f"{name}: environment not built: {detail}; pip's log: {log_path}") from None
