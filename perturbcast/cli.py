"""Command line: `perturbcast run | test | check-split | benchmark | plan | aggregate | report | cache | list | envs`
(and `step`, the task of main.nf's component processes)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError
from .layout import INTERRUPTED_EXIT_CODE, INVALID_CONFIG

DESCRIPTION = """\
perturbcast: benchmark of expression forecasting for unseen genetic perturbations.

  perturbcast run src/methods/linear_baseline -- --input_train train.h5ad --input_test test.h5ad --output pred.h5ad
  perturbcast test src/methods/linear_baseline
  perturbcast benchmark --output results/
"""


def _split_dashdash(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1:]
    return argv, []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perturbcast", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run one component as `viash run` would",
        description="Run one component exactly as `viash run COMPONENT -- ARGS` would (native engine), then "
                    "validate its h5ad outputs against the API formats in src/api. Arguments after `--` go to "
                    "the component; `perturbcast run COMPONENT -- --help` lists them.")
    run.add_argument("component", help="component directory (or its config.vsh.yaml)")
    run.add_argument("-k", "--keep", nargs="?", const="true", default="false", choices=["true", "false"],
                     help="keep the temporary build directory (as `viash run -k true`)")
    run.add_argument("--cpus", type=int, help="number of CPUs the component may use (meta['cpus'])")
    run.add_argument("--memory", help="memory the component may use, e.g. 4GB (meta['memory_*'])")
    run.add_argument("--no-validate", action="store_true", help="skip the API format check of the outputs")

    test = commands.add_parser(
        "test", help="run a component's test scripts as `viash test` would",
        description="Run every script in the component's test_resources in viash's test layout and print "
                    "`N passed, N failed`. Test data in resources_test/ is made by scripts/create_test_resources.py.")
    test.add_argument("components", nargs="+", help="component directories")
    test.add_argument("-k", "--keep", action="store_true", help="keep the test directories")
    test.add_argument("--cpus", type=int, help="number of CPUs each test may use (meta['cpus'])")
    test.add_argument("--memory", help="memory each test may use, e.g. 4GB (meta['memory_*'])")

    commands.add_parser("check-split", help="check a task split for leakage (see `perturbcast check-split -h`)",
                        add_help=False)

    # `exec BUILD_DIR` (the entry point of built executables) is internal: main() handles it before parsing

    from . import cache_cli, engine_cli, envs_cli, list_cli, plan_cli, report, step_cli
    engine_cli.add_commands(commands)
    plan_cli.add_command(commands)
    step_cli.add_command(commands)
    report.add_command(commands)
    cache_cli.add_commands(commands)
    list_cli.add_command(commands)
    envs_cli.add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["check-split"]:
        from .leakage_cli import main as check_split_main
        return check_split_main(argv[1:])
    if argv[:1] == ["exec"]:
        from .runner import exec_built
        return exec_built(argv[1], argv[2:])
    own, component_args = _split_dashdash(argv)
    parser = build_parser()
    args = parser.parse_args(own)
    try:
        if args.command == "run":
            from .runner import run_component
            result = run_component(args.component, component_args, keep=args.keep == "true", cpus=args.cpus,
                                   memory=args.memory, validate=not args.no_validate)
            return result.exit_code
        if args.command == "test":
            return _test(args)
        if args.command is None:
            parser.print_help()
            return 0
        return args.handler(args)
    except KeyboardInterrupt:
        # the component's own outputs are discarded on the way out (runner.execute): nothing half-written stays
        print(f"\n[interrupted] perturbcast {args.command}: stopped by SIGINT; nothing was written in place of an "
              "existing output", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except ConfigError as error:
        print(f"[error] {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:
        print(f"[error] {error}", file=sys.stderr)
        return 1


def _test(args) -> int:
    from .runner import run_component_tests
    passed = failed = 0
    for component in args.components:
        try:
            report = run_component_tests(component, keep=args.keep, cpus=args.cpus, memory=args.memory)
        except ConfigError as error:  # this component fails alone; the others are tested
            print(f"[error] {INVALID_CONFIG}: {error}", file=sys.stderr)
            failed += 1
            continue
        passed += len(report.passed)
        failed += len(report.failed)
        status = "ok" if not report.failed else f"FAILED ({', '.join(report.failed)}; kept {report.directory})"
        print(f"{Path(component)}: {len(report.passed)} passed, {len(report.failed)} failed  {status}", file=sys.stderr)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1
