"""What keeps the local engine's steps bounded and its results folder sound.

- Limits: a step's wall time and memory come from its component's nextflow labels (`lowtime`,
  `midmem`, ...) with the numbers `_viash.yaml`'s `config_mods` gives them (the same ones Nextflow
  uses), overridable per run (`--step-timeout`, `--step-memory`). Memory is capped at the machine's
  physical memory, so a limit always stops a step before the kernel's global out-of-memory killer.
- The results lock: one run per results folder (flock on `<output>/.perturbcast.lock`, which names
  the holder: pid, host, start time). The kernel drops it when the holder dies, so it is never stale.
- Interrupts: the first SIGINT/SIGTERM stops launching and kills the running steps' process groups
  (by stopping every fork server); a second one exits at once.
- Step logs: messages the runner prints to `sys.stderr` while checking a step's arguments or outputs
  go to that step's log.txt (per worker thread), not to the terminal.
- Outputs: fsynced and recorded with size and sha256, checked before a cached step is reused.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import layout
from .layout import Status

# Used when _viash.yaml has no config_mods labels: Nextflow's directives of the OpenProblems template.
DEFAULT_LABELS = {"lowtime": ("time", 3600), "midtime": ("time", 4 * 3600), "hightime": ("time", 12 * 3600),
                  "veryhightime": ("time", 48 * 3600), "lowmem": ("memory", 8 * 2**30),
                  "midmem": ("memory", 32 * 2**30), "highmem": ("memory", 128 * 2**30)}
TIME_UNITS = {"ms": 1e-3, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
MEMORY_UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}  # Nextflow's MemoryUnit is binary


@dataclass
class Limits:
    timeout: float | None = None   # seconds
    memory: int | None = None      # bytes
    cpus: int | None = None        # meta['cpus'] of the step (its threads), as Nextflow gives task.cpus
    shared_by: int = 1             # steps running at once, each given its share of the machine's memory

    def describe(self) -> str:
        parts = [f"timeout {self.timeout:g} s" if self.timeout else "no timeout",
                 f"memory {format_bytes(self.memory)}" if self.memory else "no memory limit"]
        return ", ".join(parts + ([f"{self.cpus} CPU(s)"] if self.cpus else []))


def cpu_share(jobs: int) -> int:
    """CPUs each of `jobs` concurrent steps may use: two PyTorch steps with a thread per core each on
    a 2-core machine ran CPA 3-4x slower than one thread each (threads spinning against each other)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, available // max(1, jobs))


def format_bytes(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"


def label_values(package_root: Path | None) -> dict:
    """label -> ("time", seconds) | ("memory", bytes), read from `_viash.yaml` config_mods."""
    values = dict(DEFAULT_LABELS)
    try:
        mods = (yaml.safe_load((Path(package_root) / "_viash.yaml").read_text()) or {}).get("config_mods") or ""
    except (OSError, TypeError, yaml.YAMLError):
        return values
    for label, kind, number, unit in re.findall(r'(\w+)\s*:\s*"(time|memory)\s*=\s*([0-9.]+)\s*\.?\s*(\w+)"', str(mods)):
        scale = TIME_UNITS.get(unit) if kind == "time" else MEMORY_UNITS.get(unit.upper())
        if scale is not None:
            values[label] = (kind, float(number) * scale)
    return values


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def component_labels(config) -> list[str]:
    labels = []
    for runner in config.raw.get("runners") or []:
        if runner.get("type") == "nextflow":
            label = (runner.get("directives") or {}).get("label") or []
            labels += [label] if isinstance(label, str) else list(label)
    return labels


# The resource labels of one kind, smallest first: a job that runs several components (a score unit) takes
# the largest of each kind its members carry, and every other label (gpu, ...) any of them carries.
LABEL_SCALES = (("lowcpu", "midcpu", "highcpu"), ("lowmem", "midmem", "highmem"),
                ("lowtime", "midtime", "hightime", "veryhightime"))


def merged_labels(label_lists) -> list[str]:
    """The sorted labels of a job running components with these labels one after another."""
    labels = {label for labels in label_lists for label in labels}
    merged = labels - {label for scale in LABEL_SCALES for label in scale}
    for scale in LABEL_SCALES:
        present = [label for label in scale if label in labels]
        if present:
            merged.add(present[-1])
    return sorted(merged)


def step_limits(config, overrides: Limits, table: dict) -> Limits:
    """The limits of one component's steps: the override, else the largest its labels give."""
    times = [table[label][1] for label in component_labels(config) if table.get(label, ("",))[0] == "time"]
    memories = [table[label][1] for label in component_labels(config) if table.get(label, ("",))[0] == "memory"]
    timeout = overrides.timeout or (max(times) if times else None)
    memory = overrides.memory or (int(max(memories)) if memories else None)
    ceiling = physical_memory()
    if memory and ceiling and not overrides.memory:
        memory = min(memory, ceiling)
    shared_by = 1  # set only where the share, not a label or the user, sets the limit (the failure says so)
    if memory and ceiling and not overrides.memory and overrides.shared_by > 1 \
            and ceiling // overrides.shared_by < memory:
        # steps that run at once share the machine: limits that add up to more than its memory would let
        # two large steps wake the kernel's out-of-memory killer, which kills one of them (or the engine)
        # without a word in its log (two scGPT steps of 14 and 10 GiB on 24 GiB did)
        memory, shared_by = ceiling // overrides.shared_by, overrides.shared_by
    return Limits(timeout=timeout, memory=memory, cpus=overrides.cpus, shared_by=shared_by)


OUT_OF_MEMORY = re.compile(r"MemoryError|memory limit exceeded|Unable to allocate|Cannot allocate memory|cannot allocate vector|std::bad_alloc")


def ran_out_of_memory(log_path: Path) -> bool:
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 20000))
            tail = handle.read().decode(errors="replace")
    except OSError:
        return False
    return bool(OUT_OF_MEMORY.search(tail))


# ---------------------------------------------------------------- step logs and progress

def last_error(log_path: Path) -> str:
    """The step's last `[error]`/`[not applicable]` line, else its last line that is not the command line."""
    try:
        lines = log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    lines = [line for line in lines if line.strip() and not line.startswith("$ perturbcast run ")]
    errors = [line for line in lines if line.startswith(layout.OUTCOME_TAGS)]
    return (errors[-1] if errors else (lines[-1] if lines else "")).strip()[:500]


# the updating progress line, one column short of the width so a terminal of that width does not wrap it
LINE = layout.LINE_WIDTH - 1


class Progress:
    """Progress on stderr. Quiet (default): on a terminal one line that updates in place (counts by status and
    the step just finished); elsewhere a line at every tenth of the run; failed steps always get their own line.
    Verbose: one line per finished step. `summary()` lists not-applicable and skipped steps once per cause."""

    def __init__(self, total: int, stream=None, verbose: bool = False):
        self.total, self.done, self.lock = total, 0, threading.Lock()
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.counts: dict[str, int] = {}
        self.causes: dict[tuple[str, str], int] = {}
        self.next_milestone = 1
        self.started = time.monotonic()
        self.ran = 0  # steps that ran (a cached one costs nothing and says nothing about the rate)

    def eta(self) -> str:
        """Time left: the remaining steps at the rate the steps that ran (not cached) have finished so far, as
        ' ETA m:ss'; '' until a step has run."""
        left = self.total - self.done
        if left <= 0 or self.ran == 0:
            return ""
        seconds = left * (time.monotonic() - self.started) / self.ran
        return f" ETA {int(seconds // 60)}:{int(seconds % 60):02d}"

    def _bar(self) -> str:
        width = 20
        filled = int(width * self.done / max(self.total, 1))
        return "[" + "#" * filled + "-" * (width - filled) + f"] {self.done:>4}/{self.total}{self.eta()}"

    def _counts(self) -> str:
        return ", ".join(f"{self.counts[s]} {s.label}" for s in layout.STATUS_ORDER if self.counts.get(s))

    def update(self, record):
        with self.lock:
            self.done += 1
            status = Status(record.status)
            self.counts[status] = self.counts.get(status, 0) + 1
            self._count_cause(record)
            if not record.cached:
                self.ran += 1
            cost = "cached" if record.cached else f"{record.wall_seconds:6.1f}s {record.peak_rss_bytes / 2**20:7.0f} MiB"
            if self.verbose:
                lines = layout.fit_lines(f"{self._bar()} {status.label:<14} {record.id}  {cost}")
                if record.reason and status != Status.OK:
                    lines += layout.fit_lines(f"        {record.reason}")
                print("\n".join(lines), file=self.stream, flush=True)
                return
            if status == Status.FAILED:
                self._clear()
                print("\n".join(layout.fit_lines(f"failed: {record.id}: {record.reason}")), file=self.stream,
                      flush=True)
            if self.interactive:
                text = f"{self._bar()} {self._counts()} | {record.id}"
                print("\r" + text[:LINE].ljust(LINE), end="", file=self.stream, flush=True)
                if self.done == self.total:
                    print(file=self.stream, flush=True)
            elif self.done * 10 >= self.next_milestone * self.total or self.done == self.total:
                while self.done * 10 >= self.next_milestone * self.total:
                    self.next_milestone += 1
                print(f"{self._bar()} {self._counts()}", file=self.stream, flush=True)

    def _count_cause(self, record):
        status = Status(record.status)
        if status not in (Status.NOT_APPLICABLE, Status.NOT_INSTALLED, Status.SKIPPED):
            return
        cause = record.reason or ""
        if getattr(record, "blocked_by", None):  # one cause for all steps below a failed or n/a step
            cause = f"its upstream step is {Status(record.blocked_by['status']).label}"
        key = (status, cause[:150])
        count, components = self.causes.get(key, (0, set()))
        self.causes[key] = (count + 1, components | {record.component})

    def update_cause(self, record):
        """Count a record that never ran (declared not applicable) in the summary."""
        with self.lock:
            self._count_cause(record)

    def _clear(self):
        if self.interactive:
            print("\r" + " " * LINE + "\r", end="", file=self.stream, flush=True)

    def summary(self, limit: int = 8) -> list[str]:
        """Not-applicable and skipped steps grouped by cause, most frequent first."""
        lines = []
        ranked = sorted(self.causes.items(), key=lambda item: (-item[1][0], item[0]))
        for (status, cause), (n, components) in ranked[:limit]:
            names = ", ".join(sorted(components)[:4]) + (f" and {len(components) - 4} more" if len(components) > 4 else "")
            lines.append(f"  {n:>4} {Status(status).label} ({names}): {cause}")
        if len(ranked) > limit:
            rest = sum(n for _, (n, _) in ranked[limit:])
            lines.append(f"  {rest:>4} more in {len(ranked) - limit} other causes ({layout.TRACE} lists every step)")
        return lines


# ---------------------------------------------------------------- what a step may touch

# A step's log keeps its first and last LOG_KEEP bytes; what lies between is cut, and the cut is marked.
LOG_KEEP = 2**20


def cap_log(path: Path, keep: int = LOG_KEEP):
    """Cut the middle of a log longer than 2 x `keep` bytes (100 MB of output is not a log anyone reads)."""
    try:
        size = os.stat(path).st_size
        if size <= 2 * keep:
            return
        with open(path, "r+b") as handle:
            handle.seek(size - keep)
            tail = handle.read(keep)
            marker = (f"\n[... {format_bytes(size - 2 * keep)} of output cut here: the log keeps its first and last "
                      f"{format_bytes(keep)} ...]\n").encode()
            handle.seek(keep)
            handle.write(marker + tail)
            handle.truncate()
    except OSError:
        pass


def input_states(inputs: dict) -> dict:
    """Size and mtime of every input file (argument -> (size, mtime_ns)), to tell whether a step changed one."""
    states = {}
    for name, value in inputs.items():
        try:
            stat = os.stat(value)
        except (OSError, TypeError):
            continue
        if not Path(value).is_dir():
            states[name] = (stat.st_size, stat.st_mtime_ns)
    return states


def changed_inputs(inputs: dict, before: dict) -> list[str]:
    """The inputs a step changed (or removed) while it ran: its siblings read them too."""
    after = input_states(inputs)
    return [f"--{name} {inputs[name]}" for name, state in before.items() if after.get(name) != state]


# ---------------------------------------------------------------- results lock

class ResultsLocked(RuntimeError):
    pass


@contextlib.contextmanager
def results_lock(output: Path):
    """Hold `<output>/.perturbcast.lock` for the run; ResultsLocked names the holder."""
    path = Path(output) / layout.RESULTS_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise ResultsLocked(f"results folder '{output}' is in use by {holder}; wait for it to finish "
                                f"or choose another --output") from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {started}\n".encode(), 0)
        os.fsync(fd)
        yield path
    finally:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # releases the flock


# ---------------------------------------------------------------- interrupts

class Interrupt:
    """The engine's stop flag; `spawners` are the live fork servers to stop with it."""

    def __init__(self):
        self.event = threading.Event()
        self.signal: int | None = None
        self.spawners: set = set()
        self.lock = threading.Lock()
        self.executing = False  # steps are running (engine.execute): the signal winds them down

    def reset(self):
        self.event.clear()
        self.signal = None

    @property
    def stopped(self) -> bool:
        return self.event.is_set()

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "interrupt"

    def register(self, spawner):
        with self.lock:
            self.spawners = {s for s in self.spawners if s.process.poll() is None}
            self.spawners.add(spawner)
            stopped = self.stopped
        if stopped:
            spawner.terminate()

    def stop(self, signum: int = signal.SIGINT):
        with self.lock:
            if self.signal is None:
                self.signal = signum
            self.event.set()
            spawners = list(self.spawners)
        for spawner in spawners:  # each kills its running step's process group
            try:
                spawner.terminate()
            except Exception:
                pass

    def handler(self, signum, frame):
        if self.stopped:  # the second Ctrl-C: out now
            for spawner in list(self.spawners):
                try:
                    spawner.terminate()
                except Exception:
                    pass
            print(f"\n[interrupted] {signal.Signals(signum).name} again: exiting at once", file=sys.__stderr__, flush=True)
            os._exit(layout.INTERRUPTED_EXIT_CODE)
        self.stop(signum)
        if not self.executing:  # planning or writing tables: nothing to wind down, stop where we are
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def handling_signals(self):
        """SIGINT and SIGTERM call `handler` (main thread only; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# ---------------------------------------------------------------- per-thread stderr

class ThreadStderr:
    """sys.stderr that writes to the current worker thread's step log when it has one."""

    def __init__(self, fallback):
        self.fallback, self.local = fallback, threading.local()

    @property
    def target(self):
        return getattr(self.local, "target", None) or self.fallback

    def write(self, text):
        return self.target.write(text)

    def flush(self):
        return self.target.flush()

    def __getattr__(self, name):
        return getattr(self.target, name)

    @contextlib.contextmanager
    def to(self, stream):
        self.local.target = stream
        try:
            yield
        finally:
            self.local.target = None


@contextlib.contextmanager
def routed_stderr():
    """Install a ThreadStderr for the duration (shared when already installed)."""
    if isinstance(sys.stderr, ThreadStderr):
        yield sys.stderr
        return
    router = ThreadStderr(sys.stderr)
    sys.stderr = router
    try:
        yield router
    finally:
        sys.stderr = router.fallback


# ---------------------------------------------------------------- outputs

def _sync_file(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def _sync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def seal_outputs(outputs: dict, directory: Path) -> dict:
    """fsync every output (files; a folder's files) and its folder: {name: {size, sha256} or {files}}."""
    sealed = {}
    for name, value in outputs.items():
        path = Path(value)
        if path.is_dir():
            sealed[name] = {"files": {str(f.relative_to(path)): _sync_file(f) for f in sorted(path.rglob("*")) if f.is_file()}}
            _sync_dir(path)
        elif path.is_file():
            sealed[name] = _sync_file(path)
        _sync_dir(path.parent)
    _sync_dir(directory)
    return sealed


def _file_matches(path: Path, recorded: dict) -> bool:
    try:
        if path.stat().st_size != recorded.get("size"):
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest() == recorded.get("sha256")
    except OSError:
        return False


def outputs_intact(outputs: dict, sealed: dict) -> bool:
    """Every output still has the size and sha256 recorded when its step finished."""
    if not isinstance(sealed, dict) or set(sealed) != {k for k, v in outputs.items() if Path(v).exists()} or not sealed:
        return False
    for name, recorded in sealed.items():
        path = Path(outputs[name])
        if "files" in recorded:
            present = {str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()} if path.is_dir() else None
            if present != set(recorded["files"]) or not all(
                    _file_matches(path / rel, info) for rel, info in recorded["files"].items()):
                return False
        elif not _file_matches(path, recorded):
            return False
    return True
