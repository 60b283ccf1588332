"""How many CPU threads training uses.

PyTorch starts one thread per core. Beside another busy process that oversubscribes the cores and
OpenMP threads wait on each other: a demo pack took 14 s alone, 42 s beside one busy process and 19 s
with one thread. So by default groklab measures how busy the cores it may use are (over 0.1 s, from
/proc/stat) and takes only the idle ones. `--threads N` or the environment variable GROKLAB_THREADS
fixes the number instead.
"""

from __future__ import annotations

import os
import time

ENV = "GROKLAB_THREADS"


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _busy_cores(interval: float = 0.1) -> float | None:
    """Cores kept busy by other processes right now (this one is idle while it measures)."""

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    try:
        t0, i0 = read()
        time.sleep(interval)
        t1, i1 = read()
    except (OSError, ValueError, IndexError):  # no /proc (macOS, Windows)
        return None
    total = t1 - t0
    return 0.0 if total <= 0 else (os.cpu_count() or 1) * (total - (i1 - i0)) / total


def default_threads() -> int:
    """The idle cores among those available, at least one."""
    cores = available_cores()
    busy = _busy_cores()
    if busy is None:
        return cores
    return max(1, min(cores, round(cores - busy)))


def resolve(threads: int | None = None) -> int:
    """`threads` if given, else $GROKLAB_THREADS, else `default_threads()`; raises ValueError on bad input."""
    from groklab.config import ConfigError

    if threads is None and os.environ.get(ENV):
        raw = os.environ[ENV]
        try:
            threads = int(raw)
        except ValueError:
            raise ConfigError(f"{ENV}: got {raw!r}; allowed: a whole number >= 1") from None
    if threads is None:
        return default_threads()
    if threads < 1:
        raise ConfigError(f"--threads: must be >= 1, got {threads}")
    return threads


_chosen: int | None = None


def configure(threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads (see `resolve`) once per process; an explicit `threads` always applies.
    Also starts torch's threads flushing denormal floats (groklab.denormals).
    Returns the number in use, which worker processes divide among themselves."""
    global _chosen
    import torch

    from groklab import denormals

    if threads is None and _chosen is not None:
        denormals.configure()
        return _chosen
    _chosen = resolve(threads)
    torch.set_num_threads(_chosen)
    denormals.configure()
    return _chosen
