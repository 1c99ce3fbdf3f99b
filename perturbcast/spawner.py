"""A small fork server, so that a component's peak memory is its own.

On Linux a child's `ru_maxrss` starts from the resident size of the process it was forked from (the
kernel carries the forked copy's high-water mark across `exec`). Forked from the engine, which holds
tables and libraries, every component would report at least the engine's size. Forked from this
server, which imports only the standard library and never grows, the figure is the component's own.

Protocol: one JSON request per line on stdin ({argv, cwd, log}), one JSON reply per line on stdout
({exit_code, peak_rss_bytes, wall_seconds}).
"""
import json
import os
import sys
import time



def serve(requests=sys.stdin, replies=sys.stdout):
    for line in requests:
        request = json.loads(line)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if request.get("log") else None
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: become the component
            try:
                if request.get("cwd"):
                    os.chdir(request["cwd"])
                if log is not None:
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                os.execv(request["argv"][0], request["argv"])
            finally:
                os._exit(127)
        if log is not None:
            os.close(log)
        _, status, usage = os.wait4(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        replies.write(json.dumps({"exit_code": code if code >= 0 else 128 - code,
                                  "peak_rss_bytes": usage.ru_maxrss * 1024,
                                  "wall_seconds": time.perf_counter() - started}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()


class Spawner:
    """Client of one fork server process (not thread-safe: use one per worker thread)."""

    def __init__(self):
        import subprocess

        self.process = subprocess.Popen([sys.executable, "-S", "-E", os.path.abspath(__file__)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, argv: list, cwd: str | None, log_path: str | None) -> dict:
        self.process.stdin.write(json.dumps({"argv": argv, "cwd": cwd, "log": log_path}) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError("the fork server stopped")
        return json.loads(reply)

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the pipe closes anyway and the server exits
            pass
