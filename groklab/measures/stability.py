"""Stability of a run: loss spikes, val-accuracy volatility after grokking, last-layer norm growth and
softmax collapse (docs/measures.md).

Loss spike (groklab's own definition; Thilak et al.'s slingshot paper gives none): evaluation i is a
spike when its train loss exceeds `factor` × the median train loss of the `window` evaluations before it
and is at least `floor` (so rises among memorized losses of 1e-7 do not count). Consecutive spiking
evaluations are one spike.
Softmax collapse (Prieto et al., 2025): an example's softmax collapses when, in the precision the loss is
computed in, Σ_j exp(z_j − max z) == 1 exactly: every non-maximal term is absorbed, and its gradient is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def softmax_collapsed(logits: torch.Tensor, precision: str) -> torch.Tensor:
    """Per example [R, B]: whether every output's softmax sums to exactly 1 in `precision` (logits [R, B, L, C])."""
    z = logits.to(torch.float64 if precision == "float64" else torch.float32)
    total = (z - z.amax(-1, keepdim=True)).exp().sum(-1)
    return (total == 1).all(-1)


def spikes(losses: Sequence[float | None], factor: float, window: int, floor: float) -> list[int]:
    """Indices of the evaluations where a loss spike starts (see the module docstring)."""
    out, prev = [], False
    for i, v in enumerate(losses):
        past = [x for x in losses[max(0, i - window) : i] if x is not None and math.isfinite(x)]
        spike = bool(past) and v is not None and v >= floor and v > factor * float(np.median(past))
        if spike and not prev:
            out.append(i)
        prev = spike
    return out


def summary(curves: dict[str, list], grokked_step: int | None, threshold: float, factor: float, window: int,
            floor: float) -> dict[str, Any]:
    """Per-run stability figures from its curves:
    loss_spikes: how many loss spikes; fell_back: val accuracy fell below the threshold after grokking;
    below_after_grok: the fraction of evaluations after grokked_step below the threshold, and
    val_acc_std_after_grok their standard deviation (None if the run never grokked);
    last_norm_growth: the largest factor by which the last layer's norm grew between two evaluations
    (the slingshot signature)."""
    out: dict[str, Any] = {"loss_spikes": len(spikes(curves["train_loss"], factor, window, floor))}
    after = [a for s, a in zip(curves["step"], curves["val_acc"]) if grokked_step is not None and s > grokked_step]
    after = [a for a in after if a is not None]
    out["fell_back"] = bool(after) and min(after) < threshold if grokked_step is not None else None
    out["below_after_grok"] = float(np.mean([a < threshold for a in after])) if after else None
    out["val_acc_std_after_grok"] = float(np.std(after)) if after else None
    norms = [n for n in curves.get("norm.last", []) if n is not None and n > 0]
    out["last_norm_growth"] = max((b / a for a, b in zip(norms, norms[1:])), default=None)
    return out
