"""Denormal floats on the CPU: flushed to zero while groklab trains.

Late in training float32 values fall below 1.2e-38 (products of tiny gradients and activations), and x86
CPUs compute with such denormal numbers in microcode, many times slower than with normal ones. The Grokfast
paper-scale baseline trained 19.6 steps/s from step 0 and 3.6 from its final state (step 37,100); flushed,
about 20 from both (bench/denormals.py, bench/README.md). Flushing only replaces numbers below
1.2e-38 (float32) or 2.2e-308 (float64) by zero.

The CPU flag is per thread. torch's worker threads (OpenMP, and the BLAS's own) copy it from the thread that
starts them, so `configure` starts them with it set, before torch would start them without it; the calling
thread flushes only inside `flushed()` (the training loop), so the user's own Python and NumPy arithmetic
keeps IEEE denormals. torch's worker threads keep flushing for the rest of the process, so the user's own
multi-threaded torch operations flush in the shares those threads compute. `GROKLAB_DENORMALS=keep` keeps
denormals everywhere (exact, slow late in training). The mode is not part of a run's id: it changes only
numbers below the thresholds above, but a run trained with denormals kept can differ from one trained with them
flushed in the last bits, as a run trained on another thread count does.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "GROKLAB_DENORMALS"
CHOICES = ("flush", "keep")


def mode() -> str:
    """'flush' (default) or 'keep', from $GROKLAB_DENORMALS; raises ConfigError on any other value."""
    import os

    from groklab.config import ConfigError

    raw = os.environ.get(ENV) or "flush"
    if raw not in CHOICES:
        raise ConfigError(f"{ENV}: got {raw!r}; allowed: {', '.join(CHOICES)}")
    return raw


def flushing_here() -> bool:
    """Whether the calling thread flushes denormals (Python floats use the same unit as torch's kernels)."""
    return sys.float_info.min * 0.5 == 0.0


def flushed_everywhere() -> bool:
    """Whether training (inside `flushed()`) flushes denormals on every thread torch computes on, in elementwise
    kernels and in matmuls (whose BLAS may keep threads of its own): a product of 1e-20s is denormal, so every
    thread's share must come out 0. Starts the thread pools if they are not yet running."""
    import torch

    with flushed():
        x = torch.full((torch.get_num_threads() * 65536,), 1e-40, dtype=torch.float32)
        a = torch.full((1024, 64), 1e-20, dtype=torch.float32)
        return bool((x * 0.5).eq(0).all()) and bool((a @ a.T).eq(0).all())


@contextmanager
def flushed() -> Iterator[None]:
    """Flush denormals on the calling thread inside the block (unless kept), as it was after."""
    import torch

    if mode() == "keep":
        yield
        return
    before = flushing_here()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


_warned = False


def configure() -> bool:
    """Start torch's worker threads flushing denormals (unless $GROKLAB_DENORMALS is 'keep'); return whether
    they all do. Warns once when threads started earlier keep denormals."""
    global _warned

    import torch

    if mode() == "keep" or not torch.set_flush_denormal(flushing_here()):
        return False  # kept, or this CPU has no flush flag (not x86 with SSE3): nothing to set, nothing to warn
    everywhere = flushed_everywhere()  # starts the thread pools from a thread that flushes
    if not everywhere and not _warned:
        _warned = True
        warnings.warn("groklab: torch's worker threads were started before groklab could set them to flush denormal "
                      "floats, so late training may run several times slower; call groklab.threads.configure() "
                      "before the first torch operation of the process", RuntimeWarning, stacklevel=3)
    return everywhere
