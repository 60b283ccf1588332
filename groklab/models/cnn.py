"""Convolutional network for image tasks, batched over runs.

One conv layer per entry of `channels`: h = dropout(pool(act(norm(conv(h))))), a k×k 'same' convolution, norm
none or batch (per-run nn.BatchNorm2d; the conv then has no bias, as in torchvision's ResNets: the norm's shift
replaces it, and a bias whose gradient is zero up to rounding would take Adam steps of that noise), 2×2 pooling
with stride 2 (max, avg or none); then the feature maps, flattened channel-major as nn.Flatten does, go through
a linear head to the classes. Initialisation as nn.Conv2d / nn.Linear: every weight and bias U(±1/√fan_in),
from the run's own generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from groklab.config import ConfigError, ModelConfig
from groklab.models import Buffers, Dropout, Params, activation, batch_norm, linear, linear_init, uniform
from groklab.tasks import Task


def image_shape(task: Task) -> tuple[int, int, int]:
    """(channels, height, width) of the task's images: the task's own `image_shape` where it has one,
    else a square one-channel image (digits: 64 features, 1×8×8)."""
    shape = getattr(task, "image_shape", None)
    if shape is not None:
        return tuple(shape)
    n = task.inputs.shape[1]
    side = math.isqrt(n)
    if not task.features or side * side != n:
        raise ConfigError(f"model.kind: the cnn needs an image task; this task's inputs are {tuple(task.inputs.shape)}")
    return 1, side, side


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """'same' convolution of x [R, B, C, H, W] with w [R, Cout, C, k, k] and b [R, Cout], batched over runs.

    The k×k patches (a strided view, one copy) times the kernels in one batched matmul (`linear`), rather than
    a grouped F.conv2d with the runs folded into channels: the CPU's grouped kernel rounds differently with the
    number of groups (measured: 1e-6 relative in the weight gradient), which would break pack ≡ solo in the last
    bits; and F.unfold copies the images one by one (most of a training step's time in a profile here)."""
    r, n, c, h, wd = x.shape
    k = w.shape[-1]
    xp = F.pad(x, (k // 2,) * 4)
    patches = xp.unfold(3, k, 1).unfold(4, k, 1)  # [R, B, C, H, W, k, k]: a view
    cols = patches.permute(0, 1, 3, 4, 2, 5, 6).reshape(r, n * h * wd, c * k * k)  # (c, i, j) order as w's
    y = linear(cols, w.reshape(r, w.shape[1], -1).transpose(1, 2), b)  # [R, B·H·W, Cout]
    return y.view(r, n, h, wd, -1).permute(0, 1, 4, 2, 3)


def init(cfg: ModelConfig, task: Task, g: torch.Generator) -> tuple[Params, set[str], Buffers]:
    cin, h, w = image_shape(task)
    size, k, p, buffers = f"{h}×{w}", cfg.kernel_size, {}, {}
    for i, cout in enumerate(cfg.channels):
        bound = 1 / math.sqrt(cin * k * k)  # nn.Conv2d: kaiming_uniform(a=√5) = U(±1/√fan_in), bias likewise
        p[f"conv{i}.w"] = uniform((cout, cin, k, k), bound, g)
        if cfg.norm == "none":
            p[f"conv{i}.b"] = uniform((cout,), bound, g)
        else:
            p[f"conv{i}.norm.g"], p[f"conv{i}.norm.b"] = torch.ones(cout), torch.zeros(cout)
            buffers[f"conv{i}.norm.running_mean"], buffers[f"conv{i}.norm.running_var"] = torch.zeros(cout), torch.ones(cout)
        if cfg.pool != "none":
            h, w = h // 2, w // 2
        cin = cout
    if h == 0 or w == 0:
        raise ConfigError(f"model.channels: {len(cfg.channels)} conv layers, each pooled 2×2, shrink the task's {size} "
                          "images to nothing; use fewer, or model.pool=none")
    p["out.w"], p["out.b"] = linear_init(cin * h * w, task.n_classes * task.n_outputs, g)
    scaled = {k for k in p if k.endswith(".w")}
    return p, scaled, buffers


def forward(
    p: Params, inputs: torch.Tensor, cfg: ModelConfig, task: Task, dropout: Dropout, buffers: Buffers, train: bool
) -> torch.Tensor:
    act = activation(cfg.activation)
    pool = {"max": F.max_pool2d, "avg": F.avg_pool2d}.get(cfg.pool)
    r, n = inputs.shape[:2]
    x = inputs.reshape(r, n, *image_shape(task))  # [R, B, C, H, W]
    for i in range(len(cfg.channels)):
        x = conv2d(x, p[f"conv{i}.w"], p.get(f"conv{i}.b"))
        if cfg.norm == "batch":
            x = batch_norm(x, p[f"conv{i}.norm.g"], p[f"conv{i}.norm.b"], buffers, f"conv{i}.norm", train)
        x = act(x)
        if pool is not None:
            y = pool(x.flatten(0, 1), 2)  # per image and channel: runs cannot mix
            x = y.view(r, n, *y.shape[1:])
        x = dropout(x)
    logits = linear(x.flatten(2), p["out.w"], p["out.b"])
    return logits.view(r, n, task.n_outputs, task.n_classes)
