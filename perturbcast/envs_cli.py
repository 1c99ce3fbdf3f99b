"""`perturbcast envs list | build [COMPONENT ...]`: the components' own Python environments (perturbcast.envs).

A component that runs in its own environment builds it the first time it runs, which takes minutes and
would count in that step's wall time; `envs build` builds them beforehand (and is what CI runs before
its tests, so the model components' tests run there).
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def add_command(commands):
    parser = commands.add_parser(
        "envs", help="list or build the components' own Python environments (CPA, scGPT)",
        description="A component whose config sets info.isolated_environment (or that "
                    "PERTURBCAST_ISOLATED_ENVIRONMENTS names) runs in its own virtual environment, built from "
                    "the packages its docker engine's setup declares and cached in $PERTURBCAST_CACHE/envs under "
                    "a hash of that list. `list` shows each with its state; `build` builds the missing ones "
                    "now (minutes each, from the package index) instead of inside the first benchmark step.")
    parser.add_argument("action", choices=["list", "build"],
                        help="list: each environment with its state and folder; build: build the missing ones")
    parser.add_argument("components", nargs="*", metavar="COMPONENT",
                        help="component names or directories (default: every component that runs in its own "
                             "environment)")
    parser.add_argument("--jobs", type=int, default=2, help="environments built at once (default 2)")
    parser.add_argument("--project", default=".", help="project root (holding _viash.yaml); default: current directory")
    parser.set_defaults(handler=run)


def _select(components, wanted_names: list[str]):
    from . import envs
    if not wanted_names:
        return [c for c in components if envs.wanted(c.raw) and envs.install_steps(c.raw)], []
    by_name = {c.name: c for c in components}
    chosen, unknown = [], []
    for given in wanted_names:
        path = Path(given)
        name = path.parent.name if path.name == "config.vsh.yaml" else path.name
        config = by_name.get(name)
        if config is None or not envs.install_steps(config.raw):
            unknown.append(given)
        else:
            chosen.append(config)
    return chosen, unknown


def run(args) -> int:
    from . import envs
    from .config import NO_PROJECT, discover_components, project_root

    root = project_root(args.project)
    if root is None:
        print(f"[error] {NO_PROJECT.format(args.project)}", file=sys.stderr)
        return 1
    chosen, unknown = _select(discover_components(root), args.components)
    if unknown:
        print(f"[error] no component with Python packages in its docker setup is named {', '.join(unknown)} "
              "(`perturbcast envs list` shows those that run in their own environment)", file=sys.stderr)
        return 1
    if args.action == "list":
        for config in chosen:
            environment = envs.ready(config.name, config.raw)
            if environment:
                state = f"built ({environment.build_seconds:.0f} s to build)"
            elif envs.wanted(config.raw):
                state = "not built (built on its first run, or by `perturbcast envs build`)"
            else:
                state = f"not built (runs in perturbcast's environment unless {envs.ISOLATED_ENV} names it)"
            print(f"{config.name:<10} {state}  {envs.location(config.name, config.raw)}")
        return 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        # pip mostly waits on downloads and unpacking, so two builds at once take little more than one
        failed = sum(not ok for ok in pool.map(_build, chosen))
    return 1 if failed else 0


def _build(config) -> bool:
    from . import envs
    where = envs.location(config.name, config.raw)
    too_old = envs.python_too_old(config.raw)
    if too_old:  # not a failure: the component is "not installed" under this Python, as it says when run
        print(f"[envs] {config.name}: skipped: {too_old}", file=sys.stderr)
        return True
    if envs.ready(config.name, config.raw):
        print(f"[envs] {config.name}: already built: {where}", file=sys.stderr)
        return True
    started = time.perf_counter()
    print(f"[envs] {config.name}: building {where}", file=sys.stderr, flush=True)
    try:
        envs.ensure(config.name, config.raw, progress=lambda text: print(f"[envs] {text}", file=sys.stderr, flush=True))
    except envs.EnvironmentError_ as error:
        print(f"[error] {error}", file=sys.stderr)
        return False
    print(f"[envs] {config.name}: built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return True
