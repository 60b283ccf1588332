"""The Pack: R runs trained in lockstep, and the one step loop every run goes through.

Every parameter is stacked with a leading run axis [R, ...]; every per-run hyperparameter is a
tensor [R]. Each run owns three generators derived from its seed (data split, init, batch order;
a fourth for dropout masks), so its curves are the same whichever runs share its pack. A run that
produces a NaN/Inf loss or gradient is frozen at once and marked `diverged` at the next
evaluation; runs that finish leave the pack there (compaction), so no compute is spent on them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from groklab import metrics, models, optim
from groklab.config import Config, pack_key
from groklab.tasks import make_task, split

# Examples per run and chunk are chosen so one evaluation forward holds about this many rows.
EVAL_ROWS = 16384


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_generator(seed: int, stream: int) -> torch.Generator:
    """Independent generator for one purpose (0 split, 1 init, 2 batches, 3 dropout) of a seed."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


@dataclass
class RunResult:
    """A finished run: events, status, final metrics and full evaluation curves."""

    run_id: str
    config: dict[str, Any]
    status: str
    memorized_step: int | None
    grokked_step: int | None
    diverged_step: int | None
    steps_run: int
    wall_seconds: float
    final: dict[str, float | None]
    curves: dict[str, list[float]] = field(repr=False)  # "step" and every EVAL_METRICS name

    @property
    def grok_delay(self) -> int | None:
        if self.grokked_step is None or self.memorized_step is None:
            return None
        return self.grokked_step - self.memorized_step

    def summary(self) -> dict[str, Any]:
        """The JSON summary of DESIGN.md."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "memorized_step": self.memorized_step,
            "grokked_step": self.grokked_step,
            "grok_delay": self.grok_delay,
            "diverged_step": self.diverged_step,
            "steps_run": self.steps_run,
            "wall_seconds": round(self.wall_seconds, 3),
            "final": self.final,
            "config": self.config,
        }


class BatchSampler:
    """Per-run minibatch positions [R, b]: epoch-wise shuffling without replacement.

    Runs in a pack share train size and batch size, so their epochs end on the same step and each
    epoch costs one randperm per run, from that run's own generator. A batch that crosses an epoch
    boundary takes the end of one permutation and the start of the next.
    """

    def __init__(self, generators: list[torch.Generator], n: int, batch_size: int):
        self.generators, self.n, self.b = generators, n, batch_size
        self.buffer = torch.empty(len(generators), 0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        if self.b >= self.n:  # full batch
            return torch.arange(self.n).expand(len(self.generators), -1)
        while self.buffer.shape[1] < self.b:
            perms = torch.stack([torch.randperm(self.n, generator=g) for g in self.generators])
            self.buffer = torch.cat([self.buffer, perms], dim=1)
        out, self.buffer = self.buffer[:, : self.b], self.buffer[:, self.b :]
        return out

    def select(self, keep: torch.Tensor) -> None:
        self.generators = [self.generators[i] for i in keep.tolist()]
        self.buffer = self.buffer[keep.cpu()]


class Pack:
    """R compatible runs (equal `pack_key`) with stacked parameters and optimizer state."""

    def __init__(self, configs: list[Config]):
        if not configs:
            raise ValueError("a pack needs at least one run")
        if len({pack_key(c) for c in configs}) != 1:
            raise ValueError("runs in a pack must share task, model shape, batch size and optimizer")
        self.configs = list(configs)
        self.cfg = cfg = configs[0]
        self.device = dev = resolve_device(cfg.train.device)
        task = make_task(cfg.task)
        self.inputs, self.labels = task.inputs.to(dev), task.labels.to(dev)
        seeds = [c.train.seed for c in configs]

        splits = [split(task, c.task.train_frac, run_generator(s, 0)) for c, s in zip(configs, seeds)]
        self.train_idx = torch.stack([tr for tr, _ in splits]).to(dev)
        self.val_idx = torch.stack([va for _, va in splits]).to(dev)

        stacked: dict[str, list[torch.Tensor]] = {}
        for c, s in zip(configs, seeds):
            p, scaled = models.init(cfg.model, task, run_generator(s, 1))
            for k, v in p.items():
                stacked.setdefault(k, []).append(v * c.model.init_scale if k in scaled else v)
        self.params = {k: torch.stack(v).to(dev).requires_grad_() for k, v in stacked.items()}

        self.hyper = optim.Hyper.from_configs(configs, dev)
        self.opt_state = optim.OptimState()
        self.sampler = BatchSampler([run_generator(s, 2) for s in seeds], self.train_idx.shape[1], cfg.train.batch_size)
        self.dropout_gens = [run_generator(s, 3) for s in seeds]
        self.dropout_p = torch.tensor([c.model.dropout for c in configs], device=dev)
        self.diverged_at = torch.full((len(configs),), -1, dtype=torch.long, device=dev)
        self.step = 0

        # Host-side bookkeeping per run, compacted together with the tensors above.
        self.end_step = [c.train.steps for c in configs]
        self.curves: list[dict[str, list[float]]] = [
            {k: [] for k in ("step", *metrics.EVAL_METRICS)} for _ in configs
        ]
        self.memorized: list[int | None] = [None] * len(configs)
        self.grokked: list[int | None] = [None] * len(configs)

    @property
    def size(self) -> int:
        return len(self.configs)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.stack([torch.rand(x.shape[1:], generator=g) for g in self.dropout_gens]).to(x.device)
        p = self.dropout_p.view(-1, *([1] * (x.dim() - 1)))
        return x * (u >= p) / (1 - p)

    def loss(self, positions: torch.Tensor, train: bool = True) -> torch.Tensor:
        """Mean cross-entropy per run [R] on train-set positions [R, b]."""
        idx = self.train_idx.gather(1, positions.to(self.device))
        use_dropout = train and bool((self.dropout_p > 0).any())
        logits = models.forward(
            self.params, self.inputs[idx], self.cfg.model, self._dropout if use_dropout else models.no_dropout
        )
        ce = F.cross_entropy(logits.flatten(0, 1), self.labels[idx].flatten(), reduction="none")
        return ce.view(self.size, -1).mean(1)

    def train_step(self) -> None:
        loss = self.loss(self.sampler.next())
        names = list(self.params)
        # Runs never mix, so the gradient of the sum is each run's own gradient.
        grads = torch.autograd.grad(loss.sum(), [self.params[k] for k in names])
        gsum = sum(g.detach().flatten(1).sum(1) for g in grads)
        finite = torch.isfinite(loss.detach()) & torch.isfinite(gsum)
        self.diverged_at = torch.where(~finite & (self.diverged_at < 0), self.step, self.diverged_at)
        lr = optim.lr_at(self.hyper, self.step)
        optim.step(
            self.cfg.optim.name, self.params, dict(zip(names, grads)), self.opt_state, self.hyper, lr,
            ok=self.diverged_at < 0, nesterov=self.cfg.optim.nesterov,
        )
        self.step += 1

    @torch.no_grad()
    def evaluate(self) -> dict[str, torch.Tensor]:
        """Loss and accuracy on each run's full train and val sets, parameter norm, current lr."""
        out: dict[str, torch.Tensor] = {}
        chunk = max(1, EVAL_ROWS // self.size)
        for name, idx in (("train", self.train_idx), ("val", self.val_idx)):
            loss_sum = torch.zeros(self.size, device=self.device)
            correct = torch.zeros(self.size, device=self.device)
            for s in range(0, idx.shape[1], chunk):
                gi = idx[:, s : s + chunk]
                logits = models.forward(self.params, self.inputs[gi], self.cfg.model)
                labels = self.labels[gi]
                ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none")
                loss_sum += ce.view(self.size, -1).sum(1)
                correct += (logits.argmax(-1) == labels).sum(1)
            out[f"{name}_loss"] = loss_sum / idx.shape[1]
            out[f"{name}_acc"] = correct / idx.shape[1]
        out["param_norm"] = sum(p.detach().pow(2).flatten(1).sum(1) for p in self.params.values()).sqrt()
        out["lr"] = optim.lr_at(self.hyper, max(self.step - 1, 0))
        return out

    def _record(self) -> list[int]:
        """Evaluate, append to curves, update events; return the indices of runs now finished.

        A run records only the steps of its own schedule (multiples of eval_every, and its last
        step), so its curve is the same whichever runs share its pack.
        """
        ev = self.evaluate()
        table = torch.stack([ev[k] for k in metrics.EVAL_METRICS], dim=1).cpu().tolist()
        diverged = self.diverged_at.cpu().tolist()
        done = []
        for r, row in enumerate(table):
            c, cfg = self.curves[r], self.configs[r]
            if self.step % cfg.train.eval_every and self.step != self.end_step[r] and diverged[r] < 0:
                continue
            c["step"].append(self.step)
            for k, v in zip(metrics.EVAL_METRICS, row):
                c[k].append(v)
            thr = cfg.metrics.threshold
            if self.memorized[r] is None and row[1] >= thr:
                self.memorized[r] = self.step
            if self.grokked[r] is None and row[3] >= thr:
                self.grokked[r] = self.step
                if cfg.train.stop.after_grok > 0:
                    self.end_step[r] = min(self.end_step[r], self.step + cfg.train.stop.after_grok)
            if self.step >= self.end_step[r] or diverged[r] >= 0:
                done.append(r)
        return done

    def _result(self, r: int, wall: float) -> RunResult:
        c = self.curves[r]
        diverged = int(self.diverged_at[r])
        final = {k: _clean(c[k][-1]) for k in ("train_acc", "val_acc", "train_loss", "val_loss")}
        return RunResult(
            run_id=self.configs[r].run_id,
            config=self.configs[r].resolved(),
            status=metrics.status(c["train_acc"], self.memorized[r], self.grokked[r], diverged >= 0),
            memorized_step=self.memorized[r],
            grokked_step=self.grokked[r],
            diverged_step=diverged if diverged >= 0 else None,
            steps_run=diverged if diverged >= 0 else self.step,
            wall_seconds=wall,
            final=final,
            curves={k: (vals if k == "step" else [_clean(v) for v in vals]) for k, vals in c.items()},
        )

    def compact(self, keep: list[int]) -> None:
        """Drop every run not in `keep` from all stacked tensors and host lists."""
        k = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.params = {n: p.detach()[k].requires_grad_() for n, p in self.params.items()}
        self.opt_state = self.opt_state.select(k)
        self.hyper = self.hyper.select(k)
        self.sampler.select(k)
        self.train_idx, self.val_idx = self.train_idx[k], self.val_idx[k]
        self.dropout_p, self.diverged_at = self.dropout_p[k], self.diverged_at[k]
        self.dropout_gens = [self.dropout_gens[i] for i in keep]
        for name in ("configs", "end_step", "curves", "memorized", "grokked"):
            setattr(self, name, [getattr(self, name)[i] for i in keep])

    def _next_eval(self) -> int:
        every = self.cfg.train.eval_every
        return min(min(self.end_step), (self.step // every + 1) * every)

    def run(
        self,
        on_finish: Callable[[RunResult], None] | None = None,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> list[RunResult]:
        """Train until every run has finished. `on_finish` gets each run as it leaves the pack;
        `progress(step, active_runs, grokked_runs)` is called after every evaluation."""
        start = time.perf_counter()
        results: list[RunResult] = []

        def evaluate_and_release() -> None:
            done = self._record()
            for r in done:
                res = self._result(r, time.perf_counter() - start)
                results.append(res)
                if on_finish:
                    on_finish(res)
            if done:
                self.compact([r for r in range(self.size) if r not in done])
            if progress:
                grokked = sum(x.grokked_step is not None for x in results) + sum(g is not None for g in self.grokked)
                progress(self.step, self.size, grokked)

        evaluate_and_release()
        while self.size:
            target = self._next_eval()
            while self.step < target:
                self.train_step()
            evaluate_and_release()
        return results


def _clean(v: float) -> float | None:
    return None if v is None or math.isnan(v) or math.isinf(v) else float(v)


def train(
    configs: list[Config],
    on_finish: Callable[[RunResult], None] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[RunResult]:
    """Train compatible runs as one pack. A single run is a pack of one."""
    return Pack(configs).run(on_finish, progress)
