"""Memory estimates: refuse a run that cannot fit, and cap pack sizes to what the device holds.

The estimate is analytic (nothing is allocated): parameters and their optimizer state, the
activations autograd keeps for one micro-batch, the evaluation chunk and the task's tensors.
It errs on the generous side; its job is to stop a width-65536 typo before it takes the machine down.
"""

from __future__ import annotations

import os

import torch

from groklab.config import FEATURE_TASKS, Config, ConfigError, TaskConfig

FLOAT = 4
SAFETY = 0.6  # share of free memory a pack may plan to use
CPU_CHUNK_BYTES = 64 * 2**20  # activations per CPU training chunk (see train_chunk_runs)


def task_shape(t: TaskConfig) -> tuple[int, int, int, int, int]:
    """(examples, sequence length or features, vocabulary, classes, outputs) without building the task."""
    if t.name == "modular":
        return t.modulus * t.modulus, 4, t.modulus + 2, t.modulus, 1
    if t.name == "s5":
        return 14_400, 4, 122, 120, 1
    if t.name == "parity":
        return 2**t.bits, t.bits + 1, 3, 2, 1
    if t.name == "sequence":
        return t.symbols**t.length, 2 * t.length + 1, t.symbols + 1 + t.length, t.symbols, t.length
    if t.name == "images":
        from groklab.tasks import images

        f = images.describe(t.path)
        c, h, w = f.image_shape
        return f.n, c * h * w, 0, f.n_classes, 1
    return 1797, 64, 0, 10, 1


def _cnn_sizes(cfg: Config) -> tuple[int, int]:
    """(parameters, activation floats per example) of the cnn: per layer the k×k patches (one copy of the input
    per kernel position), the conv output, norm, activation and pool outputs."""
    _, _, _, c, _ = task_shape(cfg.task)
    m = cfg.model
    cin, h, w = cfg.task.image_shape
    k2, params, acts = m.kernel_size**2, 0, 0
    for cout in m.channels:
        params += cout * cin * k2 + 2 * cout
        acts += h * w * (cin * k2 + 4 * cout)
        if m.pool != "none":
            h, w = h // 2, w // 2
        cin = cout
    return params + cin * h * w * c + c, acts


def _rnn_sizes(cfg: Config) -> tuple[int, int]:
    """(parameters, activation floats per example) of the rnn: per layer and time step the gates of the input
    and of the hidden state, their nonlinearities and the new states."""
    _, t, v, c, n_out = task_shape(cfg.task)
    d, layers = cfg.model.width, cfg.model.layers
    gd = (3 if cfg.model.cell == "gru" else 4) * d
    params = v * d + layers * (2 * d * gd + 2 * gd) + d * c + c
    return params, t * d + layers * t * (3 * gd + 6 * d)


def _sizes(cfg: Config) -> tuple[int, int]:
    """(parameters, activation floats kept per example) of one run."""
    n, t, v, c, n_out = task_shape(cfg.task)
    m = cfg.model
    d, h, layers = m.width, m.width * m.mlp_ratio, m.layers
    if m.kind == "transformer":
        params = v * d + t * d + layers * (4 * d * d + 2 * d * h + 10 * d + h) + d * c * n_out + c
        return params, t * layers * (10 * d + 2 * h + m.heads * t) + t * v
    if m.kind == "cnn":
        return _cnn_sizes(cfg)
    if m.kind == "rnn":
        return _rnn_sizes(cfg)
    features = cfg.task.name in FEATURE_TASKS
    inputs = t if features else 2 * d
    emb = 0 if features else v * d
    if m.kind == "mlp":
        return emb + inputs * d + (layers - 1) * d * d + d * c * n_out, layers * d * 4
    return emb + inputs * d + layers * (2 * d * h + h + 4 * d) + d * c * n_out, layers * (3 * d + 2 * h)


def activation_bytes(cfg: Config) -> int:
    """Estimated bytes of activations (and their gradients) one run's training step holds."""
    n = task_shape(cfg.task)[0]
    batch = cfg.train.batch_schedule.end if cfg.train.batch_schedule else cfg.train.batch_size
    batch = min(batch, n) if cfg.train.sampling == "without_replacement" else batch
    return FLOAT * 2 * _sizes(cfg)[1] * batch


def run_bytes(cfg: Config) -> int:
    """Estimated bytes one run adds to a pack."""
    state = 6 + (cfg.optim.grokfast.window if cfg.optim.grokfast and cfg.optim.grokfast.kind == "ma" else 0)
    return FLOAT * _sizes(cfg)[0] * state + activation_bytes(cfg) + 16 * task_shape(cfg.task)[0]


def train_chunk_runs(cfg: Config, device: torch.device) -> int:
    """How many runs of a pack go through one training forward/backward together.

    On a GPU, all of them (more parallel work is better). On the CPU, as many as keep the step's
    activations within about CPU_CHUNK_BYTES, so they stay in cache: a pack of 64 runs at batch 512
    is then 8 chunks of 8, not one tensor of 64 x 512 examples that streams through main memory."""
    if device.type != "cpu":
        return 1 << 30
    return max(1, CPU_CHUNK_BYTES // activation_bytes(cfg))


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


def max_pack_size(cfg: Config, device: torch.device) -> int:
    """How many runs like `cfg` fit in one pack; ConfigError if not even one does."""
    need, free = run_bytes(cfg), free_bytes(device)
    if need > SAFETY * free:
        raise ConfigError(
            f"model.width/model.layers/train.batch_size: one run needs about {need / 2**30:.1f} GiB, "
            f"more than the {SAFETY * free / 2**30:.1f} GiB usable on {device} ({free / 2**30:.1f} GiB free); "
            "make the model or batch smaller"
        )
    return max(1, int(SAFETY * free // need))
