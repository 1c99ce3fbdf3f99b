"""The local engine under faults: bounded steps, contained crashes, clean interrupts, a sound results folder.

The faulty components live in tests/fixtures/fault_components (see its README) and are copied into a
copy of the project, never into `src/`.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from perturbcast import layout
from perturbcast.cli import main

from conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "fault_components"
SPLIT = "simulated_grn_small/unseen_perturbation/seed_0/fold_0"
STEP_TIMEOUT = 30  # far above what any other step of the run takes, even on a loaded machine
HOG_TIMEOUT = 3600


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "_viash.yaml", root)
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for kind in ("methods", "metrics"):
        for component in (FIXTURES / kind).iterdir():
            shutil.copytree(component, root / "src" / kind / component.name)
    (root / "src" / "methods" / "broken").mkdir()
    shutil.copy(FIXTURES / "broken" / "config.vsh.yaml", root / "src" / "methods" / "broken")
    return root


def arguments(project, output, methods, metrics="delta_error", *extra):
    return ["benchmark", "--project", str(project), "--output", str(output), "--datasets", "simulated_grn_small",
            "--tasks", "unseen_perturbation", "--methods", methods, "--metrics", metrics, "--folds", "0", "--jobs", "2",
            *extra]


def trace(output: Path) -> pd.DataFrame:
    return pd.read_csv(output / "trace.tsv", sep="\t", keep_default_na=False).set_index("step")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def pid_in(folder: Path, name: str = "pid") -> int:
    return int((folder / name).read_text())


@pytest.fixture(scope="module")
def faulty_run(project, tmp_path_factory):
    output = tmp_path_factory.mktemp("faulty")
    started = time.monotonic()
    code = main(arguments(project, output, "train_mean,replicate_ceiling,hanging,orphan_spawner,needs_argument",
                          "delta_error,delta_exit,delta_segfault,weighted_error",
                          "--step-timeout", str(STEP_TIMEOUT), "--step-memory", "1536MiB"))
    return output, code, time.monotonic() - started


@pytest.fixture(scope="module")
def hog_run(project, tmp_path_factory):
    """The memory hog alone, with a time limit far above any allocation time (filling 1.5 GiB takes about a
    second, minutes on the busiest machine): only the memory limit can stop it, however slow the machine."""
    output = tmp_path_factory.mktemp("hog")
    code = main(arguments(project, output, "train_mean,memory_hog,shared_memory_hog", "delta_error",
                          "--step-timeout", str(HOG_TIMEOUT), "--step-memory", "1536MiB"))
    return output, code


def test_a_hanging_method_costs_its_time_limit_and_nothing_else(faulty_run):
    output, code, _ = faulty_run
    steps = trace(output)
    hanging = steps.loc[f"predict/{SPLIT}/hanging"]
    # steps failed, so the exit code says so (layout.STEPS_FAILED_EXIT_CODE), while every other step completed
    assert code == layout.STEPS_FAILED_EXIT_CODE and hanging.status == "failed"
    assert hanging.reason == f"timeout after {STEP_TIMEOUT} s"
    assert STEP_TIMEOUT <= hanging.wall_seconds < STEP_TIMEOUT + 5
    assert not alive(pid_in(output / "predictions" / SPLIT / "hanging"))
    assert f"[error] timeout after {STEP_TIMEOUT} s" in (output / "predictions" / SPLIT / "hanging" / "log.txt").read_text()
    assert (steps[steps.index.str.startswith(f"score/{SPLIT}/hanging/")].status == "skipped").all()
    for method in ("train_mean", "replicate_ceiling"):
        assert steps.loc[f"predict/{SPLIT}/{method}"].status == "ok"
    # The step was stopped at its limit (its own wall time, above) and nothing waited for it: every step below
    # it was recorded without running. The run's total wall time is not asserted: planning and aggregation
    # took 3x longer with two busy processes per core beside the tests (issue 22), so any bound on it tests
    # the machine, not the engine.
    assert (steps[steps.index.str.startswith(f"score/{SPLIT}/hanging/")].wall_seconds == 0).all()


def test_a_memory_hog_is_stopped_at_its_limit(hog_run):
    output, code = hog_run
    assert code == layout.STEPS_FAILED_EXIT_CODE  # the hog failed, as it must
    hog = trace(output).loc[f"predict/{SPLIT}/memory_hog"]
    assert hog.status == "failed" and hog.reason == "out of memory (limit 1.5 GiB)"
    assert 500 < hog.peak_rss_mib < 1536
    log = (output / "predictions" / SPLIT / "memory_hog" / "log.txt").read_text()
    assert "MemoryError" in log and "memory_hog: 256 MiB" in log and "memory_hog: 2048 MiB" not in log


def test_shared_memory_counts_against_the_limit(hog_run):
    """MAP_SHARED pages escape RLIMIT_DATA (issue 22: 3 GiB passed a 1 GiB limit as ok); the engine reads the
    step's proportional set size and kills its group beyond the limit."""
    output, _ = hog_run
    hog = trace(output).loc[f"predict/{SPLIT}/shared_memory_hog"]
    assert hog.status == "failed" and hog.reason == "out of memory (limit 1.5 GiB)"
    log = (output / "predictions" / SPLIT / "shared_memory_hog" / "log.txt").read_text()
    assert "[error] memory limit exceeded" in log and "shared_memory_hog: 1280 MiB" in log
    assert not alive(pid_in(output / "predictions" / SPLIT / "shared_memory_hog"))


def test_a_steps_child_processes_die_with_it(faulty_run):
    output, _, _ = faulty_run
    folder = output / "predictions" / SPLIT / "orphan_spawner"
    step = trace(output).loc[f"predict/{SPLIT}/orphan_spawner"]
    assert step.status == "failed" and step.reason == "[error] orphan_spawner: left a process behind on purpose"
    assert not alive(pid_in(folder, "orphan.pid"))


def test_argument_errors_land_in_the_step_log_and_are_its_reason(faulty_run):
    output, _, _ = faulty_run
    step = trace(output).loc[f"predict/{SPLIT}/needs_argument"]
    expected = "[error] '--needed' is a required argument."
    assert step.status == "failed" and step.reason.startswith(expected) and "perturbcast run" not in step.reason
    assert expected in (output / "predictions" / SPLIT / "needs_argument" / "log.txt").read_text()


def test_metrics_of_one_prediction_share_a_worker_but_not_their_failures(faulty_run):
    output, _, _ = faulty_run
    steps = trace(output)
    for method in ("train_mean", "replicate_ceiling"):
        prefix = f"score/{SPLIT}/{method}"
        assert steps.loc[f"{prefix}/delta_exit"].reason == "[error] delta_exit: stopping with exit code 3 on purpose"
        assert float(steps.loc[f"{prefix}/delta_exit"].exit_code) == 3
        assert steps.loc[f"{prefix}/delta_segfault"].reason == "killed by SIGSEGV (exit code 139)"
        for metric in ("delta_error", "weighted_error"):  # before and after the crashes in the same session
            assert steps.loc[f"{prefix}/{metric}"].status == "ok"
            assert (output / "scores" / SPLIT / method / metric / "score.h5ad").stat().st_size > 1000
        # one process ran the metrics before the crash: the exiting metric ran in delta_error's process
        exit_pid = pid_in(output / "scores" / SPLIT / method / "delta_exit")
        crash_pid = pid_in(output / "scores" / SPLIT / method / "delta_segfault")
        assert exit_pid == crash_pid
    results = pd.read_parquet(output / "results.parquet")
    assert {"train_mean", "replicate_ceiling"} <= set(results.method_id)


def test_a_broken_config_only_removes_its_own_steps(faulty_run):
    output, _, _ = faulty_run
    steps = trace(output)
    broken = steps.loc["config/methods/broken"]
    assert broken.status == "failed" and "not valid YAML" in broken.reason and broken.reason.startswith("[error]")
    assert steps.loc["dataset/simulated_grn_small"].status == "ok"


@pytest.fixture(scope="module")
def small_run(project, tmp_path_factory):
    output = tmp_path_factory.mktemp("small") / "results"
    # the project's broken config is a failed record: the exit code says so (the steps themselves all run)
    assert main(arguments(project, output, "train_mean")) == layout.STEPS_FAILED_EXIT_CODE
    return output


def test_a_moved_results_folder_keeps_its_cache(project, small_run, tmp_path):
    moved = tmp_path / "elsewhere" / "results"
    shutil.copytree(small_run, moved)
    assert main(arguments(project, moved, "train_mean")) == layout.STEPS_FAILED_EXIT_CODE  # the broken config
    steps = trace(moved)
    steps = steps[steps.stage != "config"]
    assert (steps.status == "ok").all() and steps.cached.all()


def test_a_truncated_cached_output_is_recomputed(project, small_run):
    prediction = small_run / "predictions" / SPLIT / "train_mean" / "prediction.h5ad"
    size = prediction.stat().st_size
    with open(prediction, "r+b") as handle:
        handle.truncate(size // 2)
    assert main(arguments(project, small_run, "train_mean")) == layout.STEPS_FAILED_EXIT_CODE  # the broken config
    steps = trace(small_run)
    assert not steps.loc[f"predict/{SPLIT}/train_mean"].cached
    assert steps.loc[f"split/{SPLIT}"].cached and steps.loc[f"score/{SPLIT}/train_mean/delta_error"].cached
    assert prediction.stat().st_size == size


def test_a_second_run_on_the_same_folder_is_refused(project, small_run, capsys):
    from perturbcast.engine_guard import results_lock

    before = sorted(p.name for p in small_run.iterdir())
    with results_lock(small_run):
        assert main(arguments(project, small_run, "train_mean")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"[error] results folder '{small_run}' is in use by pid {os.getpid()} on host ")
    assert " since " in err[-1]
    assert sorted(p.name for p in small_run.iterdir()) == before


@pytest.mark.parametrize("extra, message", [
    (["--jobs", "0"], "[error] --jobs must be at least 1 (got 0)"),
    (["--n-resamples", "-5"], "[error] --n-resamples must be at least 1 (got -5)"),
    (["--step-timeout", "0"], "[error] --step-timeout must be a positive number of seconds, at most 2592000 (30 days) "
                              "(got 0)"),
    (["--step-memory", "lots"], "[error] --step-memory must be an amount of memory such as 4GiB or 512MB (got 'lots')"),
])
def test_bad_engine_options_are_rejected_before_anything_runs(project, tmp_path, capsys, extra, message):
    output = tmp_path / "out"
    assert main(arguments(project, output, "train_mean", "delta_error", *extra)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert not output.exists()


def test_an_output_that_is_a_file_is_rejected(project, tmp_path, capsys):
    output = tmp_path / "results"
    output.write_text("not a folder")
    assert main(arguments(project, output, "train_mean")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"[error] --output '{output}' is an existing file; expected a results directory"]
    assert output.read_text() == "not a folder"


def start_benchmark(project, output) -> subprocess.Popen:
    command = [sys.executable, "-m", "perturbcast", *arguments(project, output, "train_mean,hanging")]
    return subprocess.Popen(command, cwd=project, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"{path} never appeared")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_the_benchmark_within_5_s_with_a_partial_trace(project, tmp_path, stop):
    output = tmp_path / "interrupted"
    process = start_benchmark(project, output)
    hanging = wait_for(output / "predictions" / SPLIT / "hanging" / "pid", process)
    process.send_signal(stop)
    started = time.monotonic()
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - started < 5
    assert process.returncode == 130
    lines = [line for line in err.splitlines() if not line.startswith(("[#", "[-", "  ", "perturbcast benchmark:"))
             and "methods/broken/config.vsh.yaml" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"[interrupted] {stop.name}: stopped after "), err
    steps = trace(output)
    assert steps.loc[f"predict/{SPLIT}/hanging"].status == "interrupted"
    assert steps.loc["dataset/simulated_grn_small"].status == "ok"
    assert not alive(hanging)
    from perturbcast.engine_guard import results_lock

    with results_lock(output):  # released
        pass


SECOND_SIGNAL = """
import os, signal, threading, time
from perturbcast.engine_guard import Interrupt
from perturbcast.spawner import Spawner

interrupt, spawner = Interrupt(), Spawner()
interrupt.register(spawner)
threading.Thread(target=spawner.run, args=(["/bin/sh", "-c", "echo $$ > {pid}; exec sleep 600"], None, None),
                 daemon=True).start()
while not os.path.exists("{pid}") or not open("{pid}").read():
    time.sleep(0.05)
with interrupt.handling_signals():
    interrupt.executing = True  # as while steps run: the first signal winds down, the second exits
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
    print("after the first", interrupt.stopped, flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)
print("never")
"""


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    pid = tmp_path / "pid"
    started = time.monotonic()
    process = subprocess.run([sys.executable, "-c", SECOND_SIGNAL.format(pid=pid)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert process.returncode == 130 and time.monotonic() - started < 10, process.stderr
    assert process.stdout.split() == ["after", "the", "first", "True"]
    assert process.stderr.strip().splitlines()[-1] == "[interrupted] SIGINT again: exiting at once"
    assert not alive(int(pid.read_text()))  # the first signal already killed the running step


def test_workers_die_with_a_killed_engine(project, tmp_path):
    output = tmp_path / "killed"
    process = start_benchmark(project, output)
    hanging = wait_for(output / "predictions" / SPLIT / "hanging" / "pid", process)
    process.kill()
    process.communicate()
    deadline = time.monotonic() + 5
    while alive(hanging) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(hanging)


def test_step_limits_come_from_the_labels_and_the_overrides():
    from perturbcast.config import load_config
    from perturbcast.engine_guard import Limits, label_values, physical_memory, step_limits

    table = label_values(ROOT)  # _viash.yaml's config_mods: the numbers Nextflow uses
    assert table["lowtime"] == ("time", 3600) and table["veryhightime"] == ("time", 48 * 3600)
    assert table["lowmem"] == ("memory", 8 * 2**30) and table["highmem"] == ("memory", 128 * 2**30)
    gears = load_config(ROOT / "src" / "datasets" / "gears")  # [midtime, midmem, lowcpu]
    limits = step_limits(gears, Limits(), table)
    assert limits.timeout == 4 * 3600 and limits.memory == min(32 * 2**30, physical_memory())
    assert step_limits(gears, Limits(timeout=5, memory=2**30), table) == Limits(timeout=5, memory=2**30)


def test_steps_that_run_at_once_share_the_machines_memory_and_cpus():
    """Two steps each allowed all of the memory can together wake the kernel's out-of-memory killer,
    which kills one without a word in its log; with --jobs N each gets 1/N (an explicit --step-memory wins)."""
    from perturbcast.config import load_config
    from perturbcast.engine_guard import Limits, cpu_share, label_values, physical_memory, step_limits

    table = label_values(ROOT)
    gears = load_config(ROOT / "src" / "datasets" / "gears")  # midmem: 32 GiB
    shared = step_limits(gears, Limits(cpus=1, shared_by=2), table)
    assert shared.memory == min(32 * 2**30, physical_memory() // 2) and shared.cpus == 1
    assert shared.shared_by == (2 if physical_memory() // 2 < 32 * 2**30 else 1)  # only where the share binds
    assert step_limits(gears, Limits(memory=2**30, shared_by=2), table).shared_by == 1  # the user's limit
    alone = step_limits(gears, Limits(cpus=2, shared_by=1), table)
    assert alone.memory == min(32 * 2**30, physical_memory())
    assert step_limits(gears, Limits(memory=2**40, shared_by=2), table).memory == 2**40  # the user's word
    assert cpu_share(1) >= cpu_share(2) >= 1 and cpu_share(10**6) == 1


def test_an_out_of_memory_step_is_told_how_to_get_more(tmp_path):
    from perturbcast.engine_guard import Limits
    from perturbcast.engine_run import _failure_reason

    log = tmp_path / "log.txt"
    log.write_text("numpy._core._exceptions._ArrayMemoryError: Unable to allocate 12.0 GiB\n")
    reason = _failure_reason(log, 1, {}, Limits(memory=12 * 2**30, shared_by=2))
    assert reason.startswith("out of memory (limit 12 GiB; each of the 2 steps") and "--jobs 1" in reason
    assert _failure_reason(log, 1, {}, Limits(memory=2**30)) == "out of memory (limit 1 GiB)"
