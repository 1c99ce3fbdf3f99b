"""The plan's vocabulary and the results layout: the one module that knows them.

Step ids, where every stage writes (folders and file names), the step statuses, what blocks a step, the
columns of `trace.tsv`, the file names of a results directory and the exit codes all live here; the
engine, scoring, the OpenProblems files and the report go through it. Adding a stage path or a status is
an edit to this module (main.nf spells the same layout in Groovy; tests/test_nextflow.py compares them).

A step id is `<stage>/<key>` and the step's folder is `<results>/<stage folder>/<key>`:

  dataset    dataset/<d>                                   datasets/<d>/dataset.h5ad
  split      split/<d>/<t>/seed_<s>/fold_<f>               tasks/<d>/<t>/seed_<s>/fold_<f>/{train,test,solution}.h5ad
  prior      prior/<d>/<p>                                 priors/<d>/<p>/prior.h5ad            (from outside the data)
             prior/<d>/<t>/seed_<s>/fold_<f>/<p>           priors/<d>/<t>/seed_<s>/fold_<f>/<p>/prior.h5ad  (from a split)
  predict    predict/<d>/<t>/seed_<s>/fold_<f>/<m>         predictions/<d>/<t>/seed_<s>/fold_<f>/<m>/prediction.h5ad
  score      score/<d>/<t>/seed_<s>/fold_<f>/<m>/<metric>  scores/<d>/<t>/seed_<s>/fold_<f>/<m>/<metric>/score.h5ad

(a task without folds has no `fold_<f>` level). A method given a prior is the variant `<m>+<p>`
(vocabulary.method_variant): its prediction and score folders are named after the variant. Two kinds of record have an id but no folder: the
check of a whole partition (`partition/<d>/<t>/seed_<s>`, stage `split`) and a config that could not be
loaded (`config/<namespace>/<name>`, stage `config`). The plan of a Nextflow run adds leakage-check steps
(`check/split/...`, `check/partition/...`) that write check.json / partition_check.json in the checked folder.

Labels are never read back from these paths: every file carries its ids in `uns` (scoring reads them
there) and every record carries them in `labels`.
"""
from __future__ import annotations

import importlib.util
from enum import Enum
from pathlib import Path


def _load_vocabulary():
    """src/utils/vocabulary.py, the components' own copy of the domain vocabulary (one file for both)."""
    path = Path(__file__).resolve().parent.parent / "src" / "utils" / "vocabulary.py"
    spec = importlib.util.spec_from_file_location("perturbcast_vocabulary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Control label, target separator, the target parser and the components' exit codes.
vocabulary = _load_vocabulary()

# -- exit codes ------------------------------------------------------------------------------------------

# A component's answers (defined with the components, src/utils/vocabulary.py).
NOT_APPLICABLE_EXIT_CODE = vocabulary.NOT_APPLICABLE_EXIT_CODE   # 99
NOT_INSTALLED_EXIT_CODE = vocabulary.NOT_INSTALLED_EXIT_CODE     # 98
# Of perturbcast's own commands: a run stopped by SIGINT/SIGTERM (128 + SIGINT, as shells report it).
INTERRUPTED_EXIT_CODE = 130
# A command given bad options (argparse's convention).
USAGE_EXIT_CODE = 2
# `perturbcast benchmark`: some selected step failed or was skipped after a failure (the results are partial),
# and no score at all was produced (nothing to read). 0: every selected step ran, or was not applicable by
# declaration, or its method is not installed (its own status, listed with the command that installs it).
STEPS_FAILED_EXIT_CODE = 1
NO_SCORES_EXIT_CODE = 3

# Every line perturbcast prints to a terminal fits this many columns.
LINE_WIDTH = 120


def fit_lines(text: str, indent: str = "    ") -> list[str]:
    """`text` as lines of at most LINE_WIDTH columns (continuations indented), each existing line kept apart."""
    import textwrap

    out = []
    for line in str(text).splitlines() or [""]:
        lead = line[:len(line) - len(line.lstrip())]
        out += textwrap.wrap(line, LINE_WIDTH, subsequent_indent=lead + indent, break_on_hyphens=False,
                             break_long_words=True) or [""]
    return out


def settings_from_environment(component: str, environ) -> dict:
    """The environment settings a component reads (its own arguments, the GO table): part of a step's cache
    key, so that a changed setting reruns the step instead of reusing a result made with another."""
    names = (vocabulary.settings_variable(component), vocabulary.GO_ANNOTATION_VARIABLE)
    return {name: environ[name] for name in names if environ.get(name)}

# Lines a step writes to its log that name its outcome; the engine takes the last of them as the reason.
ERROR_TAG = "[error]"
# The reason of a config record whose component could not be loaded (its steps are left out of the run).
INVALID_CONFIG = "invalid config"
NOT_APPLICABLE_TAG = "[not applicable]"
NOT_INSTALLED_TAG = "[not installed]"
OUTCOME_TAGS = (ERROR_TAG, NOT_APPLICABLE_TAG, NOT_INSTALLED_TAG)
HINT_TAG = vocabulary.HINT_TAG


# -- statuses --------------------------------------------------------------------------------------------

class Status(str, Enum):
    """What became of a step. A `str`, so records, JSON and trace.tsv hold the plain value."""
    OK = "ok"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"   # the component declared or answered that the input is not for it
    NOT_INSTALLED = "not_installed"     # the component's optional packages are absent on this machine
    SKIPPED = "skipped"                 # not run because an upstream step failed (or is missing)
    INTERRUPTED = "interrupted"         # running or due when the run was stopped

    def __str__(self) -> str:
        return self.value

    # Hash as the plain string (Enum hashes the member's name), so a Status and its value are one key of a
    # dict or set: counts keyed by trace strings are found with Status members and the other way round.
    def __hash__(self) -> int:
        return hash(self.value)

    @property
    def label(self) -> str:
        """As shown to people: `not applicable`."""
        return self.value.replace("_", " ")

    @property
    def reusable(self) -> bool:
        """A finished answer a re-run may take from the step's record instead of running it again."""
        return self in (Status.OK, Status.NOT_APPLICABLE)

    @property
    def excuses_downstream(self) -> bool:
        """Steps below it are `not_applicable` too (not `skipped`): nothing went wrong."""
        return self in (Status.NOT_APPLICABLE, Status.NOT_INSTALLED)

    @classmethod
    def of_exit_code(cls, exit_code: int) -> "Status":
        return {0: cls.OK, NOT_APPLICABLE_EXIT_CODE: cls.NOT_APPLICABLE,
                NOT_INSTALLED_EXIT_CODE: cls.NOT_INSTALLED}.get(exit_code, cls.FAILED)


def status_label(value) -> str:
    """How a status read from a file is shown (`not applicable`); an unknown value as it is."""
    return Status(value).label if value in _STATUS_VALUES else str(value)


_STATUS_VALUES = {status.value for status in Status}
# Display order (terminal summary, report).
STATUS_ORDER = tuple(Status)
# Statuses of a step that produced no output.
NOT_DONE = (Status.FAILED, Status.NOT_APPLICABLE, Status.NOT_INSTALLED, Status.SKIPPED, Status.INTERRUPTED)


def blocked_by(upstream_id: str, upstream_status: str) -> dict:
    """The structured cause of a step that did not run because of another (StepRecord.blocked_by)."""
    return {"step": upstream_id, "status": str(upstream_status)}


def blocked_status(upstream_statuses) -> Status:
    """A step below these non-ok steps: not applicable when each of them is, else skipped."""
    return (Status.NOT_APPLICABLE if all(Status(s).excuses_downstream for s in upstream_statuses)
            else Status.SKIPPED)


def blocked_reason(cause: dict) -> str:
    """The sentence shown for a structured cause: `upstream <id> <status>`."""
    return f"upstream {cause['step']} {Status(cause['status']).label}"


# -- stages, step ids and folders ------------------------------------------------------------------------

DATASET, SPLIT, PRIOR, PREDICT, SCORE = "dataset", "split", "prior", "predict", "score"
STAGES = (DATASET, SPLIT, PRIOR, PREDICT, SCORE)
# Records that are not a stage's step: a config that could not be loaded; the check of a partition.
CONFIG, PARTITION = "config", "partition"
STAGE_OF_TYPE = {"dataset_loader": DATASET, "task": SPLIT, "prior": PRIOR, "method": PREDICT, "control_method": PREDICT,
                 "metric": SCORE}
STAGE_FOLDERS = {DATASET: "datasets", SPLIT: "tasks", PRIOR: "priors", PREDICT: "predictions", SCORE: "scores"}

# A step's own files, in its folder.
STEP_RECORD = "step.json"
STEP_LOG = "log.txt"
# What a dataset step run by `perturbcast step` (Nextflow) also leaves in its folder: the dataset's uns (for
# dataset_uns.yaml without staging the dataset) and an OpenProblems-style state.yaml (its id and files).
STEP_DATASET_UNS = "dataset_uns.yaml"
STEP_STATE = "state.yaml"

# A step's working directory, inside its folder (removed when the step leaves nothing in it).
STEP_WORKDIR = "work"
# The prefix of a component's output while it is written and validated (renamed to its name on success).
PARTIAL_PREFIX = ".partial-"


def partial_name(path, tag: str) -> str:
    """Where a component writes `path` until it is validated: a hidden name in the same folder, ending like
    `path` (components may choose the format by the extension)."""
    import os

    head, tail = os.path.split(str(path))
    return os.path.join(head, f"{PARTIAL_PREFIX}{tag}-{tail}")


def not_a_file(path) -> str | None:
    """Why `path` cannot be read as a file (it is missing, a folder, a device, pipe or socket), or None."""
    import os

    if not os.path.exists(path):
        return "does not exist"
    if os.path.isdir(path):
        return "is a directory, expected a file"
    if not os.path.isfile(path):
        return "is not a regular file (a device, pipe or socket)"
    return None


def step_made_files(stage: str) -> set:
    """The names a step of `stage` makes in its folder: all a rerun may remove there (nothing else is)."""
    return ({STEP_RECORD, STEP_LOG, STEP_DATASET_UNS, STEP_STATE, STEP_WORKDIR, *CHECK_RECORDS.values()}
            | set(STAGE_OUTPUTS.get(stage, {}).values()))


# The plan's leakage checks (`perturbcast plan --json`; the engine runs them inside its split steps): one per
# split and one per complete partition, with the id `check/<id of the split or partition record>`, and the
# record each writes in the checked split's (or partition's) folder, by kind.
CHECK = "check"
CHECK_RECORDS = {SPLIT: "check.json", PARTITION: "partition_check.json"}
# A partition check's input holding one fold's test file (`test_fold_<f>`; its other input is `common`).
PARTITION_TEST_INPUT = "test_fold_"


def partition_test_input(fold: int) -> str:
    return f"{PARTITION_TEST_INPUT}{fold}"


def partition_test_inputs(inputs: dict) -> list:
    """The test files of a partition check's inputs, in fold order."""
    folds = {int(name[len(PARTITION_TEST_INPUT):]): path for name, path in inputs.items()
             if name.startswith(PARTITION_TEST_INPUT)}
    return [folds[fold] for fold in sorted(folds)]

# Output files of each stage (argument -> file name); `*_cells` are made only when a component reads them.
STAGE_OUTPUTS = {
    DATASET: {"output": "dataset.h5ad", "output_cells": "dataset_cells.h5ad"},
    SPLIT: {"output_train": "train.h5ad", "output_test": "test.h5ad", "output_solution": "solution.h5ad",
            "output_train_cells": "train_cells.h5ad", "output_solution_cells": "solution_cells.h5ad"},
    PRIOR: {"output": "prior.h5ad"},
    PREDICT: {"output": "prediction.h5ad", "output_cells": "prediction_cells.h5ad"},
    SCORE: {"output": "score.h5ad"},
}


def split_key(dataset_id: str, task_id: str, seed: int, fold: int | None = None) -> str:
    """`<d>/<t>/seed_<s>[/fold_<f>]`: the part of the ids and folders a split and everything below share."""
    return f"{dataset_id}/{task_id}/seed_{seed}" + (f"/fold_{fold}" if fold is not None else "")


def dataset_key(dataset_id: str) -> str:
    return dataset_id


def prior_key(scope: str, prior: str) -> str:
    """`<d>/<p>` for a prior made from outside the data (scope: the dataset key), `<split>/<p>` for one learnt
    from a split's training data (scope: the split key)."""
    return f"{scope}/{prior}"


def predict_key(split: str, method_id: str) -> str:
    return f"{split}/{method_id}"


def score_key(split: str, method_id: str, metric_component: str) -> str:
    return f"{split}/{method_id}/{metric_component}"


# A score unit: the score steps of one prediction that share an image, run one after another as one job (one
# worker job of the engine, one SCORE task of main.nf); each member keeps its own folder, step.json and status.
# Its id is `score_unit/<key of the prediction>/<first member's metric component>`; its folder is the
# prediction's folder under scores/, the parent of its members' folders.
SCORE_UNIT = "score_unit"


def score_unit_id(prediction_step: str, first_metric: str) -> str:
    """The id of a score unit of a prediction step (`predict/<key>` -> `score_unit/<key>/<metric>`)."""
    return step_id(SCORE_UNIT, f"{split_step_id(prediction_step)[1]}/{first_metric}")


def partition_key(dataset_id: str, task_id: str, seed: int) -> str:
    return split_key(dataset_id, task_id, seed)


def step_id(stage: str, key: str) -> str:
    return f"{stage}/{key}"


def split_step_id(step: str) -> tuple[str, str]:
    """(stage, key) of a step id."""
    stage, _, key = str(step).partition("/")
    return stage, key


def dataset_of_step(step: str) -> str:
    """The dataset id of a dataset, split, prediction or score step id (the first part of its key)."""
    return split_step_id(step)[1].split("/", 1)[0]


def check_step_id(checked: str) -> str:
    """The id of the check of the split or partition record `checked` (`check/split/...`, `check/partition/...`)."""
    return step_id(CHECK, checked)


def checked_step_id(check: str) -> str:
    """The id of the split or partition record a check step checks."""
    return split_step_id(check)[1]


def step_dir(results: Path, stage: str, key: str) -> Path:
    """The folder of a stage's step (where its outputs, log and record lie)."""
    return Path(results) / STAGE_FOLDERS[stage] / key


def output_paths(directory: Path, stage: str, names: tuple[str, ...] | None = None) -> dict:
    """Argument -> path of a stage's outputs in `directory` (`names`: only these arguments)."""
    files = STAGE_OUTPUTS[stage]
    return {name: Path(directory) / files[name] for name in (names if names is not None else files)}


def log_of(step: str) -> Path | None:
    """The log of a step relative to the results directory (None for a record without a folder)."""
    stage, key = split_step_id(step)
    if stage not in STAGE_FOLDERS or not key:
        return None
    return Path(STAGE_FOLDERS[stage]) / key / STEP_LOG


# Every score file of a results directory (both engines publish the same folders).
SCORE_GLOB = f"{STAGE_FOLDERS[SCORE]}/**/{STAGE_OUTPUTS[SCORE]['output']}"
DATASET_GLOB = f"{STAGE_FOLDERS[DATASET]}/*/{STAGE_OUTPUTS[DATASET]['output']}"


def metric_component_of_score(path: Path) -> str:
    """A score file's metric component where neither its uns nor its step record names it: its folder
    (score files do not carry the component's name, only the metric ids it computed)."""
    return Path(path).parent.name


# -- files of a results directory ------------------------------------------------------------------------

TRACE = "trace.tsv"
NEXTFLOW_TRACE = "trace.txt"      # Nextflow's own trace (where OpenProblems' process_task_results looks)
STATE = "state.yaml"              # OpenProblems' state of a run: its id and output files
RESULTS = "results.parquet"
PER_CONDITION = "results_per_condition.parquet"
SUMMARY = "summary.parquet"
HEADLINE = "headline.parquet"
PRIOR_EFFECTS = "prior_effects.parquet"  # what each prior does to each method (perturbcast.prior_effects)
LEADERBOARD = "leaderboard.txt"
SELECTION_RECORD = "selection.json"  # what the folder's results were made with (perturbcast.compare)
REPORT = "report.html"
TASK_INFO = "task_info.yaml"
DATASET_UNS = "dataset_uns.yaml"
METHOD_CONFIGS = "method_configs.yaml"
METRIC_CONFIGS = "metric_configs.yaml"
SCORE_UNS = "score_uns.yaml"

# trace.tsv: one row per step record. `blocked_by` / `blocked_by_status`: the upstream step that kept
# this one from running and that step's status (empty when the step ran).
TRACE_COLUMNS = ["step", "stage", "component", "status", "cached", "exit_code", "wall_seconds", "peak_rss_mib",
                 "reason", "blocked_by", "blocked_by_status"]


def trace_row(record) -> dict:
    """A StepRecord as its trace.tsv row (columns TRACE_COLUMNS)."""
    cause = record.blocked_by or {}
    return {"step": record.id, "stage": record.stage, "component": record.component, "status": str(record.status),
            "cached": record.cached, "exit_code": record.exit_code, "wall_seconds": record.wall_seconds,
            "peak_rss_mib": round(record.peak_rss_bytes / 2**20, 1), "reason": record.reason,
            "blocked_by": cause.get("step", ""), "blocked_by_status": cause.get("status", "")}



# -- where a run writes ----------------------------------------------------------------------------------

# The results folder of `perturbcast benchmark` without --output and without a selection.
DEFAULT_RESULTS = Path("output") / "benchmark"
_SLUG_LIMIT = 100


def results_folder(selection: dict, default: Path = DEFAULT_RESULTS) -> Path:
    """The results folder of a run without --output: `default` for the default selection, else
    `<default>-<slug>`, the slug naming what was selected (`methods_mine`, `datasets_a+b-seeds_0+1`), so a
    selection never overwrites another run's results and running it again resumes its own cache.

    `selection`: kind -> the values chosen (None or empty: the default for that kind), in slug order. A
    slug longer than 100 characters keeps its first 80 and adds 8 hex digits of its sha256 (still one
    folder per selection)."""
    import hashlib
    import re

    parts = [f"{kind}_{'+'.join(str(v) for v in values)}" for kind, values in selection.items() if values]
    if not parts:
        return Path(default)
    slug = re.sub(r"[^A-Za-z0-9_.+=-]", "_", "-".join(parts))
    if len(slug) > _SLUG_LIMIT:
        slug = f"{slug[:80]}-{hashlib.sha256(slug.encode()).hexdigest()[:8]}"
    return Path(f"{default}-{slug}")


# -- whose folder a results folder is --------------------------------------------------------------------

# Written by `perturbcast benchmark` when it creates (or first fills an empty) results folder: the folder is
# then the project's. A non-empty folder without it is someone else's and is never written into. The
# marker records the selection the folder was made for (the normalized selection, dataset arguments
# included), so a later run can tell whether it continues the same benchmark (read_marker_selection).
RESULTS_MARKER = ".perturbcast-results.json"
MARKER_KIND = "perturbcast results folder"
MARKER_FORMAT = 1
# Files a results folder may hold before its marker exists: the run lock, taken before the marker is written.
RESULTS_LOCK = ".perturbcast.lock"


def normalized_selection(selection) -> dict:
    """A Selection (perturbcast.steps) as plain JSON data with a stable order: what the marker records."""
    def names(values):
        return None if values is None else sorted(str(v) for v in values)

    return {"datasets": names(selection.datasets), "tasks": names(selection.tasks), "methods": names(selection.methods),
            "metrics": names(selection.metrics), "seeds": sorted({int(s) for s in selection.seeds}),
            "n_folds": int(selection.n_folds), "folds": None if selection.folds is None else sorted({int(f) for f in selection.folds}),
            "dataset_arguments": {d: {k: str(v) for k, v in sorted(a.items())}
                                  for d, a in sorted(selection.dataset_arguments.items())},
            "extra_datasets": sorted(({"id": e["id"], "loader": e["loader"],
                                       "arguments": {k: str(v) for k, v in sorted(e["arguments"].items())}}
                                      for e in selection.extra_datasets), key=lambda e: e["id"]),
            # only when given, so the marker of a folder made before priors existed still matches its selection
            **({"priors": names(selection.priors)} if getattr(selection, "priors", None) else {})}


def write_marker(folder: Path, selection: dict):
    """Mark `folder` as a results folder of this project made for `selection` (written atomically)."""
    import json
    import os

    path = Path(folder) / RESULTS_MARKER
    temporary = path.with_name(path.name + f".{os.getpid()}.partial")
    try:
        temporary.write_text(json.dumps({"kind": MARKER_KIND, "format": MARKER_FORMAT, "selection": selection},
                                        indent=2, sort_keys=True) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_marker(folder: Path) -> dict | None:
    """The marker of `folder` (kind, format, selection), or None when it has none or not a readable one."""
    import json

    try:
        marker = json.loads((Path(folder) / RESULTS_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("kind") == MARKER_KIND else None


def read_marker_selection(folder: Path) -> dict | None:
    """The normalized selection a results folder was made for (normalized_selection), None if unmarked."""
    marker = read_marker(folder)
    return marker.get("selection") if marker else None


def results_folder_problem(folder: Path, project_root: Path | None = None) -> str | None:
    """Why `benchmark` must not write into `folder` (one sentence), or None: it is new, empty or marked as ours.
    Nothing is ever deleted from a folder that is not the project's, so the answer decides alone."""
    folder = Path(folder)
    if project_root is not None and folder.resolve() == Path(project_root).resolve():
        return f"'{folder}' is the project root; expected a results folder of its own (e.g. {DEFAULT_RESULTS})"
    if not folder.exists():
        return None
    if not folder.is_dir():
        return f"'{folder}' is an existing file; expected a results directory"
    try:
        entries = [entry.name for entry in folder.iterdir()]
    except OSError as error:
        return f"'{folder}' cannot be read ({error.strerror})"
    if read_marker(folder) is not None or not [name for name in entries if name != RESULTS_LOCK]:
        return None
    shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
    return (f"'{folder}' already holds files ({shown}) and no {RESULTS_MARKER}: it is not a results folder of "
            "perturbcast, and nothing in it is touched; choose an empty or new folder")
