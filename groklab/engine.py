"""The Pack: R runs trained in lockstep, and the one step loop every run goes through.

Every parameter is stacked with a leading run axis [R, ...]; every per-run hyperparameter is a
tensor [R]. Each run owns generators derived from its seed (data split, init, batch order, dropout
masks, exposure order, augmentation), so its curves are the same whichever runs share its pack. A run
that produces a NaN/Inf loss or gradient is frozen at once and marked `diverged` at the next
evaluation; runs that finish leave the pack there (compaction), so no compute is spent on them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from groklab import denormals, memory, metrics, models, optim, sampling
from groklab.config import Config, ConfigError, pack_key
from groklab.measures import stability
from groklab.measures.recorder import Measures
from groklab.sampling import BatchSampler  # also this module's public name (engine.BatchSampler)
from groklab.tasks import Task, make_task, split
from groklab.tasks.augment import augment

# Examples per run and chunk are chosen so one evaluation forward holds about this many rows.
EVAL_ROWS = 16384

Weights = dict[str, dict[str, torch.Tensor]]  # {"params": {...}, "buffers": {...}} of one run


def resolve_device(name: str) -> torch.device:
    """The torch device of `train.device`; a device this machine lacks is bad input (ConfigError)."""
    if name == "auto":  # the current CUDA device (a worker process sets its own), else the CPU
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"train.device: {name!r}, but this machine has no CUDA device; allowed here: auto, cpu")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"train.device: {name!r}, but this machine has {n} CUDA device(s); "
                              f"allowed: auto, cpu, cuda, cuda:0..cuda:{n - 1}")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"train.device: {name!r}, but MPS is not available on this machine; allowed here: auto, cpu")
    return dev


def run_generator(seed: int, stream: int) -> torch.Generator:
    """Independent generator for one purpose of a seed: 0 split, 1 init, 2 batches, 3 dropout, 4 measures,
    5 exposure order, 6 augmentation."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


@dataclass
class RunResult:
    """A finished run: events, status, final metrics, full evaluation curves, final weights."""

    run_id: str
    config: dict[str, Any]
    status: str
    memorized_step: int | None
    grokked_step: int | None
    diverged_step: int | None
    steps_run: int
    wall_seconds: float
    final: dict[str, float | None]
    curves: dict[str, list[float]] = field(repr=False)  # "step", EVAL_METRICS and COUNTERS
    weights: Weights | None = field(default=None, repr=False)
    state: dict[str, Any] | None = field(default=None, repr=False)  # its training state (Pack.state_dict)
    stats: dict[str, Any] = field(default_factory=dict)  # per-run stability figures (measures.stability)

    @property
    def grok_delay(self) -> int | None:
        if self.grokked_step is None or self.memorized_step is None:
            return None
        return self.grokked_step - self.memorized_step

    def _at_grok(self, name: str) -> float | None:
        if self.grokked_step is None:
            return None
        return self.curves[name][self.curves["step"].index(self.grokked_step)]

    @property
    def grokked_samples(self) -> int | None:
        v = self._at_grok("samples")
        return None if v is None else int(v)

    @property
    def grokked_seconds(self) -> float | None:
        return self._at_grok("seconds")

    def summary(self) -> dict[str, Any]:
        """The JSON summary of DESIGN.md."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "memorized_step": self.memorized_step,
            "grokked_step": self.grokked_step,
            "grok_delay": self.grok_delay,
            "grokked_samples": self.grokked_samples,
            "grokked_seconds": None if self.grokked_seconds is None else round(self.grokked_seconds, 3),
            "diverged_step": self.diverged_step,
            "steps_run": self.steps_run,
            "wall_seconds": round(self.wall_seconds, 3),
            "final": self.final,
            "stats": self.stats,
            "config": self.config,
        }


def per_example_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor, precision: str = "float64") -> torch.Tensor:
    """Loss per example [R, B] from logits [R, B, L, C] and labels [R, B, L] (mean over L), computed in
    `precision` (train.loss_precision).

    cross_entropy; stablemax: cross-entropy under StableMax, s(x) = x + 1 for x >= 0 else 1/(1 - x),
    p_i = s(x_i) / sum_j s(x_j) (Prieto et al., 2025); mse: squared error against one-hot targets,
    averaged over classes. In float32 a memorized example's cross-entropy rounds to exactly 0 once its
    margin passes ~17 (softmax collapse, Prieto et al.), and its gradient with it; float64 holds to ~37.
    """
    logits = logits.to(torch.float64 if precision == "float64" else torch.float32)
    if kind == "cross_entropy":
        ce = F.cross_entropy(logits.flatten(0, 2), labels.flatten(), reduction="none").view(labels.shape)
    elif kind == "stablemax":
        s = torch.where(logits >= 0, logits + 1, 1 / (1 - logits.clamp(max=0)))
        logp = torch.log(s) - torch.log(s.sum(-1, keepdim=True))
        ce = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    else:
        onehot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
        ce = (logits - onehot).pow(2).mean(-1)
    return ce.mean(-1)


class Pack:
    """R compatible runs (equal `pack_key`) with stacked parameters and optimizer state."""

    def __init__(self, configs: list[Config], init_weights: dict[str, Weights] | None = None):
        if not configs:
            raise ValueError("a pack needs at least one run")
        if len({pack_key(c) for c in configs}) != 1:
            raise ValueError("runs in a pack must share task, model shape, batch size and optimizer")
        self.configs = list(configs)
        self.cfg = cfg = configs[0]
        self.device = dev = resolve_device(cfg.train.device)
        self.task: Task = make_task(cfg.task)
        self.inputs, self.labels = self.task.inputs.to(dev), self.task.labels.to(dev)
        seeds = [c.train.seed for c in configs]

        splits = [split(self.task, c.task, run_generator(s, 0)) for c, s in zip(configs, seeds)]
        train_idx = torch.stack([tr for tr, _ in splits])
        if cfg.train.exposure.kind == "gradual":  # the order in which examples join the train set, per run
            orders = [torch.randperm(train_idx.shape[1], generator=run_generator(s, 5)) for s in seeds]
            train_idx = torch.stack([tr[o] for tr, o in zip(train_idx, orders)])
        # Each run's whole train split (in exposure order), and the part of it in use at this step: all of it,
        # or under gradual exposure its first `train.exposure.size` examples (`_expose`).
        self.split_idx = train_idx.to(dev)
        self.train_idx = self.split_idx[:, : cfg.train.exposure.size(train_idx.shape[1], 0)]
        self.val_idx = torch.stack([va for _, va in splits]).to(dev)

        stacked: dict[str, list[torch.Tensor]] = {}
        stacked_buffers: dict[str, list[torch.Tensor]] = {}
        for c, s in zip(configs, seeds):
            p, scaled, buffers = models.init(cfg.model, self.task, run_generator(s, 1))
            p = {k: v * c.model.init_scale if k in scaled else v for k, v in p.items()}
            if c.train.init_from is not None:
                p, buffers = _load(c, (init_weights or {}).get(c.train.init_from), p, buffers)
            for k, v in p.items():
                stacked.setdefault(k, []).append(v)
            for k, v in buffers.items():
                stacked_buffers.setdefault(k, []).append(v)
        self.layout = optim.Layout({k: tuple(v[0].shape) for k, v in stacked.items()})
        self.chunk_runs = memory.train_chunk_runs(cfg, dev)
        self.spare_grad: torch.Tensor | None = None
        self.set_flat(self.layout.flatten([torch.stack(v) for v in stacked.values()]).to(dev))
        self.buffers = {k: torch.stack(v).to(dev) for k, v in stacked_buffers.items()}
        # Decay on every parameter, or only on weight matrices (not embeddings, biases, norm gains).
        self.decay_on = set(self.params) if cfg.optim.decay_on == "all" else {k for k in self.params if k.endswith(".w")}
        self.decay_mask = None if cfg.optim.decay_on == "all" else self.layout.mask(self.decay_on, dev)

        self.hyper = optim.Hyper.from_configs(configs, dev)
        # lr_at's warmup factor is 1 from this step on (warmup_steps 0 counts as 1: with warmup_from_zero, update 0 has lr 0)
        self.warm_end = max(max(c.optim.warmup_steps, 1) for c in configs)
        self._lr_memo: tuple | None = None
        self.opt_state = optim.OptimState()
        if cfg.optim.decay == "to_init":
            self.opt_state.init = self.flat.clone()
        self.fixed_norm = any(c.optim.fixed_norm for c in configs)
        replacement = cfg.train.sampling == "with_replacement"
        self.sampler = BatchSampler([run_generator(s, 2) for s in seeds], self.train_idx.shape[1], replacement)
        self.dropout_gens = [run_generator(s, 3) for s in seeds]
        self.measure_gens = [run_generator(s, 4) for s in seeds]  # sharpness and noise-scale draws
        self.augment_gens = [run_generator(s, 6) for s in seeds]
        self.augments = [c.task.augment for c in configs]
        self.use_augment = any(a.on for a in self.augments)
        self.dropout_p = torch.tensor([c.model.dropout for c in configs], device=dev)
        self.use_dropout = any(c.model.dropout > 0 for c in configs)
        self.diverged_at = torch.full((len(configs),), -1, dtype=torch.long, device=dev)
        self.step = 0
        self.evaluated_step = -1
        self.samples = 0
        self.batch_size = sampling.initial_batch_size(cfg.train, self.split_idx.shape[1])
        self.noise = sampling.noise_scale(cfg.train)
        self.start_time = time.perf_counter()
        # train.compile compiles the loss of a flat parameter chunk: one input tensor, whose views
        # are taken inside the compiled graph (views as separate inputs cost more than they save).
        self._flat_loss = _compiled(self._train_loss_flat) if cfg.train.compile else None

        # Host-side bookkeeping per run, compacted together with the tensors above.
        self.end_step = [c.train.steps for c in configs]
        self.curves: list[dict[str, list[float]]] = [
            {k: [] for k in ("step", *metrics.EVAL_METRICS, *metrics.COUNTERS)} for _ in configs
        ]
        self.memorized: list[int | None] = [None] * len(configs)
        self.grokked: list[int | None] = [None] * len(configs)
        # per run: the current streak [first step, length] of evaluations at or above the threshold
        self.streaks: list[dict[str, list]] = [{"memorized": [None, 0], "grokked": [None, 0]} for _ in configs]
        self.measures = Measures(self)

    @property
    def size(self) -> int:
        return len(self.configs)

    def set_flat(self, flat: torch.Tensor) -> None:
        """Install flat parameters [R, P] (float32, what the optimizer updates).

        The model reads named parameters that are autograd leaves viewing a flat tensor, so the
        optimizer's in-place update is what the model sees next step: `self.params` view `flat`;
        `self.compute_params` (whole pack) and `self.chunks` [(runs, params)] (per training chunk)
        view `flat` in fp32, or with `train.precision: bf16` a bfloat16 copy refreshed before every
        forward (one cast per step, not one per matmul)."""
        self.flat = flat
        self.grad = torch.empty_like(flat)
        self.params = self._leaves(flat)
        bf16 = self.cfg.train.precision == "bf16"
        self.flat_compute = flat.to(torch.bfloat16) if bf16 else flat
        self.compute_params = self._leaves(self.flat_compute) if bf16 else self.params
        r, c = flat.shape[0], self.chunk_runs
        self.chunks = [(slice(None), self.compute_params)] if c >= r else [
            (slice(s, s + c), self._leaves(self.flat_compute[s : s + c])) for s in range(0, r, c)
        ]

    @torch.no_grad()
    def _refresh_compute(self) -> None:
        if self.flat_compute is not self.flat:
            self.flat_compute.copy_(self.flat)

    def _leaves(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.requires_grad_() for k, v in self.layout.views(flat).items()}

    def _dropout(self, runs: slice) -> models.Dropout:
        """Dropout for the runs `runs`, each with its own rate and mask generator."""
        gens, p = self.dropout_gens[runs], self.dropout_p[runs]

        def drop(x: torch.Tensor) -> torch.Tensor:
            u = torch.stack([torch.rand(x.shape[1:], generator=g) for g in gens]).to(x.device)
            q = p.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
            return x * (u >= q) / (1 - q)

        return drop

    def _logits(self, params: dict[str, torch.Tensor], inputs: torch.Tensor, buffers: dict[str, torch.Tensor],
                drop: models.Dropout = models.no_dropout, train: bool = False) -> torch.Tensor:
        """Logits [R, B, L, C] in float32, computed in the dtype of `params`: with `train.precision:
        bf16` the forward and backward run in bfloat16, while the master parameters, optimizer state,
        softmax and loss stay in float32."""
        return models.forward(params, inputs, self.cfg.model, self.task, drop, buffers, train).float()

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation logits [R, B, L, C] and labels [R, B, L] for dataset indices idx [R, B]."""
        logits = self._logits(self.compute_params, self.inputs[idx], self.buffers)
        return logits, self.labels[idx].view(*idx.shape, -1)

    def _train_loss(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], inputs: torch.Tensor,
                    labels: torch.Tensor, drop: models.Dropout, train: bool = True) -> torch.Tensor:
        """Mean training loss per run [R] (`train=False`: batch norm uses its running statistics)."""
        logits = self._logits(params, inputs, buffers, drop, train=train)
        return per_example_loss(self.cfg.train.loss, logits, labels, self.cfg.train.loss_precision).mean(1).float()

    def _train_loss_flat(self, flat: torch.Tensor, *args: Any) -> torch.Tensor:
        return self._train_loss(self.layout.views(flat), *args)

    def _grads(self, positions: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Loss [R] on train-set positions [R, b]; writes the flat gradient [R, P] into `out`.

        The runs go through forward and backward in chunks of `chunk_runs` (one chunk unless the pack
        is large and on the CPU), so the activations stay in cache; runs never mix, so the result is
        the same either way, and the gradient of a chunk's summed loss is each run's own gradient."""
        idx = self.train_idx.gather(1, positions.to(self.device))
        inputs, labels = self.inputs[idx], self.labels[idx].view(*idx.shape, -1)
        if self.use_augment:  # training batches only; each run from its own generator
            inputs = augment(inputs, self.task.image_shape, [a.shift for a in self.augments],
                             [a.noise for a in self.augments], self.augment_gens)
        losses = []
        for runs, params in self.chunks:
            drop = self._dropout(runs) if self.use_dropout else models.no_dropout
            buffers = {k: b[runs] for k, b in self.buffers.items()}  # views: batch norm updates them in place
            if self._flat_loss is None:
                loss = self._train_loss(params, buffers, inputs[runs], labels[runs], drop)
                self.layout.flatten(list(torch.autograd.grad(loss.sum(), list(params.values()))), out=out[runs])
            else:
                flat = self.flat_compute[runs].detach().requires_grad_()
                loss = self._flat_loss(flat, buffers, inputs[runs], labels[runs], drop)
                out[runs].copy_(torch.autograd.grad(loss.sum(), flat)[0])
            losses.append(loss.detach())
        return losses[0] if len(losses) == 1 else torch.cat(losses)

    def full_train_loss(self, flat: torch.Tensor) -> torch.Tensor:
        """Mean loss [R] over each run's whole train set as a function of flat fp32 parameters [R, P],
        without dropout and with batch norm's running statistics: the loss whose Hessian sharpness is."""
        idx = self.train_idx
        return self._train_loss(self.layout.views(flat), dict(self.buffers), self.inputs[idx],
                                self.labels[idx].view(*idx.shape, -1), models.no_dropout, train=False)

    def batch_gradient(self, positions: torch.Tensor) -> torch.Tensor:
        """Gradient [R, P] of the mean train loss on train-set positions [R, b] in fp32, without dropout and
        leaving batch-norm statistics as they are: a measurement, not a training step."""
        idx = self.train_idx.gather(1, positions.to(self.device))
        flat = self.flat.detach().requires_grad_()
        buffers = {k: b.clone() for k, b in self.buffers.items()}
        loss = self._train_loss(self.layout.views(flat), buffers, self.inputs[idx], self.labels[idx].view(*idx.shape, -1),
                                models.no_dropout)
        return torch.autograd.grad(loss.sum(), flat)[0]

    @torch.no_grad()
    def all_logits(self) -> torch.Tensor:
        """Logits [R, N, L, C] of every example of the task, in the task's order."""
        n = len(self.task)
        chunk = max(1, EVAL_ROWS // self.size)
        idx = torch.arange(n, device=self.device).expand(self.size, -1)
        return torch.cat([self.forward(idx[:, s : s + chunk])[0] for s in range(0, n, chunk)], dim=1)

    def _spare(self) -> torch.Tensor:
        """A second gradient buffer, for gradient accumulation and the adaptive batch's two halves."""
        if self.spare_grad is None or self.spare_grad.shape != self.flat.shape:
            self.spare_grad = torch.empty_like(self.flat)
        return self.spare_grad

    def _expose(self) -> None:
        """The train set in use at this step: under gradual exposure the first `exposure.size(n, step)` examples
        of each run's split (a growing prefix of its exposure order), else the whole split. The sampler's epoch
        in progress finishes over the positions it drew (all still exposed); its next epoch shuffles the grown set."""
        m = self.cfg.train.exposure.size(self.split_idx.shape[1], self.step)
        if m != self.train_idx.shape[1]:
            self.train_idx = self.split_idx[:, :m]
            self.sampler.n = m

    def train_step(self) -> None:
        """One update of every run: sample its batch, take its gradient, freeze it if the loss or the
        gradient is not finite, optimizer step; then the batch-size schedule may change the batch."""
        t, cfg = self.cfg.train, self.cfg
        self._expose()
        self.batch_size = sampling.scheduled_batch_size(t, self.step, self.batch_size)
        b, k = self.sampler.effective(self.batch_size), t.accumulate
        positions = self.sampler.next(b * k)
        self._refresh_compute()
        loss = self._batch_grads(positions, b, k)
        grads = self.grad
        finite = torch.isfinite(loss) & torch.isfinite(grads.sum(1))
        ok: torch.Tensor | None = None  # every run updates
        # On the CPU the checks are free (a sync on a GPU), and while every run is finite there is nothing to record.
        if self.device.type != "cpu" or not bool(finite.all()) or bool((self.diverged_at >= 0).any()):
            self.diverged_at = torch.where(~finite & (self.diverged_at < 0), self.step, self.diverged_at)
            ok = self.diverged_at < 0
        lr = self._lr(b * k)
        optim.step(
            cfg.optim, self.flat, grads, self.opt_state, self.hyper, lr, ok=ok,
            layout=self.layout, decay_mask=self.decay_mask, fixed_norm=self.fixed_norm,
        )
        self.step += 1
        self.samples += b * k
        self.batch_size = sampling.adapted_batch_size(t, self.noise, self.step, self.batch_size)

    def _lr(self, batch: int) -> torch.Tensor:
        """lr [R] of this step. Under a constant schedule it stops changing once every run's warmup is over
        (for a given batch size), so it is computed once then, not every step."""
        o = self.cfg.optim
        at = min(self.step, self.warm_end) if o.schedule == "constant" else None
        memo = self._lr_memo
        if at is None or memo is None or memo[0] is not self.hyper or memo[1:3] != (batch, at):
            lr = optim.lr_at(self.hyper, self.step, o.schedule, optim.batch_scale(o, batch))
            self._lr_memo = (self.hyper, batch, at, lr)
            return lr
        return memo[3]

    def _batch_grads(self, positions: torch.Tensor, b: int, k: int) -> torch.Tensor:
        """Loss [R] of the step's batch (k micro-batches of b); its mean gradient lands in `self.grad`.

        With a noise-scale estimator the batch is taken as two halves: their gradients are the
        measurement, and their mean is the gradient. Otherwise gradient accumulation averages the
        k micro-batch means."""
        grads = self.grad
        if self.noise is not None and b >= 2:
            h, other = b // 2, self._spare()
            loss = (self._grads(positions[:, :h], grads) + self._grads(positions[:, h : 2 * h], other)) / 2
            self.noise.update(grads, other, 2 * h)
            grads.add_(other).div_(2)
            return loss
        loss = self._grads(positions[:, :b], grads)
        for j in range(1, k):
            spare = self._spare()
            loss = loss + self._grads(positions[:, j * b : (j + 1) * b], spare)
            grads.add_(spare)
        if k > 1:
            loss = loss / k
            grads.div_(k)
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, torch.Tensor]:
        """Loss and accuracy on each run's full train and val sets, parameter norm, current lr. The train set is
        the one in use: under gradual exposure the examples exposed so far (what the run has seen)."""
        self._expose()
        out: dict[str, torch.Tensor] = {}
        self._refresh_compute()
        chunk = max(1, EVAL_ROWS // self.size)
        collapse = self.measures.due("stability")
        for name, idx in (("train", self.train_idx), ("val", self.val_idx)):
            # Per-example losses first, one sum at the end: chunks depend on the pack size, and a sum
            # accumulated chunk by chunk would round differently packed and solo.
            losses = torch.empty(idx.shape, dtype=torch.float64, device=self.device)
            correct = torch.zeros(self.size, device=self.device)
            collapsed = torch.zeros(self.size, device=self.device)
            for s in range(0, idx.shape[1], chunk):
                logits, labels = self.forward(idx[:, s : s + chunk])
                if collapse and name == "train":
                    collapsed += stability.softmax_collapsed(logits, self.cfg.train.loss_precision).sum(1)
                losses[:, s : s + chunk] = per_example_loss(self.cfg.train.loss, logits, labels,
                                                            self.cfg.train.loss_precision)
                correct += (logits.argmax(-1) == labels).all(-1).sum(1)
            out[f"{name}_loss"] = (losses.sum(1) / idx.shape[1]).float()
            out[f"{name}_acc"] = correct / idx.shape[1]
            if collapse and name == "train":
                out["softmax_collapse"] = collapsed / idx.shape[1]
        out["param_norm"] = self.flat.pow(2).sum(1).sqrt()
        b = self.sampler.effective(self.batch_size) * self.cfg.train.accumulate
        out["lr"] = optim.lr_at(self.hyper, max(self.step - 1, 0), self.cfg.optim.schedule,
                                optim.batch_scale(self.cfg.optim, b))
        return out

    def _record(self) -> list[int]:
        """Evaluate, append to curves, update events; return the indices of runs now finished.

        A run records only the steps of its own schedule (multiples of eval_every, and its last
        step), so its curve is the same whichever runs share its pack.
        """
        ev = self.evaluate()
        table = torch.stack([ev[k] for k in metrics.EVAL_METRICS], dim=1).cpu().tolist()
        counters = {"samples": self.samples,
                    "batch_size": self.sampler.effective(self.batch_size) * self.cfg.train.accumulate,
                    "seconds": time.perf_counter() - self.start_time,
                    "noise_scale": self.noise.value if self.noise is not None else float("nan"),
                    "train_size": self.train_idx.shape[1]}
        diverged = self.diverged_at.cpu().tolist()
        measured = {k: v.detach().cpu().tolist() for k, v in self.measures.at_evaluation(ev).items()}
        done = []
        for r, row in enumerate(table):
            c, cfg = self.curves[r], self.configs[r]
            if self.step % cfg.train.eval_every and self.step != self.end_step[r] and diverged[r] < 0:
                continue
            if diverged[r] < 0 and not (math.isfinite(row[0]) and math.isfinite(row[2])):
                # the last update overflowed the weights: training saw finite numbers, evaluation does not
                diverged[r] = self.step
                self.diverged_at[r] = self.step
            c["step"].append(self.step)
            for k, v in zip(metrics.EVAL_METRICS, row):
                c[k].append(v)
            for k in metrics.COUNTERS:
                c[k].append(counters[k])
            for k in set(measured) | (set(c) - set(measured) - {"step", *metrics.EVAL_METRICS, *metrics.COUNTERS}):
                c.setdefault(k, [None] * (len(c["step"]) - 1)).append(measured[k][r] if k in measured else None)
            thr, hold = cfg.metrics.threshold, cfg.metrics.hold
            if self.memorized[r] is None:
                self.memorized[r] = metrics.advance(self.streaks[r]["memorized"], row[1], self.step, thr, hold)
            if self.grokked[r] is None:
                self.grokked[r] = metrics.advance(self.streaks[r]["grokked"], row[3], self.step, thr, hold)
                if self.grokked[r] is not None and cfg.train.stop.after_grok > 0:  # counted from the hold's end
                    self.end_step[r] = min(self.end_step[r], self.step + cfg.train.stop.after_grok)
            if self.step >= self.end_step[r] or diverged[r] >= 0:
                done.append(r)
        return done

    def _result(self, r: int) -> RunResult:
        c, cfg = self.curves[r], self.configs[r]
        diverged = int(self.diverged_at[r])
        final = {k: _clean(c[k][-1]) for k in ("train_acc", "val_acc", "train_loss", "val_loss")}
        weights = None
        if cfg.train.save_weights:
            weights = {"params": {k: p[r].detach().cpu().clone() for k, p in self.params.items()},
                       "buffers": {k: b[r].cpu().clone() for k, b in self.buffers.items()}}
        m = cfg.metrics
        stats = stability.summary(c, self.grokked[r], m.threshold, m.spike_factor, m.spike_window, m.spike_floor) \
            if "stability" in m.measures else {}
        return RunResult(
            run_id=cfg.run_id,
            config=cfg.resolved(),
            status=metrics.status(c["train_acc"], self.memorized[r], self.grokked[r], diverged >= 0),
            memorized_step=self.memorized[r],
            grokked_step=self.grokked[r],
            diverged_step=diverged if diverged >= 0 else None,
            steps_run=diverged if diverged >= 0 else self.step,
            wall_seconds=time.perf_counter() - self.start_time,
            final=final,
            curves={k: (vals if k == "step" else [_clean(v) for v in vals]) for k, vals in c.items()},
            weights=weights,
            state=self.state_dict([r]) if cfg.train.save_weights else None,
            stats=stats,
        )

    def state_dict(self, runs: list[int] | None = None) -> dict[str, Any]:
        """Everything needed to continue the pack (or its runs `runs`) bit for bit, on the CPU: stacked
        parameters, buffers and optimizer state, every per-run generator, the step and counters, and the
        curves and events so far. Checkpoints save it; a finished run keeps its own to extend its budget."""
        keep = list(range(self.size)) if runs is None else runs
        k = torch.tensor(keep, dtype=torch.long, device=self.device)

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.detach()[k].cpu() if runs is not None else t.detach().cpu()

        o = self.opt_state
        return {
            "run_ids": [self.configs[r].run_id for r in keep],
            "step": self.step,
            "evaluated_step": self.evaluated_step,
            "samples": self.samples,
            "batch_size": self.batch_size,
            "elapsed": time.perf_counter() - self.start_time,
            "flat": rows(self.flat),
            "buffers": {n: rows(b) for n, b in self.buffers.items()},
            "opt": {"step": o.step, "grokfast_count": o.grokfast_count,
                    **{n: None if getattr(o, n) is None else rows(getattr(o, n)) for n in o.TENSORS}},
            "sampler_gens": [self.sampler.generators[r].get_state() for r in keep],
            "sampler_buffer": self.sampler.buffer[keep],
            "dropout_gens": [self.dropout_gens[r].get_state() for r in keep],
            "measure_gens": [self.measure_gens[r].get_state() for r in keep],
            "augment_gens": [self.augment_gens[r].get_state() for r in keep],
            "streaks": [copy.deepcopy(self.streaks[r]) for r in keep],
            "measures": self.measures.state(keep),
            "diverged_at": rows(self.diverged_at),
            "noise": None if self.noise is None else (self.noise.trace, self.noise.g2),
            "end_step": [self.end_step[r] for r in keep],
            "curves": [self.curves[r] for r in keep],
            "memorized": [self.memorized[r] for r in keep],
            "grokked": [self.grokked[r] for r in keep],
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Overwrite this freshly built pack (same runs, same order) with a `state_dict()`."""
        if [c.run_id for c in self.configs] != sd["run_ids"]:
            raise ValueError("the state's runs do not match the pack")
        dev = self.device
        self.step, self.evaluated_step, self.samples = sd["step"], sd["evaluated_step"], sd["samples"]
        self.batch_size = sd["batch_size"]
        self.start_time = time.perf_counter() - sd["elapsed"]
        self.set_flat(sd["flat"].to(dev))
        self.buffers = {k: v.to(dev) for k, v in sd["buffers"].items()}
        o = self.opt_state
        o.step, o.grokfast_count = sd["opt"]["step"], sd["opt"]["grokfast_count"]
        for k in o.TENSORS:
            setattr(o, k, None if sd["opt"][k] is None else sd["opt"][k].to(dev))
        for g, st in zip(self.sampler.generators, sd["sampler_gens"]):
            g.set_state(st)
        self.sampler.buffer = sd["sampler_buffer"]
        for g, st in zip(self.dropout_gens, sd["dropout_gens"]):
            g.set_state(st)
        for g, st in zip(self.measure_gens, sd["measure_gens"]):
            g.set_state(st)
        for g, st in zip(self.augment_gens, sd.get("augment_gens", [])):  # states from before augmentation lack it
            g.set_state(st)
        self._expose()
        self.streaks = copy.deepcopy(sd["streaks"])
        self.measures.load(sd["measures"])
        self.diverged_at = sd["diverged_at"].to(dev)
        if self.noise is not None and sd["noise"] is not None:
            self.noise.trace, self.noise.g2 = sd["noise"]
        self.end_step, self.curves = list(sd["end_step"]), [copy.deepcopy(c) for c in sd["curves"]]
        for c in self.curves:  # a counter added since the state was saved: unknown at its earlier evaluations
            for k in metrics.COUNTERS:
                c.setdefault(k, [None] * len(c["step"]))
        self.memorized, self.grokked = list(sd["memorized"]), list(sd["grokked"])

    def release_spent(self) -> list[RunResult]:
        """Runs loaded with nothing left to train (a continued run that had stopped after grokking or
        diverged) leave the pack at once, as results."""
        spent = [r for r in range(self.size) if self.end_step[r] <= self.step or int(self.diverged_at[r]) >= 0]
        results = [self._result(r) for r in spent]
        if spent:
            self.compact([r for r in range(self.size) if r not in spent])
        return results

    def compact(self, keep: list[int]) -> None:
        """Drop every run not in `keep` from all stacked tensors and host lists."""
        k = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.set_flat(self.flat[k])
        self.buffers = {n: b[k] for n, b in self.buffers.items()}
        self.opt_state = self.opt_state.select(k)
        self.hyper = self.hyper.select(k)
        self.sampler.select(keep)
        self.split_idx, self.val_idx = self.split_idx[k], self.val_idx[k]
        self.train_idx = self.split_idx[:, : self.train_idx.shape[1]]
        self.dropout_p, self.diverged_at = self.dropout_p[k], self.diverged_at[k]
        self.dropout_gens = [self.dropout_gens[i] for i in keep]
        self.measure_gens = [self.measure_gens[i] for i in keep]
        self.augment_gens, self.augments = [self.augment_gens[i] for i in keep], [self.augments[i] for i in keep]
        self.measures.select(keep)
        for name in ("configs", "end_step", "curves", "memorized", "grokked", "streaks"):
            setattr(self, name, [getattr(self, name)[i] for i in keep])

    def _next_eval(self) -> int:
        every = self.cfg.train.eval_every
        return min(min(self.end_step), (self.step // every + 1) * every)

    def _is_eval_point(self) -> bool:
        every = self.cfg.train.eval_every
        return self.step % every == 0 or self.step in self.end_step

    def run(
        self,
        on_finish: Callable[[RunResult], None] | None = None,
        progress: Callable[[int, int, int], None] | None = None,
        checkpoint: Callable[[Pack], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        resumed: bool = False,
    ) -> list[RunResult]:
        """Train until every run has finished.

        `on_finish` gets each run as it leaves the pack; `progress(step, active_runs, grokked_runs)` is
        called after every evaluation; `checkpoint(pack)` after the first evaluation past every
        `train.checkpoint_every` steps, and when `should_stop()` turns true (then `Interrupted` is
        raised). `resumed`: the pack was loaded from a checkpoint, so its current step may already
        be evaluated. Denormal floats are flushed to zero meanwhile (groklab.denormals).
        """
        with denormals.flushed():
            return self._run(on_finish, progress, checkpoint, should_stop, resumed)

    def _run(self, on_finish: Callable[[RunResult], None] | None, progress: Callable[[int, int, int], None] | None,
             checkpoint: Callable[[Pack], None] | None, should_stop: Callable[[], bool] | None,
             resumed: bool) -> list[RunResult]:
        if not resumed:
            self.start_time = time.perf_counter()
        results: list[RunResult] = []
        every = self.cfg.train.checkpoint_every

        def evaluate_and_release() -> None:
            done = self._record()
            self.evaluated_step = self.step
            for r in done:
                res = self._result(r)
                results.append(res)
                if on_finish:
                    on_finish(res)
            if done:
                self.compact([r for r in range(self.size) if r not in done])
            if progress:
                grokked = sum(x.grokked_step is not None for x in results) + sum(g is not None for g in self.grokked)
                progress(self.step, self.size, grokked)

        if not resumed or (self.evaluated_step != self.step and self._is_eval_point()):
            evaluate_and_release()
        last_checkpoint = self.step
        while self.size:
            target = self._next_eval()
            while self.step < target:
                self.train_step()
                if should_stop is not None and should_stop():
                    if checkpoint is not None:
                        checkpoint(self)
                    raise Interrupted(self.step)
            evaluate_and_release()
            if checkpoint is not None and every and self.size and self.step - last_checkpoint >= every:
                checkpoint(self)
                last_checkpoint = self.step
        return results


class Interrupted(Exception):
    """Training stopped on request (SIGINT/SIGTERM) after checkpointing."""


def _load(cfg: Config, weights: Weights | None, fresh: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]):
    """Start from another run's final weights (`train.init_from`), checking that the shapes match."""
    if weights is None:
        raise ConfigError(f"train.init_from: no stored weights for run {cfg.train.init_from!r}")
    got = weights["params"]
    want = {k: tuple(v.shape) for k, v in fresh.items()}
    have = {k: tuple(v.shape) for k, v in got.items()}
    if want != have:
        raise ConfigError(
            f"train.init_from: run {cfg.train.init_from!r} has parameters {have}, this model needs {want}"
        )
    return {k: v.clone() for k, v in got.items()}, {k: v.clone() for k, v in weights.get("buffers", {}).items()}


def _compiled(fn: Callable) -> Callable:
    """torch.compile `fn`, falling back to eager with a warning where compilation is unavailable.

    Shapes that change (pack compaction, batch schedules) are marked dynamic after their first change,
    and hyperparameters are tensors, so training does not recompile step after step."""
    import warnings

    try:
        compiled = torch.compile(fn, dynamic=None)
    except Exception as e:  # pragma: no cover - depends on the platform
        warnings.warn(f"train.compile: torch.compile unavailable ({e}); training eagerly", stacklevel=2)
        return fn
    state = {"fn": compiled}

    def call(*args: Any) -> torch.Tensor:
        try:
            return state["fn"](*args)
        except Exception as e:  # a backend that fails at first use (no C++ compiler, ...)
            if state["fn"] is fn:
                raise
            warnings.warn(f"train.compile: compilation failed ({type(e).__name__}: {e}); training eagerly",
                          stacklevel=2)
            state["fn"] = fn
            return fn(*args)

    return call


def _clean(v: float) -> float | None:
    return None if v is None or math.isnan(v) or math.isinf(v) else float(v)


def train(
    configs: list[Config],
    on_finish: Callable[[RunResult], None] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    init_weights: dict[str, Weights] | None = None,
) -> list[RunResult]:
    """Train compatible runs as one pack. A single run is a pack of one."""
    return Pack(configs, init_weights).run(on_finish, progress)
