"""What the fork server reads of the processes it runs (standard library only: perturbcast/fork_server.py runs
as a script of its own and imports this file as a top-level module): the process table from /proc, and the
memory a step's process group holds, shared pages included."""
import os


def processes():
    """(pid, state, parent, process group) of every process, from /proc (fields 1, 3, 4 and 5 of its stat)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        yield int(entry), fields[0], int(fields[1]), int(fields[2])


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    return [child for child, state, parent, _ in processes() if parent == pid and state not in ("Z", "X")]


def group_memory(pgid: int) -> int:
    """Bytes the processes of group `pgid` hold in memory, shared pages included: the sum of their
    proportional set sizes (Pss, /proc/PID/smaps_rollup), so a page two of them share counts once and a
    MAP_SHARED region or a mapped tmpfs file counts like the heap (RLIMIT_DATA sees neither)."""
    total = 0
    for pid, state, _, group in processes():
        if group != pgid or state in ("Z", "X"):
            continue
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            continue
    return total


MEMORY_POLL_SECONDS = 0.1


def memory_note(used: int, limit) -> str:
    # "memory limit exceeded" is what engine_guard.OUT_OF_MEMORY recognises as a step out of memory
    return (f"[error] memory limit exceeded: the step's processes held {used / 2**30:.2f} GiB "
            f"(shared memory included) over its limit of {int(limit) / 2**30:.2f} GiB; its process group was killed")


