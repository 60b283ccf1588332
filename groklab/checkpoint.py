"""Pack states and checkpoints: everything needed to continue a pack bit-for-bit, written atomically.

A pack state splits into one state per run and joins back (`split`, `join`); a finished run's own state
becomes the start of the same run with a larger budget (`extended`).

A checkpoint holds a pack's state (`Pack.state_dict()`): the stacked parameters, buffers and optimizer
state of the runs still in the pack, every per-run generator state, the step and counters, and the
curves not yet in the store
(finished runs are already there). The file is `MAGIC + sha256(payload) + payload`, written to a
temporary file, fsynced and renamed; the previous checkpoint is kept as `.prev`. A checkpoint whose
checksum does not match is skipped with a warning for the previous one, or a fresh start.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from groklab import metrics
from groklab.config import Config

# The number is the format version: version 2 stores parameters and optimizer state flat [R, P].
MAGIC = b"GROKLAB-CKPT-3\n"


class CorruptCheckpoint(ValueError):
    pass


def split(sd: dict[str, Any]) -> list[dict[str, Any]]:
    """A pack state (`Pack.state_dict()`) as one state per run, each a pack state of one run."""
    return [select(sd, [r]) for r in range(len(sd["run_ids"]))]


def select(sd: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    """The state of runs `keep` of a pack state: per-run entries sliced, pack-level entries as they are."""
    out = dict(sd)
    for k in PER_RUN_TENSORS:
        out[k] = sd[k][keep]
    for k in PER_RUN_LISTS:
        if k in sd:  # a state saved before the entry existed (augment_gens) lacks it
            out[k] = [sd[k][i] for i in keep]
    out["buffers"] = {n: b[keep] for n, b in sd["buffers"].items()}
    out["opt"] = {k: (v[keep] if isinstance(v, torch.Tensor) else v) for k, v in sd["opt"].items()}
    out["measures"] = {m: {k: (v[keep] if _per_run(v) else v) for k, v in st.items()} for m, st in sd["measures"].items()}
    return out


def join(sds: list[dict[str, Any]]) -> dict[str, Any]:
    """One pack state from the states of runs that stopped at the same step (inverse of `split`)."""
    first = sds[0]
    for k in PACK_LEVEL:
        if any(s[k] != first[k] for s in sds):
            raise ValueError(f"cannot join run states that differ in {k}")
    out = dict(first)
    for k in PER_RUN_TENSORS:
        out[k] = torch.cat([s[k] for s in sds])
    for k in PER_RUN_LISTS:
        if all(k in s for s in sds):
            out[k] = [v for s in sds for v in s[k]]
        else:
            out.pop(k, None)
    out["buffers"] = {n: torch.cat([s["buffers"][n] for s in sds]) for n in first["buffers"]}
    out["opt"] = {k: (torch.cat([s["opt"][k] for s in sds]) if isinstance(v, torch.Tensor) else v)
                  for k, v in first["opt"].items()}
    out["measures"] = {m: {k: (torch.cat([s["measures"][m][k] for s in sds]) if _per_run(v) else v)
                           for k, v in st.items()} for m, st in first["measures"].items()}
    return out


def _per_run(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() > 0


def extended(state: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """A stored run's final state as the starting state of `cfg`: the same experiment with a larger
    `train.steps`. Training on from it gives exactly the curves a run of `cfg` from scratch gives, so a
    longer budget trains only the new steps. The old budget's last step was an evaluation only because it
    was the last: where the run goes on past it, that point (and an event first reached there) is dropped.
    `end_step` says where the run stops: at or before `step` means it has nothing left to train
    (it stopped after grokking, or diverged)."""
    sd = copy.deepcopy(state)
    sd["run_ids"] = [cfg.run_id]
    step, curve = sd["step"], sd["curves"][0]
    stop_after = cfg.train.stop.after_grok

    def end() -> int:
        if int(sd["diverged_at"][0]) >= 0:
            return step
        grok = sd["grokked"][0]
        return min(cfg.train.steps, grok + stop_after) if grok is not None and stop_after > 0 else cfg.train.steps

    if end() > step and step % cfg.train.eval_every and curve["step"] and curve["step"][-1] == step:
        for values in curve.values():
            values.pop()
        memorized, grokked, streaks = metrics.replay(curve, cfg.metrics.threshold, cfg.metrics.hold)
        sd["memorized"], sd["grokked"], sd["streaks"] = [memorized], [grokked], [streaks]
        sd["evaluated_step"] = -1
    sd["end_step"] = [max(end(), step)]
    return sd


# The entries of a pack state (`Pack.state_dict()`): per run, or shared by the pack's lockstep runs.
PER_RUN_TENSORS = ("flat", "sampler_buffer", "diverged_at")
PER_RUN_LISTS = ("run_ids", "sampler_gens", "dropout_gens", "measure_gens", "augment_gens", "end_step", "curves",
                 "memorized", "grokked", "streaks")
PACK_LEVEL = ("step", "samples", "batch_size")


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
