"""The fork server's bounds and sessions (perturbcast.spawner), driven directly."""
import os
import time

import pytest

from perturbcast.engine import PRELOADED_MODULES
from perturbcast.spawner import Spawner


@pytest.fixture(scope="module")
def spawner():
    server = Spawner(preload=PRELOADED_MODULES)
    yield server
    server.close()


def run(spawner, folder, name: str, text: str, **options) -> tuple[dict, str]:
    script = folder / f"{name}.py"
    script.write_text(text)
    log = folder / f"{name}.log"
    spawner.options = options
    reply = spawner.run_python(str(script), None, str(log))
    return reply, log.read_text() if log.exists() else ""


REPORT = "import os, sys\nsys.path.append({where!r})\nimport memo\nmemo.CACHE.append(1)\nprint('cache', len(memo.CACHE), 'pid', os.getpid())\n"


def fields(text: str) -> dict:
    words = text.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1) if words[i] in ("cache", "pid")}


def test_a_session_reuses_a_module_only_when_the_next_script_ships_the_same_file(spawner, tmp_path):
    for name, body in (("a", "CACHE = []\n"), ("b", "CACHE = []\n"), ("c", "CACHE = []  # another version\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "memo.py").write_text(body)
    seen = {}
    for name in ("a", "b", "c"):
        reply, text = run(spawner, tmp_path, name, REPORT.format(where=str(tmp_path / name)), session="s1")
        assert reply["exit_code"] == 0, text
        seen[name] = fields(text)
    spawner.end_session()
    assert seen["a"]["cache"] == 1 and seen["b"]["cache"] == 2  # b's identical copy: a's module and memo
    assert seen["c"]["cache"] == 1  # c's file differs: imported afresh
    assert seen["a"]["pid"] == seen["b"]["pid"] == seen["c"]["pid"]
    reply, text = run(spawner, tmp_path, "alone", REPORT.format(where=str(tmp_path / "a")))
    assert fields(text)["cache"] == 1 and fields(text)["pid"] != seen["a"]["pid"]  # no session: a fresh child


def test_a_session_survives_sys_exit_and_restarts_after_a_crash_or_a_timeout(spawner, tmp_path):
    pid = "import os\nprint('pid', os.getpid())\n"
    first, text = run(spawner, tmp_path, "first", pid + "import sys\nsys.exit(4)\n", session="s2")
    first_pid = fields(text)["pid"]
    same, text = run(spawner, tmp_path, "same", pid, session="s2")
    assert first["exit_code"] == 4 and same["exit_code"] == 0 and fields(text)["pid"] == first_pid
    crash, _ = run(spawner, tmp_path, "crash", "import os\nos._exit(5)\n", session="s2")
    after, text = run(spawner, tmp_path, "after", pid, session="s2")
    assert crash["exit_code"] == 5 and after["exit_code"] == 0 and fields(text)["pid"] != first_pid
    started = time.monotonic()
    hang, log = run(spawner, tmp_path, "hang", pid + "import time\ntime.sleep(600)\n", session="s2", timeout=1.5)
    assert hang["timed_out"] and hang["exit_code"] == 137 and time.monotonic() - started < 10
    assert "[error] timeout after 1.5 s" in log
    last, text = run(spawner, tmp_path, "last", pid, session="s2")
    assert last["exit_code"] == 0 and fields(text)["pid"] != fields(log)["pid"]
    spawner.end_session()


def test_a_session_restores_what_a_script_changed(spawner, tmp_path):
    change = ("import os, sys, random\nimport numpy as np\nos.environ['LEFT_BEHIND'] = '1'\nos.chdir('/')\n"
              "sys.path.append('/nowhere')\nprint('draws', np.random.random(), random.random())\n")
    look = ("import os, sys, random\nimport numpy as np\nprint('env', os.environ.get('LEFT_BEHIND'), 'cwd', os.getcwd(),"
            " '/nowhere' in sys.path)\nprint('draws', np.random.random(), random.random())\n")
    _, first = run(spawner, tmp_path, "change", change, session="s3")
    _, second = run(spawner, tmp_path, "look", look, session="s3")
    spawner.end_session()
    assert f"env None cwd {os.getcwd()} False" in second
    assert first.splitlines()[-1] == second.splitlines()[-1]  # the same random draws: states restored


def test_memory_limit_and_stray_processes(spawner, tmp_path):
    hog, text = run(spawner, tmp_path, "hog", "import numpy as np\na = np.ones(2**28)\n", memory=2**30)  # 2 GiB
    assert hog["exit_code"] == 1 and ("MemoryError" in text or "Unable to allocate" in text)
    stray = "import subprocess\np = subprocess.Popen(['sleep', '300'])\nprint('pid', p.pid)\n"
    for session in (None, "s4"):
        reply, text = run(spawner, tmp_path, f"stray_{session}", stray, session=session)
        time.sleep(0.2)
        try:
            with open(f"/proc/{fields(text)['pid']}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        assert reply["exit_code"] == 0 and state in ("Z", "X", "gone")  # killed with its step
    spawner.end_session()


def test_programs_run_bounded_from_a_small_server(spawner, tmp_path):
    """R and Bash components are programs: a preloaded server hands them to a plain one, with the limits."""
    log = tmp_path / "program.log"
    spawner.options = {"timeout": 1.0}
    started = time.monotonic()
    hang = spawner.run(["/bin/sh", "-c", "echo started; sleep 600"], None, str(log))
    assert hang["timed_out"] and time.monotonic() - started < 10 and "started" in log.read_text()
    spawner.options = {}
    quick = spawner.run(["/bin/sh", "-c", "exit 3"], None, str(log))
    assert quick["exit_code"] == 3 and quick["peak_rss_bytes"] < 30 * 2**20  # not the preloaded server's size
    assert spawner.last_reply == quick


def test_a_session_waits_through_steps_outside_it_and_ends_at_another_key(spawner, tmp_path):
    """The engine keys a session by the solution (one fold): a method step run between two predictions'
    scores leaves it open with its memo; the next fold's key starts a new one."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "memo.py").write_text("CACHE = []\n")
    report = REPORT.format(where=str(tmp_path / "m"))
    first, text_first = run(spawner, tmp_path, "fold0_a", report, session="fold0")
    between, text_between = run(spawner, tmp_path, "method", report)
    second, text_second = run(spawner, tmp_path, "fold0_b", report, session="fold0")
    # each step has its own copy of the module (its own build folder): the memo must survive every step,
    # not only the next one
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "memo.py").write_text("CACHE = []\n")
    third, text_third = run(spawner, tmp_path, "fold0_c", REPORT.format(where=str(tmp_path / "m2")), session="fold0")
    other, text_other = run(spawner, tmp_path, "fold1_a", report, session="fold1")
    spawner.end_session()
    assert all(reply["exit_code"] == 0 for reply in (first, between, second, third, other))
    assert fields(text_between)["pid"] != fields(text_first)["pid"] and fields(text_between)["cache"] == 1
    assert fields(text_second)["pid"] == fields(text_first)["pid"] and fields(text_second)["cache"] == 2
    assert fields(text_third)["pid"] == fields(text_first)["pid"] and fields(text_third)["cache"] == 3
    assert fields(text_other)["pid"] != fields(text_first)["pid"] and fields(text_other)["cache"] == 1


def test_steps_get_the_thread_share_unless_the_user_set_it(tmp_path, monkeypatch):
    from perturbcast.spawner import THREAD_VARIABLES, thread_environment

    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_environment(None) == dict(os.environ)
    server = Spawner(preload=("numpy",), threads=1)
    try:
        show = "import os\nprint(' '.join(os.environ.get(name, '-') for name in %r))\n" % (THREAD_VARIABLES,)
        for name, options in (("forked", {}), ("session", {"session": "s"})):
            reply, text = run(server, tmp_path, name, show, **options)
            assert reply["exit_code"] == 0 and text.split() == ["1", "1", "3"], text
    finally:
        server.close()
