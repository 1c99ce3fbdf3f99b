"""Running an injected script as a viash 0.9 executable does (split from perturbcast/viash.py, which
re-exports `run_script` and `Execution`): `python -B`, `Rscript` or `bash`, in the engine through its
fork server so that peak memory is the script's own.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from .languages import LANGUAGES, Language


@dataclass
class Execution:
    exit_code: int
    wall_seconds: float
    peak_rss_bytes: int



def _die_with_parent():
    """In the script's process before exec (Linux): SIGKILL when perturbcast dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_script(script_text: str, meta: dict, cwd: str | None = None, stdout=None, stderr=None,
               env: dict | None = None, spawner=None, language: Language = LANGUAGES["python_script"],
               python_executable: str | None = None) -> Execution:
    """Write the injected script to `$VIASH_META_TEMP_DIR/viash-run-<name>-XXXXXX.<ext>` and run it:
    `python -B` (this interpreter), `Rscript` or `bash` (from PATH, as viash's wrapper does).

    Peak memory is the child's maximum resident set size from `wait4`. Forked from a large process that
    figure includes the parent's size, so the engine passes a `spawner` (perturbcast.spawner) to fork
    Python scripts from a small one; it then needs `stdout` to be a log file, which also takes stderr.
    R and Bash scripts never run inside that (preloaded) server: with a log file they are started from
    a fresh server that preloads nothing, so their peak memory is their own as well.
    """
    os.makedirs(meta["temp_dir"], exist_ok=True)
    python = language.type == "python_script"
    if python:
        # A component's own environment (perturbcast.envs) has its own interpreter
        command = [python_executable or sys.executable, "-B"]
    else:
        found = shutil.which(language.executor[0])
        if found is None:
            out = stderr if hasattr(stderr, "write") else sys.stderr
            print(f"[error] {language.executor[0]} not found on PATH: {language.type} components need it "
                  "(scripts/install_r.sh installs R)", file=out, flush=True)
            return Execution(127, 0.0, 0)
        command = [found, *language.executor[1:]]
    handle, script_path = tempfile.mkstemp(prefix=f"viash-run-{meta['name']}-", suffix=f".{language.extension}",
                                           dir=meta["temp_dir"])
    with os.fdopen(handle, "w") as script_file:
        script_file.write(script_text)
    logged = env is None and hasattr(stdout, "name") and stderr is stdout
    if logged and (spawner is not None or not python):
        stdout.flush()
        own_spawner = None
        try:
            if python and not python_executable:  # the preloaded server runs this interpreter only
                reply = spawner.run_python(script_path, cwd, stdout.name)
            elif spawner is not None:
                # the engine's server hands programs to a small sibling server with the step's limits, so
                # their peak memory is their own and a timeout or interrupt reaches them
                reply = spawner.run([*command, script_path], cwd, stdout.name)
            else:
                from .spawner import Spawner

                own_spawner = Spawner()
                reply = own_spawner.run([*command, script_path], cwd, stdout.name)
        finally:
            if own_spawner is not None:
                own_spawner.close()
            os.remove(script_path)
        return Execution(reply["exit_code"], reply["wall_seconds"], reply["peak_rss_bytes"])
    started = time.perf_counter()
    # its own process group: Ctrl-C reaches perturbcast alone, which stops the script (no second traceback, from
    # the script, after perturbcast's one line); it dies with perturbcast all the same
    process = subprocess.Popen([*command, script_path], cwd=cwd, stdout=stdout, stderr=stderr, env=env,
                               process_group=0, preexec_fn=_die_with_parent)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except KeyboardInterrupt:
        process.kill()
        process.wait()
        raise
    finally:
        os.remove(script_path)
    process.returncode = os.waitstatus_to_exitcode(status)
    exit_code = process.returncode if process.returncode >= 0 else 128 - process.returncode
    return Execution(exit_code, time.perf_counter() - started, int(usage.ru_maxrss) * 1024)
