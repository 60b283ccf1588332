"""Pack checkpoints: everything needed to continue a pack bit-for-bit, written atomically.

A checkpoint holds the stacked parameters, buffers and optimizer state of the runs still in the
pack, every per-run generator state, the step and counters, and the curves not yet in the store
(finished runs are already there). The file is `MAGIC + sha256(payload) + payload`, written to a
temporary file, fsynced and renamed; the previous checkpoint is kept as `.prev`. A checkpoint whose
checksum does not match is skipped with a warning for the previous one, or a fresh start.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from groklab.engine import Pack

# The number is the format version: version 2 stores parameters and optimizer state flat [R, P].
MAGIC = b"GROKLAB-CKPT-2\n"


class CorruptCheckpoint(ValueError):
    pass


def state_dict(pack: Pack) -> dict[str, Any]:
    def cpu(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in d.items()}

    o = pack.opt_state
    return {
        "run_ids": [c.run_id for c in pack.configs],
        "step": pack.step,
        "evaluated_step": pack.evaluated_step,
        "samples": pack.samples,
        "batch_size": pack.batch_size,
        "elapsed": time.perf_counter() - pack.start_time,
        "flat": pack.flat.cpu(),
        "buffers": cpu(pack.buffers),
        "opt": {
            "step": o.step, "grokfast_count": o.grokfast_count,
            **{k: None if getattr(o, k) is None else getattr(o, k).cpu() for k in o.TENSORS},
        },
        "sampler_gens": [g.get_state() for g in pack.sampler.generators],
        "sampler_buffer": pack.sampler.buffer,
        "dropout_gens": [g.get_state() for g in pack.dropout_gens],
        "diverged_at": pack.diverged_at.cpu(),
        "noise": None if pack.noise is None else (pack.noise.trace, pack.noise.g2),
        "end_step": pack.end_step,
        "curves": pack.curves,
        "memorized": pack.memorized,
        "grokked": pack.grokked,
    }


def load_state_dict(pack: Pack, sd: dict[str, Any]) -> None:
    """Overwrite a freshly built pack (same runs, same order) with a checkpoint's state."""
    if [c.run_id for c in pack.configs] != sd["run_ids"]:
        raise CorruptCheckpoint("checkpoint runs do not match the pack")
    dev = pack.device
    pack.step, pack.evaluated_step, pack.samples = sd["step"], sd["evaluated_step"], sd["samples"]
    pack.batch_size = sd["batch_size"]
    pack.start_time = time.perf_counter() - sd["elapsed"]
    pack.set_flat(sd["flat"].to(dev))
    pack.buffers = {k: v.to(dev) for k, v in sd["buffers"].items()}
    o = pack.opt_state
    o.step, o.grokfast_count = sd["opt"]["step"], sd["opt"]["grokfast_count"]
    for k in o.TENSORS:
        setattr(o, k, None if sd["opt"][k] is None else sd["opt"][k].to(dev))
    for g, s in zip(pack.sampler.generators, sd["sampler_gens"]):
        g.set_state(s)
    pack.sampler.buffer = sd["sampler_buffer"]
    for g, s in zip(pack.dropout_gens, sd["dropout_gens"]):
        g.set_state(s)
    pack.diverged_at = sd["diverged_at"].to(dev)
    if pack.noise is not None and sd["noise"] is not None:
        pack.noise.trace, pack.noise.g2 = sd["noise"]
    pack.end_step, pack.curves = sd["end_step"], sd["curves"]
    pack.memorized, pack.grokked = sd["memorized"], sd["grokked"]


def save(path: Path, sd: dict[str, Any]) -> None:
    """Atomic write: temp file + fsync + rename; the previous checkpoint becomes `.prev`."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    payload = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
        f.flush()
        os.fsync(f.fileno())
    if path.exists():
        os.replace(path, _prev(path))
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    if data.startswith(b"GROKLAB-CKPT-") and not data.startswith(MAGIC):
        found = data[: data.find(b"\n")].decode(errors="replace")
        raise CorruptCheckpoint(f"{path}: {found} is another groklab version's checkpoint format")
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 65:
        raise CorruptCheckpoint(f"{path}: not a groklab checkpoint")
    digest, payload = data[len(MAGIC) : len(MAGIC) + 64], data[len(MAGIC) + 65 :]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (truncated or corrupt)")
    return torch.load(io.BytesIO(payload), weights_only=False)


def _prev(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def load(path: Path) -> dict[str, Any] | None:
    """The newest good checkpoint at `path` (or its `.prev`), or None; warns about corrupt ones."""
    for candidate in (path, _prev(path)):
        if not candidate.exists():
            continue
        try:
            return _read(candidate)
        except (CorruptCheckpoint, EOFError, RuntimeError, OSError) as e:
            warnings.warn(f"skipping checkpoint {candidate}: {e}", stacklevel=2)
    return None


def remove(path: Path) -> None:
    for p in (path, _prev(path)):
        p.unlink(missing_ok=True)
