"""The measures a pack records at its evaluations (`metrics.measures`), each at its own period.

Every value is a tensor [R] computed for all runs at once by functions that never mix runs, so a run's
measures are the same packed and solo. Random draws (power-iteration starts, Hutchinson vectors, the
noise-scale batches) come from each run's own measure generator, kept in checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch

from groklab.measures import norms


class Measures:
    """What `pack` measures beside loss and accuracy; `at_evaluation` gives {curve name: values [R]}."""

    def __init__(self, pack: Any):
        self.pack = pack
        m = pack.cfg.metrics
        self.on = list(m.measures)
        self.noise = None
        if "noise_scale" in self.on:
            from groklab.measures.noise import NoiseScale

            self.noise = NoiseScale(pack.size, m.noise_ema)

    def due(self, name: str) -> bool:
        cfg = self.pack.cfg
        return name in self.on and self.pack.step % cfg.metrics.period(name, cfg.train.eval_every) == 0

    def at_evaluation(self, ev: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The measures due at this evaluation; `ev` is what `Pack.evaluate` computed (softmax collapse)."""
        p, m = self.pack, self.pack.cfg.metrics
        out: dict[str, torch.Tensor] = {}
        if self.due("norms"):
            out.update(norms.group_norms(p.flat, p.layout.spans))
        if self.due("stability") and "softmax_collapse" in ev:
            out["softmax_collapse"] = ev["softmax_collapse"]
        if self.due("noise_scale"):
            out["b_simple"] = self._noise_scale()
        if self.due("sharpness"):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            from groklab.measures import sharpness

            flat = p.flat.detach().clone()
            with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no double backward
                out["sharpness"], _ = sharpness.top_eigenvalue(p.full_train_loss, flat, p.measure_gens,
                                                               max_iters=m.sharpness_iters, tol=m.sharpness_tol)
                if m.trace_samples:
                    out["hessian_trace"] = sharpness.hessian_trace(p.full_train_loss, flat, p.measure_gens,
                                                                   samples=m.trace_samples)
        if self.due("fourier"):
            out.update(self._fourier())
        return {k: v.detach().float() for k, v in out.items()}

    def _noise_scale(self) -> torch.Tensor:
        """B_simple from a fresh batch of `noise_batch` examples per run and its first half (McCandlish et al.)."""
        p, b = self.pack, self.pack.cfg.metrics.noise_batch
        n = p.train_idx.shape[1]
        b = min(b - b % 2, n - n % 2)
        if b < 2:
            return torch.full((p.size,), float("nan"))
        positions = torch.stack([torch.randperm(n, generator=g)[:b] for g in p.measure_gens])
        h = b // 2
        g_a, g_c = p.batch_gradient(positions[:, :h]), p.batch_gradient(positions[:, h:])
        self.noise.update(g_a, (g_a + g_c) / 2, h, b)
        return self.noise.value

    def _fourier(self) -> dict[str, torch.Tensor]:
        from groklab.measures import fourier

        p = self.pack
        modulus = p.cfg.task.modulus
        logits = p.all_logits()  # [R, p*p, 1, C]: every (x, y) in order
        grid = logits.view(p.size, modulus, modulus, -1)
        labels = p.labels.view(modulus, modulus)
        train = torch.zeros(p.size, modulus * modulus, dtype=torch.bool, device=p.device)
        train.scatter_(1, p.train_idx, True)
        embed = p.params["tok"].detach()[:, :modulus]
        return fourier.progress_measures(grid, labels, embed, train.view(p.size, modulus, modulus))

    # ---- pack compaction and checkpoints ---------------------------------------------------------
    def select(self, keep: list[int]) -> None:
        if self.noise is not None:
            self.noise.select(keep)

    def state(self, keep: list[int]) -> dict[str, Any]:
        if self.noise is None:
            return {}
        return {"noise": _rows(self.noise.state(), keep)}

    def load(self, state: dict[str, Any]) -> None:
        if self.noise is not None and state.get("noise") is not None:
            self.noise.load(state["noise"])


def _rows(state: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    return {k: (v[keep] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in state.items()}
