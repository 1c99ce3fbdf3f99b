"""The `benchmark` command: plan, run, aggregate, print the leaderboard."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from . import compare, layout
from .aggregation import aggregate_results
from .config import NO_PROJECT, project_root
from .disk_space import SPACE_MARGIN, shutil_disk_free
from .engine_guard import format_bytes
from .layout import Status
from .report import write_report


def say(text: str, stream=None):
    """Print to stderr (or `stream`) in lines of at most layout.LINE_WIDTH columns; an `[error]` stays one line
    (the project's rule for bad input: one line a script or a person can quote)."""
    lines = [text] if text.startswith(layout.ERROR_TAG) else layout.fit_lines(text)
    print("\n".join(lines), file=stream or sys.stderr)


def _names(values):
    if values is None:
        return None
    return [name for value in values for name in value.split(",") if name]


def add_commands(commands):
    bench = commands.add_parser(
        "benchmark", help="run the whole benchmark on this machine",
        description="Run datasets -> tasks -> methods and controls -> metrics (the DAG of main.nf) with a pool "
                    "of workers. Finished steps are cached in the output directory, so a re-run resumes; a "
                    "failing component is recorded and the rest completes. With no selection it runs the "
                    "default datasets (those that need no network) with every task, method and metric.")
    bench.add_argument("--output", help=f"results directory (default: {layout.DEFAULT_RESULTS} for the default "
                                        f"selection, else {layout.DEFAULT_RESULTS}-<what was selected>, e.g. "
                                        f"{layout.results_folder({'methods': ['mine']})}, so a selection never "
                                        "overwrites another run's results)")
    add_selection_arguments(bench)
    bench.add_argument("--compare", metavar="RESULTS_DIR",
                       help="compare --methods with everything in an earlier run's results folder: run that folder's "
                            "selection plus these methods in a folder of its own (default RESULTS_DIR-with_<methods>), "
                            "taking every step whose inputs are identical (same cache key) from RESULTS_DIR, so only "
                            "the new steps run and the tables hold every method")
    bench.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                       help="steps run at once (default: number of CPUs, %(default)s)")
    bench.add_argument("--dry-run", action="store_true", help="list the jobs (component, inputs, outputs) and stop")
    bench.add_argument("--n-resamples", type=int, default=1000,
                       help="bootstrap resamples of test conditions for the intervals (default: %(default)s)")
    bench.add_argument("--verbose", action="store_true",
                       help="one progress line per finished step (default: one updating line, failures and a "
                            "summary of not-applicable steps per cause)")
    bench.add_argument("--fail-on-error", action="store_true",
                       help=f"kept for scripts; the exit code always says it: {layout.STEPS_FAILED_EXIT_CODE} when a "
                            f"step failed, {layout.NO_SCORES_EXIT_CODE} when no score was produced, 0 otherwise (not "
                            "applicable and not installed steps are not failures)")
    bench.add_argument("--step-timeout", type=float, metavar="SECONDS",
                       help="wall-time limit of every step (default: from the component's labels: lowtime 1 h, "
                            "midtime 4 h, hightime 12 h, veryhightime 48 h, as _viash.yaml's config_mods say)")
    bench.add_argument("--step-memory", metavar="SIZE",
                       help="memory limit of every step, e.g. 4GiB or 512MB (default: from the labels: lowmem "
                            "8 GiB, midmem 32 GiB, highmem 128 GiB, at most the machine's memory)")
    bench.set_defaults(handler=benchmark)

    agg = commands.add_parser(
        "aggregate", help="build the result tables from a results directory",
        description="Read the published step folders of a results directory (from `perturbcast benchmark` or "
                    "`nextflow run .`) and write results.parquet, results_per_condition.parquet and the leaderboard.")
    agg.add_argument("results", help="results directory (holding scores/)")
    agg.add_argument("--project", default=".", help="project root (holding _viash.yaml)")
    agg.add_argument("--n-resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    agg.add_argument("--plan", metavar="PLAN_JSON",
                     help="the run's `perturbcast plan --json` (Nextflow: pipeline_info/plan.json): build trace.tsv from "
                          "the steps' step.json records (as the engine keeps them) and aggregate this run's scores")
    agg.add_argument("--nextflow-trace", metavar="TRACE",
                     help="Nextflow's trace of the run, for wall time and peak memory per step (default with --plan: "
                          "RESULTS/trace.txt when present)")
    agg.add_argument("--staged", help=argparse.SUPPRESS)        # main.nf's AGGREGATE: staged files in1/, in2/, ...
    agg.add_argument("--staged-paths", help=argparse.SUPPRESS)  # ... and their layout paths (a JSON list)
    agg.add_argument("--state-id", help="write state.yaml (OpenProblems) with this run id")
    agg.set_defaults(handler=aggregate)


def add_selection_arguments(parser):
    """The options that choose what runs: shared by `benchmark` and `plan` (one parser, one meaning)."""
    for kind in ("datasets", "tasks", "methods", "metrics"):
        parser.add_argument(f"--{kind}", nargs="+", metavar="ID",
                           help=f"only these {kind} (space or comma separated); default: all" +
                                (" defaults" if kind == "datasets" else ""))
    parser.add_argument("--priors", nargs="+", metavar="ID",
                        help="prior components (src/priors, `perturbcast list --kind priors`): every method that reads "
                             "what a prior writes (info.uses_prior) also runs with it, as `<method>+<prior>`, beside "
                             "itself without one (default: no priors)")
    parser.add_argument("--dataset-file", metavar="PATH",
                        help="benchmark your own h5ad: a common dataset (src/api/file_common_dataset.yaml) or a "
                             "cell-level file read by the h5ad_file loader (see --dataset-arg)")
    parser.add_argument("--dataset-id", metavar="ID", help="id of --dataset-file in the results (default: its file name)")
    parser.add_argument("--dataset-arg", action="append", metavar="KEY=VALUE",
                        help="an argument of the h5ad_file loader for --dataset-file, e.g. perturbation_column=target_gene "
                             "(repeatable; `perturbcast run src/datasets/h5ad_file -- --help` lists them)")
    parser.add_argument("--spec", metavar="FILE",
                        help="a benchmark spec (YAML: datasets with arguments or files, tasks, methods, metrics, seeds, "
                             "n_folds, folds); the same file works as `nextflow run . -params-file FILE`. Options given "
                             "on the command line override it")
    # None: not given, so a spec's key (else the default) applies; given, it overrides the spec
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="partition seeds: each seed is one K-fold partition of the held-out units, and every "
                             "fold of it is run (default: 0)")
    parser.add_argument("--n-folds", type=int,
                        help="folds per partition; across them every eligible perturbation is tested once "
                             "(default: 5)")
    parser.add_argument("--folds", nargs="+", type=int, metavar="F",
                        help="run only these folds (0-based) of each partition, e.g. for a quick look; results then "
                             "cover only part of each dataset (default: all)")
    parser.add_argument("--project", default=".", help="project root (holding _viash.yaml); default: current directory")


def aggregate(args) -> int:
    root = project_root(args.project)
    output = Path(args.results).resolve()
    if root is None or not output.is_dir():
        say(f"[error] need the project root (_viash.yaml) and an existing results directory '{args.results}'")
        return 1
    only = None
    if args.plan:
        from . import engine, plan_cli

        try:
            if args.staged:
                plan_cli.link_staged(output, Path(args.staged), json.loads(Path(args.staged_paths).read_text()))
            plan = json.loads(Path(args.plan).read_text())
        except (OSError, ValueError) as error:
            say(f"[error] --plan {args.plan}: {error}")
            return 1
        trace_path = Path(args.nextflow_trace) if args.nextflow_trace else output / layout.NEXTFLOW_TRACE
        records = plan_cli.records_from_layout(plan, output, plan_cli.nextflow_trace(trace_path))
        engine.write_trace(records, output / layout.TRACE)
        only = {Path(r.outputs["output"]).resolve() for r in records
                if r.stage == layout.SCORE and r.status == Status.OK}
    print(aggregate_results(root, output, only, n_resamples=args.n_resamples))
    if args.plan:
        from . import plan_cli
        plan_cli.write_dataset_uns(output)
    print(f"report: {write_report(output)}")
    if args.state_id:
        from . import plan_cli
        plan_cli.write_state(output, args.state_id)
    return 0


# Beyond these a limit is a typo (`inf`, `1e30`, `9999PiB`): the timers and rlimits of the steps cannot hold it.
MAX_STEP_TIMEOUT = 30 * 24 * 3600.0
MAX_STEP_MEMORY = 2**50  # 1 PiB


def _engine_options(args) -> tuple[str | None, object]:
    """The first bad engine option as an `[error]` line (and None), else (None, the step limits)."""
    from .engine_guard import Limits
    from .viash import memory_as_bytes

    if args.jobs < 1:
        return f"[error] --jobs must be at least 1 (got {args.jobs})", None
    if args.n_resamples < 1:
        return f"[error] --n-resamples must be at least 1 (got {args.n_resamples})", None
    if args.step_timeout is not None and not 0 < args.step_timeout <= MAX_STEP_TIMEOUT:
        return (f"[error] --step-timeout must be a positive number of seconds, at most {MAX_STEP_TIMEOUT:.0f} (30 days) "
                f"(got {args.step_timeout:g})"), None
    memory = None
    if args.step_memory is not None:
        memory = memory_as_bytes(args.step_memory)
        if not memory:
            return f"[error] --step-memory must be an amount of memory such as 4GiB or 512MB (got '{args.step_memory}')", None
        if not 2**20 <= memory <= MAX_STEP_MEMORY:
            return (f"[error] --step-memory must be between 1 MiB and 1 PiB "
                    f"(got '{args.step_memory}')"), None
    if args.output is not None and not args.output.strip():
        return "[error] --output is empty; expected a results folder (e.g. --output results/)", None
    problem = layout.results_folder_problem(Path(args.output), project_root(args.project)) if args.output else None
    if problem:  # before anything is planned (the project root is checked once it is known)
        return f"[error] --output {problem}", None
    return None, Limits(timeout=args.step_timeout, memory=memory)


def benchmark(args) -> int:
    from . import engine

    try:
        return _benchmark(args)
    except KeyboardInterrupt:  # while planning or writing the tables (steps have their own handling)
        say(f"[interrupted] {engine.INTERRUPT.name if engine.INTERRUPT.stopped else 'SIGINT'}: stopped outside "
              f"the steps; finished steps stay cached in '{args.output or layout.DEFAULT_RESULTS}'")
        return layout.INTERRUPTED_EXIT_CODE


def selection_folder(selection, added_controls=(), spec: str | None = None) -> Path:
    """The results folder of a run without --output (layout.results_folder): named after what the selection
    changes from the default run (and the spec file it came from, whose dataset arguments the ids do not
    show). The controls the command added to a method selection are left out of the name."""
    methods = selection.methods
    if methods is not None:
        methods = [m for m in methods if m not in added_controls]
    default = type(selection)()
    return layout.results_folder({
        "spec": [Path(spec).stem] if spec else None,
        "datasets": selection.datasets, "tasks": selection.tasks, "methods": methods, "metrics": selection.metrics,
        "priors": selection.priors, "seeds": selection.seeds if list(selection.seeds) != default.seeds else None,
        "n_folds": [selection.n_folds] if selection.n_folds != default.n_folds else None, "folds": selection.folds})


def _user_datasets(args, root: Path, selection) -> str | None:
    """Apply --spec and --dataset-file to the selection (command-line options win); a problem as one line."""
    from .spec import SpecError, load_spec
    from .userdata import UserDataError, dataset_step_arguments, parse_dataset_args

    try:
        if args.spec:
            spec = load_spec(args.spec, root=root)
            given = {key: getattr(args, key) for key in ("datasets", "tasks", "methods", "metrics", "priors")}
            for key in ("tasks", "methods", "metrics", "priors"):
                if given[key] is None and spec[key] is not None:
                    setattr(selection, key, spec[key])
            if given["datasets"] is None and spec["datasets"]:
                selection.datasets = []
                for entry in spec["datasets"]:
                    if entry["file"]:
                        selection.extra_datasets.append({"id": entry["id"], "loader": entry["loader"],
                                                         "arguments": entry["arguments"]})
                    elif entry["arguments"]:
                        selection.dataset_arguments[entry["id"]] = entry["arguments"]
                    selection.datasets.append(entry["id"])
            for key in ("seeds", "n_folds", "folds"):  # each command-line option overrides its spec key alone
                if getattr(args, key) is None:
                    setattr(selection, key, spec[key])
        if args.dataset_file:
            loader, dataset_id, arguments = dataset_step_arguments(
                args.dataset_file, args.dataset_id, parse_dataset_args(args.dataset_arg), root=root)
            selection.extra_datasets.append({"id": dataset_id, "loader": loader, "arguments": arguments})
            selection.datasets = (selection.datasets or []) + [dataset_id] if args.datasets or args.spec else [dataset_id]
        elif args.dataset_arg or args.dataset_id:
            return "--dataset-arg and --dataset-id describe --dataset-file, which was not given"
    except (SpecError, UserDataError) as error:
        return str(error)
    return None


def selection_from_args(args, command: str):
    """(package root, engine.Selection, 0) from the options of add_selection_arguments, or (root, None, exit code)
    after printing the problem as one `[error]` line (`benchmark` and `plan` share this)."""
    from . import engine

    root = project_root(args.project)
    if root is None:
        say(f"[error] {NO_PROJECT.format(args.project)}")
        return None, None, 1
    given = {key: getattr(args, key) for key in ("seeds", "n_folds", "folds") if getattr(args, key) is not None}
    selection = engine.Selection(datasets=_names(args.datasets), tasks=_names(args.tasks),
                                 methods=_names(args.methods), metrics=_names(args.metrics), priors=_names(args.priors),
                                 **given)
    problem = _user_datasets(args, root, selection)
    if problem:
        say(f"[error] {problem}")
        return root, None, 2
    if any(seed < 0 for seed in selection.seeds):
        print(f"[error] --seeds {' '.join(map(str, selection.seeds))}: expected seeds >= 0"
              + (" (options given override the spec's keys)" if args.spec else ""), file=sys.stderr)
        return root, None, 2
    for option, key in (("--seeds", "seeds"), ("--folds", "folds")):
        values = getattr(selection, key)
        if values is not None and len(set(values)) < len(values):
            unique = list(dict.fromkeys(values))
            print(f"perturbcast {command}: {option} {' '.join(map(str, values))} names some twice; each runs once: "
                  f"{' '.join(map(str, unique))}", file=sys.stderr)
            setattr(selection, key, unique)
    if selection.n_folds < 2 or any(not 0 <= f < selection.n_folds for f in selection.folds or []):
        say(f"[error] --n-folds is {selection.n_folds} and --folds {selection.folds}: expected --n-folds >= 2 and "
            f"folds between 0 and {selection.n_folds - 1}" + (" (options given override the spec's keys)"
                                                              if args.spec else ""))
        return root, None, 2
    if selection.methods is not None:
        # scores are only readable on the scale these controls set: always run them with a selection, whether
        # it came from --methods or from a spec's `methods:`
        present = {c.name for c in engine.discover_components(root) if c.component_type == "control_method"}
        args.added_controls = [c for c in engine.SCALE_CONTROLS if c in present and c not in selection.methods]
        if args.added_controls:
            selection.methods = selection.methods + args.added_controls
            say(f"perturbcast {command}: added the controls that set the scale: {', '.join(args.added_controls)}")
    return root, selection, 0


def _compared(args, selection):
    """The selection of a --compare run (the earlier folder's, plus --methods) and its default folder."""
    new = _names(args.methods)
    if not new:
        return None, "--compare needs --methods: the methods to compare with everything in the earlier run"
    if args.datasets or args.dataset_file or args.spec or args.tasks or args.metrics:
        return None, ("--compare takes the datasets, tasks and metrics of the earlier run; give only --methods "
                      "(and --output)")
    compared, problem = compare.compared_selection(Path(args.compare), selection.methods)
    if compared is not None and args.output is None:
        args.output = str(compare.compare_folder(Path(args.compare), new))
    return compared, problem


def _benchmark(args) -> int:
    from . import engine

    problem, limits = _engine_options(args)
    if problem:
        say(problem)
        return 2
    root, selection, code = selection_from_args(args, "benchmark")
    if selection is None:
        return code
    chosen = args.output is not None
    if args.compare:
        selection, problem = _compared(args, selection)
        if problem:
            say(f"[error] {problem}")
            return layout.USAGE_EXIT_CODE
    if args.output is None:
        args.output = str(selection_folder(selection, getattr(args, "added_controls", ()), args.spec))
    made_with = compare.selection_record(selection)
    folder, problem = compare.folder_for(Path(args.output), made_with, chosen)
    if problem:
        say(f"[error] {problem}")
        return layout.USAGE_EXIT_CODE
    if not chosen:
        args.output = str(folder)
        say(f"perturbcast benchmark: results in {args.output} (each selection has its own folder; --output "
            "chooses another)")
    output = Path(args.output).resolve()
    problem = layout.results_folder_problem(output, root)
    if problem:
        print(f"[error] --output {problem}", file=sys.stderr)
        return 2
    try:
        steps, declared = engine.plan(root, output, selection)
    except ValueError as error:
        broken = engine.broken_configs()
        say(f"[error] {error}" + (f" (configs that could not be loaded: {', '.join(r.component for r in broken)})"
                                    if broken else ""))
        return 1
    broken = engine.broken_configs()
    for record in broken:
        say(f"{record.reason}: its steps are left out")
    if args.dry_run:
        for step in steps:
            inputs = " ".join(f"--{k} {v}" for k, v in step.inputs.items())
            outputs = " ".join(f"--{k} {v}" for k, v in step.outputs.items())
            extra = " ".join(f"--{k} {v}" for k, v in step.arguments.items())
            print(f"{step.id}\t{step.component.namespace}/{step.component.name}\t{inputs}\t{outputs}\t{extra}".rstrip())
        for record in declared:
            print(f"{record.id}\tnot applicable: {record.reason}")
        return 0
    try:
        output.mkdir(parents=True, exist_ok=True)
        with engine.results_lock(output):
            # checked again under the lock: the folder may have been filled since
            problem = layout.results_folder_problem(output, root)
            if problem:
                print(f"[error] --output {problem}", file=sys.stderr)
                return 2
            if layout.read_marker(output) is None:
                layout.write_marker(output, layout.normalized_selection(selection))
            compare.write_selection(output, made_with)
            with engine.INTERRUPT.handling_signals():
                return _run(args, root, output, steps, declared + broken, limits, selection.n_folds)
    except OSError as error:
        full = error.errno == errno.ENOSPC
        if not full and (error.filename is None or not _is_under(error.filename, output)):
            raise
        where = "" if full or not error.filename else f" ('{error.filename}')"
        print(f"[error] cannot {'write' if full or error.errno in (errno.EACCES, errno.EROFS) else 'use'} the results "
              f"folder '{output}': {error.strerror or error}{where}"
              + (f" ({_free_space(output)} free, at least {format_bytes(SPACE_MARGIN)} needed; free some space and "
                 "rerun: finished steps stay cached, and every file it replaces keeps its previous version)"
                 if full else ""), file=sys.stderr)
        return 1
    except engine.ResultsLocked as error:
        say(f"[error] {error}")
        return 1


def _free_space(folder: Path) -> str:
    try:
        return format_bytes(shutil_disk_free(folder))
    except OSError:
        return "unknown"


def _is_under(path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(folder)


def _run(args, root: Path, output: Path, steps, declared, limits, n_folds: int) -> int:
    from . import engine

    say(f"perturbcast benchmark: {len(steps)} steps, {args.jobs} at once, results in {output}")
    progress = engine.Progress(len(steps), verbose=args.verbose)
    reuse = compare.reuser(Path(args.compare), output) if getattr(args, "compare", None) else None
    records = engine.execute(steps, jobs=args.jobs, limits=limits, progress=progress, reuse=reuse)
    records += engine.check_partitions(steps, records, n_folds) + declared
    engine.write_trace(records, output / layout.TRACE)
    this_run = {Path(r.outputs["output"]).resolve() for r in records if r.stage == layout.SCORE and r.status == Status.OK}
    if engine.DISK.problem and not engine.INTERRUPT.stopped:
        done = sum(Status(r.status).reusable for r in records if r.stage != layout.CONFIG)
        print(f"[error] {engine.DISK.problem} ({done} of {len(records)} steps done; {output / layout.TRACE} lists them)",
              file=sys.stderr)
        return 1
    if engine.INTERRUPT.stopped:
        # whatever tables the finished scores allow; the second Ctrl-C (handler still installed) exits at once
        tables = ""
        if this_run:
            try:
                aggregate_results(root, output, this_run, n_resamples=args.n_resamples)
                tables = f", {layout.RESULTS}"
            except Exception as error:  # partial results may not aggregate; the trace is what counts
                tables = f" (no result tables: {type(error).__name__}: {error})"
        done = sum(Status(r.status).reusable for r in records if r.stage != layout.CONFIG)
        say(f"[interrupted] {engine.INTERRUPT.name}: stopped after {done} of {len(records)} steps; partial "
              f"results in {output} ({layout.TRACE}{tables})")
        return layout.INTERRUPTED_EXIT_CODE
    text = aggregate_results(root, output, this_run, n_resamples=args.n_resamples)
    print(text)
    print(f"\nreport: {write_report(output)}")
    for record in declared:
        progress.update_cause(record)
    print("\n".join(run_summary(records, progress, output)))
    return exit_code(records, this_run)


def exit_code(records, scores) -> int:
    """layout.NO_SCORES_EXIT_CODE when no score was produced, STEPS_FAILED_EXIT_CODE when a step failed or was
    skipped after a failure, else 0 (not applicable and not installed are statuses, not failures)."""
    if not scores:
        return layout.NO_SCORES_EXIT_CODE
    if any(r.status in (Status.FAILED, Status.SKIPPED) for r in records):
        return layout.STEPS_FAILED_EXIT_CODE
    return 0


# the download helper's message for a file it could not fetch (src/utils/download.py)
DOWNLOAD_FAILED = "cannot download"


def not_installed_lines(records) -> list[str]:
    """One line per method whose packages are not installed: how many steps it would have had and the way to
    install it (the component's own [not installed] message says it)."""
    first, steps = {}, {}
    for record in records:
        if record.status == Status.NOT_INSTALLED:
            first.setdefault(record.component, str(record.reason or "").replace(layout.NOT_INSTALLED_TAG, "").strip())
            steps[record.component] = steps.get(record.component, 0) + 1
    return [f"  not installed (not a failure; {steps[c]} steps): {reason or c}" for c, reason in sorted(first.items())]


def hint_lines(records, output: Path) -> list[str]:
    """The advice the dataset steps logged (layout.HINT_TAG lines, e.g. an obs column that splits the controls)."""
    lines = []
    for record in records:
        if record.stage != layout.DATASET or record.status != Status.OK or layout.log_of(record.id) is None:
            continue
        try:
            text = (output / layout.log_of(record.id)).read_text(errors="replace")
        except OSError:
            continue
        dataset = layout.dataset_of_step(record.id)
        lines += [f"  hint ({dataset}): {line.split(layout.HINT_TAG, 1)[1].strip()}"
                  for line in text.splitlines() if layout.HINT_TAG in line]
    return lines


def run_summary(records, progress, output: Path) -> list[str]:
    """The closing lines: step counts, methods not installed (once, with their install command), the causes of
    not-applicable and skipped steps, every failure (a failed download with the offline way in), the exit code's
    meaning; each at most layout.LINE_WIDTH columns."""
    counts = {status: sum(r.status == status for r in records) for status in layout.STATUS_ORDER}
    lines = ["", "steps: " + ", ".join(f"{counts[s]} {s.label}" for s in layout.STATUS_ORDER
                                       if counts[s] or s == Status.OK) + f"; tables in {output}"]
    lines += not_installed_lines(records) + hint_lines(records, output)
    own = f" {Status.NOT_INSTALLED.label} ("  # listed once above, with the command that installs it
    lines += [line for line in progress.summary() if own not in line]
    for record in (r for r in records if r.status == Status.FAILED):
        log = output / layout.log_of(record.id) if layout.log_of(record.id) else None
        lines.append(f"  failed: {record.id}: {record.reason}" + (f"  (log: {log})" if log else ""))
        if record.stage == layout.DATASET and DOWNLOAD_FAILED in (record.reason or ""):
            dataset = layout.dataset_of_step(record.id)
            lines.append(f"    offline? place a copy you downloaded elsewhere: perturbcast cache add FILE --dataset "
                         f"{dataset}")
    code = exit_code(records, [r for r in records if r.stage == layout.SCORE and r.status == Status.OK])
    if code == layout.NO_SCORES_EXIT_CODE:
        lines.append(f"no score was produced: exit code {code}")
    elif code == layout.STEPS_FAILED_EXIT_CODE:
        lines.append(f"some steps failed (results are partial): exit code {code}")
    return [piece for line in lines for piece in layout.fit_lines(line)]
