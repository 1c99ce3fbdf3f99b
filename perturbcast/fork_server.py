"""The fork server (run as `python fork_server.py`; perturbcast.spawner.Spawner is its client), so that a component's peak memory is its own, its start is quick and it is bounded.

On Linux a child's `ru_maxrss` starts from the resident size of the process it was forked from (the
kernel carries the forked copy's high-water mark across `exec`). Forked from the engine, which holds
tables and libraries, every component would report at least the engine's size. Forked from this
server, which holds nothing else, the figure is the component's own.

With `preload`, the server imports the libraries every component imports anyway (numpy, pandas,
anndata: about 0.6 s of a 1 s metric step) once, and runs each Python script in a forked child
instead of a new interpreter. The child sees what `python -B SCRIPT` would give it: `sys.argv`,
the script's folder first on `sys.path`, `__name__ == "__main__"`, the same exit codes, tracebacks and
atexit handlers; its peak memory then includes the preloaded libraries, as it would on its own.

Bounds. Every step runs in its own process group (so a timeout or an interrupt kills the programs it
started too, and the group is killed when the step ends, so nothing it spawned outlives it), with
an optional wall-time limit (`timeout`, seconds: the group is killed with SIGKILL) and memory limit
(`memory`, bytes: RLIMIT_DATA, so an allocation beyond it fails inside the step -
MemoryError - instead of waking the kernel's global out-of-memory killer; and, since RLIMIT_DATA does not
see shared memory or mapped files, the group's proportional set size is read every 0.1 s and the group is
killed when it holds more). The server dies with the
thread that started it (PR_SET_PDEATHSIG) and kills its running step's group as it goes; a step's
process dies with the server. SIGTERM to the server does the same: the engine's interrupt.

Sessions. Requests that carry the same `session` key (the engine: the metric steps scored against
one solution, i.e. one fold) run one after another in one forked session process, in process, so what
a script memoises (metric_utils' reading of the solution and prediction) is there for the next one;
requests without a key run forked beside it meanwhile, and a request with another key, or
`end_session`, ends it. Each
script still has its own log, exit code, timeout and reply; sys.argv/path/cwd/environ and the random
generators' states are restored between scripts, a module is reused by a later script only when that
script ships a byte-identical file of the same name, and a script that kills the session process
(os._exit, a segfault, its time limit) ends the session: the next request starts a new one. A
session step's peak memory is the session process's high-water mark so far (it holds what the steps share).

Protocol: one JSON request per line on stdin ({argv | python_script, cwd, log, timeout, memory,
session} or {end_session}), one JSON reply per line on stdout ({exit_code, peak_rss_bytes,
wall_seconds, signal, timed_out}).
"""
import hashlib
import json
import os
import select
import signal
import sys
import time

from process_watch import MEMORY_POLL_SECONDS, children_of, group_memory, memory_note, processes

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_running = set()  # process groups of the step or session running now (killed when the server stops)


def _set_parent_death_signal(sig: int):
    """Linux: get `sig` when the parent thread dies (no-op elsewhere)."""
    _prctl(PR_SET_PDEATHSIG, sig)


def _prctl(option: int, value: int):
    """Linux prctl (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, int(value), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _sweep_orphans():
    """Kill what a finished step left running in a session of its own (`setsid`, a daemon's double fork):
    the server is the subreaper of everything its steps start, so such a process ends up its child; only
    the step or session it runs now is its own."""
    for pid in children_of(os.getpid()):
        if pid in _running:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            pass


def _kill_group(pgid: int):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _limit_memory(limit):
    if not limit:
        return
    import resource

    # RLIMIT_DATA, not RLIMIT_AS: it counts what a step writes to (heap, anonymous maps), not shared
    # libraries, mapped files or address space reserved but never touched
    for which in (resource.RLIMIT_DATA,):
        try:
            resource.setrlimit(which, (int(limit), int(limit)))
        except (ValueError, OSError):
            pass


def _become_step_process(request: dict):
    """In a freshly forked child: own process group, dies with the server, bounded memory."""
    os.setpgid(0, 0)
    _set_parent_death_signal(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _limit_memory(request.get("memory"))


def _run_python_in_process(script: str, own_exit_handlers: bool = False) -> int:
    """In a forked child of a preloaded server: run `script` as `python -B script` would; the exit code.

    `own_exit_handlers` (sessions): run only the atexit handlers the script registered, not the
    libraries' (the process goes on)."""
    import atexit
    import runpy
    import traceback

    sys.argv = [script]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    sys.dont_write_bytecode = True
    registered = []
    original_register = atexit.register
    if own_exit_handlers:
        def register(function, *args, **kwargs):
            registered.append((function, args, kwargs))
            return function
        atexit.register = register
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
        if own_exit_handlers:
            atexit.register = original_register
            for function, args, kwargs in reversed(registered):
                try:
                    function(*args, **kwargs)
                except Exception:
                    traceback.print_exc()
        else:
            atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    return code


def _wait(pid: int, timeout, memory=None):
    """wait4 `pid` for at most `timeout` seconds: (status, usage) or None when the time is up.

    With `memory` (bytes), the memory of `pid`'s process group is read every MEMORY_POLL_SECONDS and the
    group is killed when it holds more: then the string "memory" and the bytes it held are returned
    instead, as ("memory", used)."""
    deadline = None if not timeout else time.monotonic() + float(timeout)
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            waited, status, usage = os.wait4(pid, os.WNOHANG)
            if waited:
                return status, usage
            if memory:
                used = group_memory(pid)
                if used > int(memory):
                    _kill_group(pid)
                    return "memory", used
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if memory:
                left = MEMORY_POLL_SECONDS if left is None else min(MEMORY_POLL_SECONDS, left)
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(0.02 if left is None else min(0.02, left))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _note(log_path, line: str):
    if log_path:
        with open(log_path, "a") as log:
            log.write(line + "\n")


def _reply(code: int, peak: int, started: float, timed_out: bool = False) -> dict:
    return {"exit_code": code if code >= 0 else 128 - code, "signal": -code if code < 0 else None,
            "peak_rss_bytes": peak, "wall_seconds": time.perf_counter() - started, "timed_out": timed_out}


def _run_forked(request: dict, preloaded: bool) -> dict:
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if request.get("log") else None
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: become the component
        code = 127
        try:
            _become_step_process(request)
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
    try:
        os.setpgid(pid, pid)  # also here: no window in which a kill of the group misses the child
    except OSError:
        pass
    _running.add(pid)
    if log is not None:
        os.close(log)
    waited = _wait(pid, request.get("timeout"), request.get("memory"))
    timed_out = waited is None
    _kill_group(pid)  # the step's leftovers (or, on timeout, the step itself) die with it
    if timed_out:
        _, status, usage = os.wait4(pid, 0)
        _note(request.get("log"), f"[error] timeout after {request['timeout']:g} s: the step's process group was killed")
    elif waited[0] == "memory":
        _note(request.get("log"), memory_note(waited[1], request["memory"]))
        _, status, usage = os.wait4(pid, 0)
    else:
        status, usage = waited
    _running.discard(pid)
    return _reply(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, started, timed_out)


class _ReuseIdenticalModules:
    """Import hook of a session: a module a previous script imported from its resources is reused
    (with whatever it memoised) only when the new script's copy of that file is byte-identical."""

    def __init__(self):
        self.stash = {}  # name -> (module, sha256 of its file)

    @staticmethod
    def digest(path):
        try:
            with open(path, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            return None

    def put_away(self, before: set, script_dirs: list):
        """After a script: take the modules it imported from its own folders (not libraries: those stay
        imported, as in any process) out of sys.modules, and keep them here."""
        roots = tuple(os.path.join(os.path.abspath(d), "") for d in script_dirs if d)
        for name in set(sys.modules) - before:
            path = getattr(sys.modules[name], "__file__", None)
            if path and roots and os.path.abspath(path).startswith(roots):
                self.stash[name] = (sys.modules.pop(name), self.digest(path))

    def find_spec(self, name, path=None, target=None):
        if name not in self.stash:
            return None
        import importlib.machinery
        import importlib.util

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        module, digest = self.stash[name]
        if spec is None or not spec.origin or self.digest(spec.origin) != digest:
            return None
        reuse = self

        class Loader:
            def create_module(self, spec):
                return module

            def exec_module(self, module):
                reuse.stash.pop(name, None)  # back in sys.modules for this script
                # from now on it is this script's copy, so that it is put away again after this script
                # (with the previous script's folder as its file it stayed behind, and the script after
                # next imported the file afresh, losing what was memoised)
                module.__file__, module.__spec__ = spec.origin, spec

        return importlib.util.spec_from_file_location(name, spec.origin, loader=Loader())


def _session_main(requests_fd: int, replies_fd: int):
    """The session process: run the scripts it is sent one after another, in process."""
    import random

    base = {"path": list(sys.path), "environ": dict(os.environ), "cwd": os.getcwd(), "random": random.getstate()}
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    reuse = _ReuseIdenticalModules()
    sys.meta_path.insert(0, reuse)
    nothing = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # 0 and 1 are the server's pipes to the engine
        os.dup2(nothing, fd)
    replies = os.fdopen(replies_fd, "w")
    for line in os.fdopen(requests_fd):
        request = json.loads(line)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if request.get("log") else nothing
        os.dup2(log, 1)
        os.dup2(log, 2)
        if log != nothing:
            os.close(log)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        before = set(sys.modules)
        code = _run_python_in_process(request["python_script"], own_exit_handlers=True)
        os.dup2(nothing, 1)
        os.dup2(nothing, 2)
        reuse.put_away(before, [p for p in sys.path if p not in base["path"]])
        sys.path[:] = base["path"]
        os.environ.clear()
        os.environ.update(base["environ"])
        os.chdir(base["cwd"])
        random.setstate(base["random"])
        if numpy_state is not None:
            numpy.random.set_state(numpy_state)
        _kill_strays()
        import resource

        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        replies.write(json.dumps({"exit_code": code, "peak_rss_bytes": peak * 1024}) + "\n")
        replies.flush()
    os._exit(0)


def _kill_strays():
    """In a session process: kill what a finished script left running in the session's group, reap it."""
    me = os.getpid()
    for pid, _, parent, group in processes():
        if pid != me and me in (group, parent):  # in the session's group, or its child in a session of its own
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class _Session:
    def __init__(self, key: str, request: dict):
        self.key = key
        self.memory = request.get("memory")
        to_session, self.requests = os.pipe()
        self.replies, from_session = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self.requests)
                os.close(self.replies)
                _become_step_process(request)
                _session_main(to_session, from_session)
            finally:
                os._exit(127)
        try:
            os.setpgid(self.pid, self.pid)
        except OSError:
            pass
        _running.add(self.pid)
        os.close(to_session)
        os.close(from_session)
        self.buffer = b""

    def run(self, request: dict) -> tuple[dict, bool]:
        """One script in the session: its reply, and whether the session is still alive."""
        started = time.perf_counter()
        os.write(self.requests, (json.dumps(request) + "\n").encode())
        timeout = request.get("timeout")
        deadline = None if not timeout else time.monotonic() + float(timeout)
        memory = request.get("memory")
        while b"\n" not in self.buffer:
            left = None if deadline is None else deadline - time.monotonic()
            if memory:
                used = group_memory(self.pid)
                if used > int(memory):
                    self.close(kill=True)
                    _note(request.get("log"), memory_note(used, memory))
                    return _reply(-signal.SIGKILL, used, started), False
                if left is None or left > 0:
                    ready = select.select([self.replies], [], [], MEMORY_POLL_SECONDS if left is None else min(MEMORY_POLL_SECONDS, left))[0]
                    if not ready:
                        continue
            if left is not None and left <= 0 or not select.select([self.replies], [], [], left)[0]:
                self.close(kill=True)
                _note(request.get("log"), f"[error] timeout after {timeout:g} s: the step's process group was killed")
                return _reply(-signal.SIGKILL, 0, started, timed_out=True), False
            chunk = os.read(self.replies, 65536)
            if not chunk:  # the script took the session process down with it
                status = self.close(kill=True)
                code = os.waitstatus_to_exitcode(status) if status is not None else 1
                return _reply(code, 0, started), False
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer = json.loads(line)
        return {**_reply(answer["exit_code"], answer["peak_rss_bytes"], started)}, True

    def close(self, kill: bool = False):
        """End the session (its whole group); the session process's wait status."""
        for fd in (self.requests, self.replies):
            try:
                os.close(fd)
            except OSError:
                pass
        if kill:
            _kill_group(self.pid)
        waited = _wait(self.pid, None if kill else 5.0)
        if waited is None:
            _kill_group(self.pid)
            waited = _wait(self.pid, None)
        _kill_group(self.pid)
        _running.discard(self.pid)
        return waited[0]


def _stop_server(signum, frame):
    for pgid in list(_running):
        _kill_group(pgid)
    _running.clear()
    _sweep_orphans()
    os._exit(128 + signum)


def serve(requests=sys.stdin, replies=sys.stdout, preloaded: bool = False):
    session = None
    for line in requests:
        request = json.loads(line)
        key = request.get("session") if preloaded and "python_script" in request else None
        # a step outside any session (a method between two of a fold's predictions) leaves the session
        # waiting, with what it memoised; another session's step or end_session ends it
        if session is not None and (request.get("end_session") or (key is not None and session.key != key)):
            session.close()
            session = None
        if request.get("end_session"):
            reply = {}
        elif key is None:
            reply = _run_forked(request, preloaded)
        else:
            if session is None:
                session = _Session(key, request)
            reply, alive = session.run(request)
            if not alive:
                session = None
        _sweep_orphans()
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    if session is not None:
        session.close()


if __name__ == "__main__":
    # The engine decides what Ctrl-C means (it terminates the server); the server itself dies with
    # the thread that started it, killing the step it runs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_server)
    _set_parent_death_signal(signal.SIGTERM)
    # orphans of the steps (a child that left its process group with setsid) become the server's: swept
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if len(sys.argv) > 2 and os.getppid() != int(sys.argv[2]):
        os._exit(0)  # the parent died before the death signal was armed
    modules = sys.argv[1].split(",") if len(sys.argv) > 1 and sys.argv[1] else []
    if modules:
        # started as `python fork_server.py`: this package's folder must not shadow the components' modules
        # (perturbcast/formats.py vs src/utils/formats.py)
        del sys.path[0]
        import importlib

        for module in modules:
            importlib.import_module(module)
    serve(preloaded=bool(modules))
