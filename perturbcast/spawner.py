"""The engine's side of the fork server (perturbcast/fork_server.py): start one, send it steps, read replies.

Why a fork server, its bounds (process groups, time and memory limits), sessions and the line protocol
are described in perturbcast/fork_server.py, which runs as a script of its own (standard library only).
"""
import json
import os
import sys

# Started by its path, not as a module of the package: the server imports nothing of perturbcast, and this
# package's folder must not be first on its sys.path (see fork_server's __main__).
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fork_server.py")


# The thread pools of the numerical libraries, sized from these when they load (numpy's OpenBLAS, OpenMP, MKL).
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def thread_environment(threads: int | None, environ=os.environ) -> dict:
    """`environ` with each of THREAD_VARIABLES set to `threads`, unless the user set it (or `threads` is None)."""
    if not threads:
        return dict(environ)
    return {**{name: str(int(threads)) for name in THREAD_VARIABLES}, **environ}


class Spawner:
    """Client of one fork server process (not thread-safe: use one per worker thread).

    `preload`: modules the server imports once, so that Python scripts start without importing them.
    `threads`: the numerical libraries' threads of every program it starts (`thread_environment`): set before
    the server imports numpy, which sizes OpenBLAS's pool once, at import, for every step forked from it.
    `options`: merged into every request ({timeout, memory, session}); the engine sets them per step."""

    def __init__(self, preload: tuple[str, ...] = (), threads: int | None = None):
        import subprocess

        # without preloading the server needs nothing but the standard library: -S -E keep it small
        flags = [] if preload else ["-S", "-E"]
        self.options, self.last_reply, self.preload, self.plain = {}, {}, tuple(preload), None
        self.threads = threads
        self.process = subprocess.Popen(
            [sys.executable, *flags, SERVER, ",".join(preload), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=thread_environment(threads))

    def _request(self, request: dict) -> dict:
        request = {**request, **{k: v for k, v in self.options.items() if v is not None}}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError("the fork server stopped")
        self.last_reply = json.loads(reply)
        return self.last_reply

    def run(self, argv: list, cwd: str | None, log_path: str | None) -> dict:
        """Run a program (exec in a forked child) with the same options (limits, process group).

        A preloaded server hands programs to a small sibling server: forked from the preloaded one, the
        program's peak memory would include the libraries it never uses (R, Bash components)."""
        if not self.preload:
            return self._request({"argv": argv, "cwd": cwd, "log": log_path})
        if self.plain is None or self.plain.process.poll() is not None:
            self.plain = Spawner(threads=self.threads)
        self.plain.options = {k: v for k, v in self.options.items() if k != "session"}
        self.last_reply = self.plain.run(argv, cwd, log_path)
        return self.last_reply

    def run_python(self, script: str, cwd: str | None, log_path: str | None) -> dict:
        """Run a Python script as `python -B script` would (in process when the server preloads)."""
        return self._request({"python_script": script, "cwd": cwd, "log": log_path})

    def end_session(self):
        """Free the session process (a later request without the same session key does it too)."""
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"end_session": True}) + "\n")
            self.process.stdin.flush()
            self.process.stdout.readline()

    def terminate(self):
        """Stop the server and kill the step it runs (with the step's process group)."""
        if self.plain is not None:
            self.plain.terminate()
        if self.process.poll() is None:
            self.process.terminate()

    def close(self):
        if self.plain is not None:
            self.plain.close()
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the pipe closes anyway and the server exits
            pass
