"""A small fork server, so that a component's peak memory is its own and its start is quick.

On Linux a child's `ru_maxrss` starts from the resident size of the process it was forked from (the
kernel carries the forked copy's high-water mark across `exec`). Forked from the engine, which holds
tables and libraries, every component would report at least the engine's size. Forked from this
server, which holds nothing else, the figure is the component's own.

With `preload`, the server imports the libraries every component imports anyway (numpy, pandas,
anndata: about 0.6 s of a 1 s metric step) once, and runs each Python script in a forked child
instead of a new interpreter. The child sees what `python -B SCRIPT` would give it: `sys.argv`,
the script's folder first on `sys.path`, `__name__ == "__main__"`, the same exit codes, tracebacks and
atexit handlers; its peak memory then includes the preloaded libraries, as it would on its own.

Protocol: one JSON request per line on stdin ({argv | python_script, cwd, log}), one JSON reply per
line on stdout ({exit_code, peak_rss_bytes, wall_seconds}).
"""
import json
import os
import sys
import time


def _run_python_in_process(script: str) -> int:
    """In a forked child of a preloaded server: run `script` as `python -B script` would; the exit code."""
    import atexit
    import runpy
    import traceback

    sys.argv = [script]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    sys.dont_write_bytecode = True
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:  # the interpreter's rules: None -> 0, int -> itself, anything else printed -> 1
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code & 0xFF
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    return code


def serve(requests=sys.stdin, replies=sys.stdout, preloaded: bool = False):
    for line in requests:
        request = json.loads(line)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if request.get("log") else None
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: become the component
            code = 127
            try:
                if request.get("cwd"):
                    os.chdir(request["cwd"])
                nothing = os.open(os.devnull, os.O_RDONLY)
                os.dup2(nothing, 0)  # the requests pipe is the server's, never the component's
                if log is not None:
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                script = request.get("python_script")
                if script is None:
                    os.execv(request["argv"][0], request["argv"])
                elif preloaded:
                    code = _run_python_in_process(script)
                else:
                    os.execv(sys.executable, [sys.executable, "-B", script])
            finally:
                os._exit(code)
        if log is not None:
            os.close(log)
        _, status, usage = os.wait4(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        replies.write(json.dumps({"exit_code": code if code >= 0 else 128 - code,
                                  "peak_rss_bytes": usage.ru_maxrss * 1024,
                                  "wall_seconds": time.perf_counter() - started}) + "\n")
        replies.flush()


if __name__ == "__main__":
    modules = sys.argv[1].split(",") if len(sys.argv) > 1 and sys.argv[1] else []
    if modules:
        # started as `python spawner.py`: this package's folder must not shadow the components' modules
        # (perturbcast/formats.py vs src/utils/formats.py)
        del sys.path[0]
        import importlib

        for module in modules:
            importlib.import_module(module)
    serve(preloaded=bool(modules))


class Spawner:
    """Client of one fork server process (not thread-safe: use one per worker thread).

    `preload`: modules the server imports once, so that Python scripts start without importing them."""

    def __init__(self, preload: tuple[str, ...] = ()):
        import subprocess

        # without preloading the server needs nothing but the standard library: -S -E keep it small
        flags = [] if preload else ["-S", "-E"]
        self.process = subprocess.Popen([sys.executable, *flags, os.path.abspath(__file__), ",".join(preload)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _request(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError("the fork server stopped")
        return json.loads(reply)

    def run(self, argv: list, cwd: str | None, log_path: str | None) -> dict:
        """Run a program (exec in a forked child)."""
        return self._request({"argv": argv, "cwd": cwd, "log": log_path})

    def run_python(self, script: str, cwd: str | None, log_path: str | None) -> dict:
        """Run a Python script as `python -B script` would (in process when the server preloads)."""
        return self._request({"python_script": script, "cwd": cwd, "log": log_path})

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the pipe closes anyway and the server exits
            pass
