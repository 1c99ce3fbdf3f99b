"""Hostile cases (issue 22): nothing a user has is lost, a broken contributed config fails alone, a full
disk is a clear stop. Each case failed on the main before this file: the user's files in an output folder
were deleted or overwritten, Ctrl-C on `perturbcast run` left a half-written file in place of the user's,
a self-merging config made every command die with a RecursionError, and a full disk cut trace.tsv.

Disk-full cases inject ENOSPC (a failing write, a free-space figure) instead of filling a real disk.
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perturbcast import layout
from perturbcast.cli import main

from conftest import ROOT
from test_engine_faults import alive

SPLIT = "simulated_grn_small/unseen_perturbation/seed_0/fold_0"

METHOD_CONFIG = """__merge__: ../../api/comp_method.yaml
name: {name}
label: {name}
summary: A hostile-test fixture.
description: A fixture of tests/test_hostile.py; never part of a real benchmark.
resources:
  - type: python_script
    path: script.py
runners:
  - type: executable
  - type: nextflow
    directives:
      label: [lowtime, lowmem, lowcpu]
"""

SCRIPT_HEAD = """import os
## VIASH START
par = {"output": "prediction.h5ad"}
meta = {"name": "fixture"}
## VIASH END
"""

SCRIPTS = {
    # writes half an output, says where it is, then waits to be interrupted
    "slow_writer": SCRIPT_HEAD + """folder = os.path.dirname(os.path.abspath(par["output"]))
with open(par["output"], "w") as handle:
    handle.write("half an h5ad")
with open(os.path.join(folder, "writer.pid"), "w") as handle:
    handle.write(str(os.getpid()))
import time
while True:
    time.sleep(60)
""",
    # starts a child in a session of its own (out of the step's process group), then fails
    "setsid_spawner": SCRIPT_HEAD + """import subprocess
folder = os.path.dirname(os.path.abspath(par["output"]))
child = subprocess.Popen(["sleep", "600"], start_new_session=True)
with open(os.path.join(folder, "child.pid"), "w") as handle:
    handle.write(str(child.pid))
raise SystemExit("[error] setsid_spawner: left a child in its own session on purpose")
""",
    # 3 MiB of output, then a failure
    "loud": SCRIPT_HEAD + """import sys
for _ in range(3 * 1024):
    sys.stdout.write("x" * 1023 + "\\n")
raise SystemExit("[error] loud: said too much on purpose")
""",
    # changes the test file its siblings read (only its time, so that they still can)
    "toucher": SCRIPT_HEAD + """stat = os.stat(par["input_test"])
os.utime(par["input_test"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
with open(os.path.join(os.path.dirname(os.path.abspath(par["output"])), "cwd.txt"), "w") as handle:
    handle.write(os.getcwd())
""",
    # exits 0 with an output that is not an h5ad at all
    "invalid_writer": SCRIPT_HEAD + """with open(par["output"], "w") as handle:
    handle.write("not an h5ad")
""",
    # as a component on a full disk ends
    "disk_full": SCRIPT_HEAD + """import errno
raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), par["output"])
""",
}

# Broken contributed configs: folder -> (config text, the field the one error line must name)
BROKEN = {
    "self_merge": ("__merge__: config.vsh.yaml\nname: self_merge\n", "`__merge__: config.vsh.yaml` makes a cycle"),
    "merge_cycle": ("__merge__: other.yaml\nname: merge_cycle\n", "`__merge__: config.vsh.yaml` makes a cycle"),
    "float_type": (METHOD_CONFIG.format(name="float_type") + "arguments:\n  - name: --alpha\n    type: float\n",
                   "argument '--alpha': `type: float` is not a viash type"),
    "bad_label": (METHOD_CONFIG.format(name="bad_label").replace("lowcpu]", "lowcpu, tinymem]"),
                  "`runners[nextflow].directives.label: tinymem` is not a label of _viash.yaml"),
    "bad_default": (METHOD_CONFIG.format(name="bad_default") + "arguments:\n  - name: --k\n    type: integer\n"
                    "    default: many\n", "argument '--k': `default: many` is not an integer"),
    "wrong_name": (METHOD_CONFIG.format(name="other_name"), "`name: other_name` differs from its folder 'wrong_name'"),
    "no_script": (METHOD_CONFIG.format(name="no_script"), "`resources[0].path: script.py` (the component's script) "
                                                          "does not exist"),
    "misspelt_tasks": (METHOD_CONFIG.format(name="misspelt_tasks") + "info:\n  supported_tasks: [unseen_perturbaton]\n",
                       "`info.supported_tasks` names unseen_perturbaton, which is not a task"),
}


def add_method(root: Path, name: str, config: str, script: str | None = None):
    folder = root / "src" / "methods" / name
    folder.mkdir(parents=True)
    (folder / "config.vsh.yaml").write_text(config)
    if script is not None:
        (folder / "script.py").write_text(script)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "_viash.yaml", root)
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name, script in SCRIPTS.items():
        add_method(root, name, METHOD_CONFIG.format(name=name), script)
    for name, (config, _) in BROKEN.items():
        add_method(root, name, config, None if name == "no_script" else SCRIPTS["invalid_writer"])
    (root / "src" / "methods" / "merge_cycle" / "other.yaml").write_text("__merge__: config.vsh.yaml\nlabel: x\n")
    return root


def arguments(project, output, methods, *extra):
    return ["benchmark", "--project", str(project), "--output", str(output), "--datasets", "simulated_grn_small",
            "--tasks", "unseen_perturbation", "--methods", methods, "--metrics", "delta_error", "--folds", "0",
            "--jobs", "2", *extra]


def trace(output: Path) -> pd.DataFrame:
    return pd.read_csv(output / "trace.tsv", sep="\t", keep_default_na=False).set_index("step")


def errors(text: str, configs: bool = False) -> list[str]:
    """The `[error]` lines of `text` (without the broken configs of the fixture project unless `configs`)."""
    return [line for line in text.splitlines() if line.startswith("[error]")
            and (configs or not line.startswith("[error] invalid config: "))]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- output folders


@pytest.fixture(scope="module")
def run(project, tmp_path_factory):
    """A small benchmark with the broken configs beside it (and two of them selected by name)."""
    output = tmp_path_factory.mktemp("run") / "results"
    code = main(arguments(project, output, "train_mean,no_script,self_merge,setsid_spawner,loud,toucher",
                     "--jobs", "1"))
    return output, code


def test_a_folder_with_a_users_files_is_refused_and_left_as_it_was(project, tmp_path, capsys):
    home = tmp_path / "folder_with_files"
    (home / "datasets" / "simulated_grn_small").mkdir(parents=True)
    (home / "datasets" / "simulated_grn_small" / "notes.txt").write_text("my notes")
    (home / "report.html").write_text("<html>my own report</html>")
    before = snapshot(home)
    assert main(arguments(project, home, "train_mean")) == 2
    err = capsys.readouterr().err
    assert errors(err) == [f"[error] --output '{home}' already holds files (datasets, report.html) and no "
                           f"{layout.RESULTS_MARKER}: it is not a results folder of perturbcast, and nothing in it "
                           "is touched; choose an empty or new folder"]
    assert "Traceback" not in err and snapshot(home) == before


@pytest.mark.parametrize("given", ["", "  ", "PROJECT"])
def test_an_empty_output_and_the_project_root_are_refused(project, given, capsys):
    before = sorted(p.name for p in project.iterdir())
    output = str(project) if given == "PROJECT" else given
    assert main(arguments(project, output, "train_mean")) == 2
    err = errors(capsys.readouterr().err)
    expected = (f"[error] --output '{project}' is the project root; expected a results folder of its own "
                f"(e.g. {layout.DEFAULT_RESULTS})" if given == "PROJECT" else
                "[error] --output is empty; expected a results folder (e.g. --output results/)")
    assert err == [expected]
    assert sorted(p.name for p in project.iterdir()) == before


def test_a_new_folder_is_marked_with_its_selection(run):
    output, code = run
    assert code == layout.STEPS_FAILED_EXIT_CODE  # the hostile components fail, as they must
    selection = layout.read_marker_selection(output)
    assert selection["datasets"] == ["simulated_grn_small"] and selection["tasks"] == ["unseen_perturbation"]
    assert selection["metrics"] == ["delta_error"] and selection["folds"] == [0] and selection["seeds"] == [0]
    assert selection["n_folds"] == 5 and selection["dataset_arguments"] == {} and selection["extra_datasets"] == []
    # the named methods and the controls the command adds to set the scale
    assert {"train_mean", "no_script", "self_merge", "replicate_ceiling"} <= set(selection["methods"])
    assert layout.read_marker_selection(output.parent) is None


def test_a_rerun_removes_only_what_the_step_made(project, run):
    """A marked folder is the project's, but a file a user put into a step's folder is still theirs."""
    output, _ = run
    folder = output / "predictions" / SPLIT / "train_mean"
    (folder / "notes.txt").write_text("mine")
    (folder / "step.json").unlink()  # the step must run again
    assert main(arguments(project, output, "train_mean,no_script,self_merge,setsid_spawner,loud,toucher",
                     "--jobs", "1")) == layout.STEPS_FAILED_EXIT_CODE
    assert (folder / "notes.txt").read_text() == "mine"
    assert not trace(output).loc[f"predict/{SPLIT}/train_mean"].cached
    assert sorted(p.name for p in folder.iterdir()) == ["log.txt", "notes.txt", "prediction.h5ad", "step.json"]


def test_a_step_runs_in_its_own_working_directory(run, project):
    output, _ = run
    log = (output / "predictions" / SPLIT / "train_mean" / "log.txt").read_text()
    assert log.startswith("$ perturbcast run ")
    # its working directory was removed when it stayed empty; nothing was written into the project root
    assert not (output / "predictions" / SPLIT / "train_mean" / layout.STEP_WORKDIR).exists()
    toucher = output / "predictions" / SPLIT / "toucher"
    assert (toucher / "cwd.txt").read_text() == str(toucher / layout.STEP_WORKDIR)
    assert sorted(p.name for p in project.iterdir()) == ["_viash.yaml", "src"]


def test_a_child_in_its_own_session_dies_with_its_step(run):
    output, _ = run
    folder = output / "predictions" / SPLIT / "setsid_spawner"
    step = trace(output).loc[f"predict/{SPLIT}/setsid_spawner"]
    assert step.status == "failed" and step.reason == "[error] setsid_spawner: left a child in its own session on purpose"
    assert not alive(int((folder / "child.pid").read_text()))


def test_a_steps_log_keeps_its_first_and_last_mib(run):
    output, _ = run
    log = (output / "predictions" / SPLIT / "loud" / "log.txt").read_text()
    step = trace(output).loc[f"predict/{SPLIT}/loud"]
    assert step.status == "failed" and step.reason == "[error] loud: said too much on purpose"
    assert 2 * 2**20 < len(log) < 2 * 2**20 + 1000
    assert "[... 1 MiB of output cut here: the log keeps its first and last 1 MiB ...]" in log
    assert log.startswith("$ perturbcast run ") and log.rstrip().endswith("[error] loud: said too much on purpose")


def test_a_step_that_changes_its_input_fails(run):
    output, _ = run
    steps = trace(output)
    test_file = output / "tasks" / SPLIT / "test.h5ad"
    assert steps.loc[f"predict/{SPLIT}/toucher"].status == "failed"
    assert steps.loc[f"predict/{SPLIT}/toucher"].reason == (
        f"[error] its input --input_test {test_file} changed while toucher ran (it or a step beside it wrote there; "
        "a step must only read its inputs)")


@pytest.mark.parametrize("option, value, message", [
    ("--step-timeout", "inf", "[error] --step-timeout must be a positive number of seconds, at most 2592000 (30 days) "
                              "(got inf)"),
    ("--step-timeout", "nan", "[error] --step-timeout must be a positive number of seconds, at most 2592000 (30 days) "
                              "(got nan)"),
    ("--step-memory", "9999PiB", "[error] --step-memory must be between 1 MiB and 1 PiB (got '9999PiB')"),
    ("--step-memory", "10b", "[error] --step-memory must be between 1 MiB and 1 PiB (got '10b')"),
])
def test_absurd_step_limits_are_refused(project, tmp_path, capsys, option, value, message):
    output = tmp_path / "results"
    assert main(arguments(project, output, "train_mean", option, value)) == 2
    assert errors(capsys.readouterr().err) == [message]
    assert not output.exists()


def run_fixture(project: Path, name: str, folder: Path, **popen) -> subprocess.Popen:
    for input_name in ("train.h5ad", "test.h5ad"):
        (folder / input_name).write_text("an input the fixture never reads")
    command = [sys.executable, "-m", "perturbcast", "run", str(project / "src" / "methods" / name), "--",
               "--input_train", str(folder / "train.h5ad"), "--input_test", str(folder / "test.h5ad"),
               "--output", str(folder / "existing.h5ad")]
    return subprocess.Popen(command, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _as_a_terminal_foreground_process():
    # A shell starts a background job with SIGINT ignored, and Python then never installs its Ctrl-C handler:
    # a suite started with `nohup ... &` handed that to `perturbcast run`, which ignored the SIGINT below
    # (a rehearsal of CI hung here twice). Ctrl-C is what this test is about, so the run starts as a terminal's
    # foreground command does, whatever started the suite.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_on_run_leaves_the_users_earlier_file(project, tmp_path):
    (tmp_path / "existing.h5ad").write_bytes(b"the user's earlier prediction")
    process = run_fixture(project, "slow_writer", tmp_path, start_new_session=True,
                          preexec_fn=_as_a_terminal_foreground_process)
    deadline = time.monotonic() + 120
    while not ((tmp_path / "writer.pid").exists() and (tmp_path / "writer.pid").read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole foreground group
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1].startswith("[interrupted] perturbcast run: stopped by SIGINT")
    assert (tmp_path / "existing.h5ad").read_bytes() == b"the user's earlier prediction"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(layout.PARTIAL_PREFIX)]


def test_an_invalid_output_never_replaces_the_users_file(project, tmp_path):
    (tmp_path / "existing.h5ad").write_bytes(b"the user's earlier prediction")
    process = run_fixture(project, "invalid_writer", tmp_path)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert f"[error] invalid_writer: output --output file '{tmp_path / 'existing.h5ad'}' does not match its API" in err
    assert (tmp_path / "existing.h5ad").read_bytes() == b"the user's earlier prediction"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.h5ad", "test.h5ad", "train.h5ad"]


def test_report_never_replaces_a_good_report_with_an_empty_one(run, capsys):
    output, _ = run
    results = output / layout.RESULTS
    good_report, good_results = (output / layout.REPORT).read_bytes(), results.read_bytes()
    try:
        results.write_bytes(b"PAR1 truncated")
        assert main(["report", str(output)]) == 1
        assert errors(capsys.readouterr().err) == [
            f"[error] {results}: cannot be read as a parquet table (ArrowInvalid); '{output / layout.REPORT}' is left "
            f"as it was (rerun `perturbcast aggregate {output}` to rebuild the tables)"]
        assert (output / layout.REPORT).read_bytes() == good_report
    finally:
        results.write_bytes(good_results)


# ---------------------------------------------------------------- broken contributed configs


def test_list_names_each_broken_config_once_and_lists_the_rest(project, capsys):
    assert main(["list", "--project", str(project), "--kind", "methods"]) == 1
    captured = capsys.readouterr()
    lines = errors(captured.err, configs=True)
    assert len(lines) == len(BROKEN) and "Traceback" not in captured.err and "RecursionError" not in captured.err
    for name, (_, field) in BROKEN.items():
        config = project / "src" / "methods" / name / "config.vsh.yaml"
        assert sum(line.startswith(f"[error] invalid config: {config}: ") and field in line for line in lines) == 1, name
    listed = [line.split()[0] for line in captured.out.splitlines()[1:]]
    assert "linear_baseline" in listed and "slow_writer" in listed and not set(BROKEN) & set(listed)


def test_test_reports_a_broken_config_in_one_line_and_goes_on(project, capsys):
    components = [str(project / "src" / "methods" / name) for name in ("self_merge", "float_type")]
    assert main(["test", *components]) == 1
    captured = capsys.readouterr()
    assert len(errors(captured.err, configs=True)) == 2 and "Traceback" not in captured.err
    assert captured.out.strip() == "0 passed, 2 failed"


def test_run_of_a_self_merging_config_is_one_line(project, capsys):
    assert main(["run", str(project / "src" / "methods" / "self_merge"), "--", "--help"]) == 1
    config = project / "src" / "methods" / "self_merge" / "config.vsh.yaml"
    assert errors(capsys.readouterr().err) == [
        f"[error] {config}: `__merge__: config.vsh.yaml` makes a cycle ({config} -> {config}); a config merges its "
        "API file, never itself"]


def test_the_benchmark_leaves_out_only_the_broken_components(run):
    output, code = run
    steps = trace(output)
    assert code == layout.STEPS_FAILED_EXIT_CODE  # broken configs are failures (exit codes: README)
    for name in BROKEN:
        reason = steps.loc[f"config/methods/{name}"].reason
        assert steps.loc[f"config/methods/{name}"].status == "failed"
        assert reason.startswith("[error] invalid config: ")
        assert BROKEN[name][1] in reason
    assert steps.loc[f"predict/{SPLIT}/train_mean"].status == "ok"
    assert steps.loc[f"score/{SPLIT}/train_mean/delta_error"].status == "ok"
    assert not [step for step in steps.index if "/no_script" in step and not step.startswith("config/")]
    assert len(pd.read_parquet(output / layout.RESULTS)) > 0


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_stops_before_the_first_step_with_one_line(project, tmp_path, capsys, monkeypatch):
    from perturbcast import disk_space

    monkeypatch.setattr(disk_space, "shutil_disk_free", lambda folder: 5 * 2**20)
    output = tmp_path / "results"
    assert main(arguments(project, output, "train_mean")) == 1
    err = capsys.readouterr().err
    lines = errors(err)
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"[error] no space left for dataset/simulated_grn_small: 5 MiB free in '{output}', "
                               "about 64 MiB needed; free some space and rerun (finished steps stay cached)")
    steps = trace(output)
    assert (steps[steps.stage != "config"].reason == "not started: No space left on device").all()
    assert not (output / "datasets").exists()


def test_a_step_that_meets_a_full_disk_stops_the_run(project, tmp_path, capsys):
    output = tmp_path / "results"
    assert main(arguments(project, output, "train_mean,disk_full", "--jobs", "1")) == 1
    err = capsys.readouterr().err
    lines = errors(err)
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"[error] no space left on the device of '{output}' (") \
        and f"while predict/{SPLIT}/disk_full ran; at least 64 MiB more is needed" in lines[0]
    steps = trace(output)
    assert "No space left on device" in steps.loc[f"predict/{SPLIT}/disk_full"].reason
    not_started = steps[steps.reason == "not started: No space left on device"]
    assert len(not_started) >= 1 and (not_started.status == "skipped").all()
    assert not (output / layout.RESULTS).exists()


def failing_write(monkeypatch, module, name):
    """`module.name` writes half its file and then fails as a full disk does."""
    original = getattr(module, name)

    def write(self, path, *args, **kwargs):
        with open(path, "w") as handle:
            handle.write("step\tsta")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(module, name, write)
    return original


def test_trace_is_replaced_atomically(tmp_path, monkeypatch):
    from perturbcast.engine_run import write_trace
    from perturbcast.steps import StepRecord

    path = tmp_path / "trace.tsv"
    write_trace([StepRecord(id="dataset/a", stage="dataset", component="x", status="ok")], path)
    before = path.read_bytes()
    failing_write(monkeypatch, pd.DataFrame, "to_csv")
    with pytest.raises(OSError):
        write_trace([StepRecord(id="dataset/b", stage="dataset", component="x", status="ok")], path)
    assert path.read_bytes() == before and before.startswith(b"step\tstage\t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.tsv"]


def test_result_tables_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    """The third of the four tables fails as a full disk does: the folder keeps all four previous tables
    (before, results.parquet was already replaced by then) and no partial file."""
    from perturbcast import scoring

    def tables(value):
        frame = pd.DataFrame({"value": [value]})
        summary = frame.copy()
        summary.attrs["by_slice"] = frame.copy()
        return frame, frame, summary

    scoring.write_results(*tables(1.0), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    before = {name: (tmp_path / name).read_bytes() for name in names}
    assert len(names) == 4
    original = pd.DataFrame.to_parquet
    calls = []

    def to_parquet(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"PAR1")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    with pytest.raises(OSError):
        scoring.write_results(*tables(2.0), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert {name: (tmp_path / name).read_bytes() for name in names} == before


def test_a_full_disk_while_writing_the_trace_is_one_line_and_keeps_the_old_trace(project, run, capsys, monkeypatch):
    output, _ = run
    before = (output / layout.TRACE).read_bytes()
    failing_write(monkeypatch, pd.DataFrame, "to_csv")
    assert main(arguments(project, output, "train_mean,no_script,self_merge,setsid_spawner,loud,toucher",
                     "--jobs", "1")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert errors(err)[-1].startswith(f"[error] cannot write the results folder '{output}': No space left on device (")
    assert (output / layout.TRACE).read_bytes() == before
    assert not [p for p in output.iterdir() if p.name.endswith(".partial")]


def test_a_full_disk_while_writing_the_report_keeps_the_old_one(run, capsys, monkeypatch):
    output, _ = run
    before = (output / layout.REPORT).read_bytes()
    original = Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name.endswith(".tmp"):
            original(self, text[:1000], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    assert main(["report", str(output)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and errors(err) == [
        f"[error] cannot write '{output / layout.REPORT}': No space left on device; the previous report is left "
        "as it was"]
    assert (output / layout.REPORT).read_bytes() == before
    assert not (output / f"{layout.REPORT}.tmp").exists()


# ---------------------------------------------------------------- the cache


def test_a_changed_cached_file_is_refused_and_listed_as_changed(tmp_path, monkeypatch, capsys):
    """Added offline (unverified: nothing pinned, no host to ask), then changed on disk: `cache list` says so
    now (it said `unverified` from its record before), and the loader's fetch refuses it in one line."""
    from perturbcast import cache_cli

    monkeypatch.setenv("PERTURBCAST_CACHE", str(tmp_path / "cache"))
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # nothing can be asked over the network
    url = "https://zenodo.org/records/13350497/files/ReplogleWeissman2022_K562_essential.h5ad"
    source = tmp_path / "downloaded.h5ad"
    source.write_bytes(b"a source file" * 1000)
    assert main(["cache", "add", str(source), "--url", url, "--offline", "--project", str(ROOT)]) == 0
    download = cache_cli._download_module(str(ROOT))
    cached = Path(download.cache_path(url))
    recorded = download.read_record(str(cached))["sha256"]
    capsys.readouterr()
    assert main(["cache", "list", "--project", str(ROOT)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("  unverified")
    with open(cached, "r+b") as handle:  # damaged in place: same size, another time and content
        handle.write(b"X")
    now = download.sha256_file(str(cached))
    assert main(["cache", "list", "--project", str(ROOT)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        f"  CHANGED since recorded (sha256 {now}, recorded {recorded}): not used; put a good copy in place with "
        f"`perturbcast cache add GOOD_COPY --url {url} --force`")
    with pytest.raises(download.DownloadError, match=f"^cached file {cached} changed since it was recorded"):
        download.fetch(url, retries=0, delay=0, timeout=2, log=lambda message: None)
    assert cached.read_bytes().startswith(b"X source file")


# ---------------------------------------------------------------- bad values named where they are


def test_a_negative_seed_is_refused_and_a_repeated_one_runs_once(project, tmp_path, capsys):
    assert main(arguments(project, tmp_path / "a", "train_mean", "--seeds", "-1")) == 2
    assert errors(capsys.readouterr().err) == ["[error] --seeds -1: expected seeds >= 0"]
    assert main(arguments(project, tmp_path / "b", "train_mean", "--seeds", "0", "0", "--dry-run")) == 0
    captured = capsys.readouterr()
    assert "perturbcast benchmark: --seeds 0 0 names some twice; each runs once: 0" in captured.err
    steps = [line.split("\t")[0] for line in captured.out.splitlines()]
    assert steps.count(f"split/{SPLIT}") == 1 and len(steps) == len(set(steps))


@pytest.mark.parametrize("text, message", [
    ("datasets:\n  - id: simulated_grn_small\n    arguments: {n_gene: 10}\n",
     "datasets[0].arguments.n_gene: not an argument of the loader simulated_grn of 'simulated_grn_small'; expected "
     "some of batch_effect,"),
    ("tasks: [unseen_perturbation]\ntasks: [cell_type_transfer]\n",
     "not valid YAML (key 'tasks' appears twice (line 2))"),
])
def test_a_spec_with_an_unknown_dataset_argument_or_a_duplicated_key_is_refused(project, tmp_path, capsys, text,
                                                                                 message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    output = tmp_path / "results"
    assert main(["benchmark", "--project", str(project), "--spec", str(spec), "--output", str(output)]) == 2
    lines = errors(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"[error] spec '{spec}': {message}"), lines
    assert not output.exists()


@pytest.mark.parametrize("value, expected", [
    (np.complex64(1 + 2j), "X has complex dtype complex64, expected real numbers"),
    (1e30, "X has 1 values beyond ±1e+15, more than any count or expression matrix holds; expected counts or "
           "log-normalized expression"),
])
def test_complex_and_absurd_matrices_are_refused(value, expected):
    sys.path.insert(0, str(ROOT / "src" / "utils"))
    try:
        import anndata as ad
        from formats import check_anndata
    finally:
        sys.path.remove(str(ROOT / "src" / "utils"))
    X = np.ones((3, 2), dtype=np.complex64 if np.iscomplexobj(value) else np.float32)
    X[1, 1] = value
    adata = ad.AnnData(X=X)
    adata.obs_names, adata.var_names = ["a", "b", "c"], ["g1", "g2"]
    assert check_anndata(adata, {"X": {"type": "double"}}) == [expected]
    assert check_anndata(ad.AnnData(X=np.ones((3, 2), dtype=np.float32)), {"X": {"type": "double"}}) == []
