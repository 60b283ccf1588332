"""Run configuration: validated pydantic models, dotted overrides, run ids.

Every run is described by one `Config`. Its resolved form (all defaults filled in) is stored with
the run, and the run id is a hash of that resolved form, so the same experiment always gets the
same id and a re-run sweep skips it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

MODULAR_OPS = (
    "x+y",
    "x-y",
    "x*y",
    "x/y",
    "x^2+y^2",
    "x^2+xy+y^2",
    "x^2+xy+y^2+x",
    "x^3+xy",
    "x^3+xy^2+y",
)
S5_OPS = ("x*y", "x*y*x^-1", "x*y*x")
TASK_OPS = {
    "modular": MODULAR_OPS,
    "s5": S5_OPS,
    "parity": ("parity",),
    "sequence": ("sort", "reverse", "copy"),
    "digits": ("classify",),
    "images": ("classify",),
}
# Feature tasks whose features are images: (channels, height, width); None: read from the task's file.
IMAGE_TASKS: dict[str, tuple[int, int, int] | None] = {"digits": (1, 8, 8), "images": None}
DEFAULT_OP = {"modular": "x+y", "s5": "x*y", "parity": "parity", "sequence": "sort", "digits": "classify",
              "images": "classify"}


class ConfigError(ValueError):
    """Bad user input. The message names the offending key and what is allowed (CLI exit code 2)."""


class InapplicableKey(ValueError):
    """A key set to a non-default value where it does nothing (raised inside validators; see make_config)."""

    def __init__(self, key: str, where: str):
        super().__init__(f"{key}: applies only {where}; remove it (here it would change nothing but the run id)")
        self.key = key


class InapplicableKeyError(ConfigError):
    """ConfigError for keys that do not apply to the chosen task / model / optimizer; `keys` names them."""

    def __init__(self, message: str, keys: list[str]):
        super().__init__(message)
        self.keys = keys


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # key -> (condition under which the key applies, the condition in words). A key that does not apply
    # to the chosen task / model / optimizer is refused when set to anything but its default: it would
    # change nothing but the run id.
    def _refuse_inapplicable(self, prefix: str, rules: dict[str, tuple[bool, str]]) -> None:
        for key, (applies, where) in rules.items():
            default = type(self).model_fields[key].default
            if not applies and key in self.model_fields_set and getattr(self, key) != default:
                raise InapplicableKey(f"{prefix}.{key}", where)

    # Keys added after runs were stored stay out of the resolved form (and so the run id) while at their
    # default: adding them left the id of every earlier run as it was.
    def _omit_defaults(self, d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        for key in keys:
            if getattr(self, key) == type(self).model_fields[key].default:
                d.pop(key, None)
        return d


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


class AugmentConfig(_Strict):
    """Training-batch augmentation of image tasks, drawn per run and batch from the run's own generator."""

    shift: int = Field(0, ge=0, le=64, description="random translation of each training image by an integer "
                       "number of pixels in [-shift, shift] along each axis (drawn per image), zero fill; 0 = none; "
                       "per run")
    noise: float = Field(0.0, ge=0.0, description="standard deviation of additive Gaussian noise on each training "
                         "image's pixels (in [0, 1] units, no clipping); 0 = none; per run")

    @property
    def on(self) -> bool:
        return self.shift > 0 or self.noise > 0


class TaskConfig(_Strict):
    """What is learned: a table of examples (generated, or read from a local file) and the run's train/val split."""

    name: Literal["modular", "s5", "parity", "sequence", "digits", "images"] = Field(
        "modular", description="modular: binary operations mod a prime, `[x, op, y, =]` -> x∘y mod p (Power et al., "
        "2022); s5: composition in the permutation group S5 (120 elements, 14,400 pairs); parity: all 2^bits bit "
        "strings, label = parity of the first k bits (sparse parity); sequence: every sequence of `length` symbols, "
        "input `[a1..aL, =, q1..qL]`, the L answers read at the query positions, correct only if all L are; digits: "
        "scikit-learn's bundled 8×8 digits (1,797 images, 10 classes, no download; needs `groklab[digits]`), "
        "mlp, resmlp or cnn; images: a local image file named by `path` (.npz or MNIST IDX, never a download; "
        "docs/data.md), mlp, resmlp or cnn")
    op: str | None = Field(
        None, description="the operation. modular: " + " ".join(f"`{o}`" for o in MODULAR_OPS) + " (`x/y` skips "
        "y = 0); s5: " + " ".join(f"`{o}`" for o in S5_OPS) + "; sequence: `sort` `reverse` `copy`. Default "
        "`x+y` / `x*y` / `sort`")
    modulus: int = Field(97, ge=2, le=2000, description="the prime p of a `modular` task")
    op_token: bool = Field(True, description="`modular`: inputs `[x, op, y, =]` (Power et al.; Grokfast) or, "
                           "false, `[x, y, =]` without the operator token (Nanda et al., 2023: d_vocab p+1)")
    skip_zero: bool = Field(False, description="`modular`: leave out the pairs with y = 0 (`x/y` always does; "
                            "Grokfast's x·y mod 97 has x in [0, 97), y in [1, 97): 9,312 pairs)")
    train_frac: float = Field(0.5, description="fraction of the examples in the train set, in (0, 1); the split "
                              "is drawn from the run's seed")
    train_size: int | None = Field(None, ge=1, description="train-set size as a count (replaces `train_frac`), "
                                   "e.g. 1000 digits or MNIST images for Omnigrok")
    folds: int | None = Field(None, ge=2, description="K-fold cross-validation: split the examples into K "
                              "folds (sizes differ by at most 1) drawn from the run's seed, hold out fold `fold` as "
                              "the val set and train on the other K−1 (replaces `train_frac` and `train_size`); "
                              "sweep `task.fold` over 0..K−1")
    fold: int = Field(0, ge=0, description="with `folds`: the fold held out as the val set, 0..K−1")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="image tasks: augmentation of the "
                                   "training batches, e.g. `{shift: 1, noise: 0.05}`; evaluation sees the images as "
                                   "they are")
    path: str | None = Field(None, description="`images`: a local `.npz` (arrays `x` [N, H, W], [N, C, H, W] or "
                             "[N, D], `y` [N] integer labels), an MNIST images file `*-images-idx3-ubyte[.gz]` (its "
                             "labels file beside it), or a folder holding `train-images-idx3-ubyte[.gz]` and "
                             "`train-labels-idx1-ubyte[.gz]`; pixels scaled to [0, 1] (docs/data.md). The run id "
                             "holds the path as written, not the file's contents")
    bits: int = Field(10, ge=2, le=16, description="`parity`: number of bits")
    k: int = Field(3, ge=1, description="`parity`: the label is the parity of the first k bits (k ≤ bits)")
    symbols: int = Field(5, ge=2, le=16, description="`sequence`: alphabet size")
    length: int = Field(5, ge=2, le=8, description="`sequence`: sequence length (symbols^length ≤ 200,000)")

    @field_validator("modulus")
    @classmethod
    def _prime(cls, v: int) -> int:
        if not _is_prime(v):
            raise ValueError(f"must be a prime number, got {v} (e.g. 23, 31, 59, 97, 113)")
        return v

    @field_validator("train_frac")
    @classmethod
    def _frac(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError(f"must lie strictly between 0 and 1, got {v}")
        return v

    @model_validator(mode="after")
    def _op_for_task(self) -> TaskConfig:
        if self.op is None:
            self.op = DEFAULT_OP[self.name]
        allowed = TASK_OPS[self.name]
        if self.op not in allowed:
            raise ValueError(
                f"task.op: {self.op!r} is not an operation of task {self.name!r}; "
                f"allowed: {', '.join(allowed)}"
            )
        folds = self.folds is not None
        self._refuse_inapplicable("task", {
            "modulus": (self.name == "modular", "to task.name=modular"),
            "op_token": (self.name == "modular", "to task.name=modular"),
            "skip_zero": (self.name == "modular", "to task.name=modular"),
            "bits": (self.name == "parity", "to task.name=parity"),
            "k": (self.name == "parity", "to task.name=parity"),
            "symbols": (self.name == "sequence", "to task.name=sequence"),
            "length": (self.name == "sequence", "to task.name=sequence"),
            "train_frac": (self.train_size is None and not folds, "without task.train_size or task.folds (which "
                           "replace it)"),
            "train_size": (not folds, "without task.folds (the folds make the split)"),
            "fold": (folds, "with task.folds"),
            "path": (self.name == "images", "to task.name=images"),
        })
        if self.augment.on and self.name not in IMAGE_TASKS:
            raise InapplicableKey("task.augment", f"to image tasks (task.name={' or '.join(IMAGE_TASKS)})")
        if folds and self.fold >= self.folds:
            raise ValueError(f"task.fold: {self.fold} is not a fold of task.folds={self.folds}; allowed: "
                             f"0..{self.folds - 1}")
        if self.name == "images":
            if not self.path:
                raise ValueError("task.path: task.name=images needs a local image file (.npz or MNIST IDX, "
                                 "docs/data.md)")
            from groklab.tasks import images

            images.describe(self.path)  # a missing or malformed file is refused here, before any run starts
        if self.name == "parity" and self.k > self.bits:
            raise ValueError(f"task.k ({self.k}) must be <= task.bits ({self.bits})")
        if self.name == "sequence" and self.symbols**self.length > 200_000:
            raise ValueError("task.symbols ** task.length must be <= 200000 (the task holds every sequence)")
        return self

    @model_serializer(mode="wrap")
    def _applicable(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Keys added after runs were stored stay out of the resolved form (and so the run id) while unused:
        # adding them left the id of every earlier run as it was.
        d = handler(self)
        folds = self.folds is not None
        for key, unused in (("folds", not folds), ("fold", not folds), ("train_frac", folds), ("train_size", folds),
                            ("augment", not self.augment.on), ("path", self.path is None)):
            if unused:
                d.pop(key, None)
        return self._omit_defaults(d, ("op_token", "skip_zero"))

    @property
    def n_examples(self) -> int:
        """Examples in the whole task, computed without building it (an image file: read once, then cached)."""
        if self.name == "modular":
            return self.modulus * (self.modulus - 1 if self.op == "x/y" or self.skip_zero else self.modulus)
        if self.name == "images":
            from groklab.tasks import images

            return images.describe(self.path).n
        return {"s5": 14_400, "parity": 2**self.bits, "sequence": self.symbols**self.length, "digits": 1797}[self.name]

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(channels, height, width) of an image task's images; None for other tasks."""
        if self.name == "images":
            from groklab.tasks import images

            return images.describe(self.path).image_shape
        return IMAGE_TASKS.get(self.name)


NORMS = {"transformer": ("post", "pre", "pre_replace", "none"), "mlp": ("none", "batch", "layer"),
         "resmlp": ("none", "batch", "layer"),
         "cnn": ("none", "batch"), "rnn": ("none",)}
FEATURE_TASKS = ("digits", "images")
FOURIER_OPS = ("x+y",)  # the progress measures of Nanda et al. read the cos/sin(w(a+b)) directions
TOKEN_MODELS = ("transformer", "rnn")  # models that read token ids, not features
CNN_KEYS, RNN_KEYS = ("channels", "kernel_size", "pool"), ("cell",)
BIAS_PARTS = {"transformer": ("attn", "mlp", "unembed"), "mlp": ("hidden", "out"), "resmlp": ("hidden", "out")}


def models_for(task: str) -> tuple[str, ...]:
    """The model kinds that can learn task `task`."""
    if task in FEATURE_TASKS:
        return ("mlp", "resmlp", "cnn") if task in IMAGE_TASKS else ("mlp", "resmlp")
    return ("transformer", "mlp", "resmlp", "rnn")


class ModelConfig(_Strict):
    """The network; every parameter carries a leading run axis inside a pack."""

    kind: Literal["transformer", "mlp", "resmlp", "cnn", "rnn"] = Field(
        "transformer", description="transformer: decoder-only, reads the answer at `=` (token tasks only); mlp: "
        "MLP on the concatenated operand embeddings (or the features); resmlp: residual MLP, pre-norm blocks "
        "h + W2·act(W1·norm(h)); cnn: conv layers (`channels`) and a linear head (image tasks: digits); rnn: "
        "token embeddings, `layers` recurrent layers of `width` (`cell`), read out at the answer positions "
        "(token tasks only)")
    layers: int = Field(2, ge=1, le=64, description="transformer blocks, MLP hidden layers, residual blocks or "
                        "recurrent layers (not cnn: one conv layer per entry of `channels`)")
    width: int = Field(128, ge=1, le=65536, description="model width (divisible by `heads` for the transformer; the "
                       "embedding and hidden width of the rnn; not cnn)")
    heads: int = Field(4, ge=1, description="attention heads (transformer)")
    mlp_ratio: int = Field(4, ge=1, description="hidden width of the transformer / resmlp blocks = mlp_ratio × width")
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [16, 32], min_length=1, max_length=8, description="cnn: output channels of the conv layers, one layer per "
        "entry (1 to 8 entries, each 1 to 4096), e.g. [16, 32]; each layer is conv → norm → activation → pool → "
        "dropout, as nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d / nn.AvgPool2d")
    kernel_size: int = Field(3, ge=1, le=15, description="cnn: conv kernel k×k, odd, padding 'same' (the image "
                             "keeps its size until the pool)")
    pool: Literal["max", "avg", "none"] = Field("max", description="cnn: 2×2 pooling with stride 2 after each conv "
                                                "layer (halves height and width, rounding down), or none")
    cell: Literal["gru", "lstm"] = Field("gru", description="rnn: the recurrent cell, with the gates, equations and "
                                         "initialisation of nn.GRU / nn.LSTM (sigmoid and tanh: `activation` does "
                                         "not apply)")
    norm: Literal["pre", "post", "pre_replace", "none", "batch", "layer"] | None = Field(
        None, description="normalisation. transformer: `post` (default), `pre`, `pre_replace` (Grokfast's block: "
        "the first layer norm replaces the residual stream, x = LN(x); x = x + attn(x); x = x + mlp(LN(x))), "
        "`none` (no layer-norm parameters at all); mlp / resmlp: `none` (default), `layer`, `batch` (per-run running "
        "statistics: batch statistics in "
        "training, running ones in evaluation, as nn.BatchNorm1d); cnn: `none` (default), `batch` (as "
        "nn.BatchNorm2d, per run); rnn: `none`")
    activation: Literal["relu", "gelu", "quadratic"] | None = Field(
        None, description="default `gelu` (transformer), `relu` (MLPs, cnn); `quadratic` is x²; not rnn")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="residual / hidden dropout; masks drawn from the run's "
                           "own generator; per run inside a pack")
    init_scale: float = Field(1.0, gt=0.0, description="multiplies every weight matrix and embedding at init "
                              "(Omnigrok's α); per run")
    bias: list[Literal["attn", "mlp", "unembed", "hidden", "out"]] | None = Field(
        None, description="the layers that have biases (default: all). transformer: `attn` (q, k, v and output "
        "projections), `mlp`, `unembed`, e.g. [mlp] for Nanda et al. (2023), [attn, mlp] for Grokfast; mlp / "
        "resmlp: `hidden`, `out`, e.g. [] for the bias-free MLPs of Doshi et al. (2024) and Prieto et al. (2025); "
        "not cnn / rnn")
    input: Literal["embed", "onehot"] = Field(
        "embed", description="mlp / resmlp on token tasks: `embed` concatenates learned embeddings of the operands; "
        "`onehot` feeds their one-hot vectors concatenated to the first layer (Doshi et al.; Prieto et al.), so "
        "there is no embedding table")
    init_std: float | None = Field(None, gt=0.0, description="with `init: normal`: every weight matrix and "
                                   "embedding ~ N(0, init_std²) instead of N(0, 1/fan-in) (Doshi et al.: 0.05)")
    init: Literal["pytorch", "normal"] | None = Field(
        None, description="initialisation (transformer, mlp, resmlp). pytorch: as nn.Embedding (N(0, 1)), "
        "nn.MultiheadAttention and nn.Linear, the start of the reference repositories with layer norm (Power et "
        "al.; danielmamay); normal: as Nanda et al. (2023), every matrix and embedding N(0, 1/width), the "
        "unembedding N(0, 1/classes), biases 0 (embeddings ~11× smaller at width 128); for the mlp / resmlp "
        "every matrix N(0, 1/fan-in). Default: normal for "
        "`norm: none`, whose residual stream nothing rescales (with N(0, 1) embeddings Nanda et al.'s setup "
        "did not grok in 30,000 steps; with normal it grokked at step 9,100), pytorch otherwise; other models: "
        "pytorch (nn.Linear, nn.Conv2d, nn.GRU / nn.LSTM)")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd, so that 'same' padding is the same on both sides; got {v} (e.g. 3, 5)")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        rnn = self.kind == "rnn"
        if self.activation is None and not rnn:  # the rnn's cells have their own (sigmoid, tanh)
            self.activation = "gelu" if self.kind == "transformer" else "relu"
        if self.norm is None:
            self.norm = "post" if self.kind == "transformer" else "none"
        if self.norm not in NORMS[self.kind]:
            raise ValueError(f"model.norm: {self.norm!r} is not available for model.kind={self.kind}; "
                             f"allowed: {', '.join(NORMS[self.kind])}")
        if self.init is None:
            self.init = "normal" if self.kind == "transformer" and self.norm == "none" else "pytorch"
        elif self.init == "normal" and self.kind in ("cnn", "rnn"):
            raise InapplicableKey("model.init", "to model.kind=transformer, mlp or resmlp (the cnn and rnn start as "
                                  "nn.Conv2d, nn.GRU / nn.LSTM do)")
        if self.init_std is not None and self.init != "normal":
            raise InapplicableKey("model.init_std", "with model.init=normal")
        if self.bias is not None:
            allowed = BIAS_PARTS.get(self.kind)
            if allowed is None:
                raise InapplicableKey("model.bias", "to model.kind=transformer, mlp or resmlp")
            wrong = [b for b in self.bias if b not in allowed]
            if wrong:
                raise ValueError(f"model.bias: {', '.join(wrong)} is not a part of the {self.kind}; allowed: "
                                 f"{', '.join(allowed)}")
            ordered = [b for b in allowed if b in self.bias]
            if ordered != self.bias:  # (each assignment validates the model again)
                self.bias = ordered
        cnn = self.kind == "cnn"
        self._refuse_inapplicable("model", {
            "heads": (self.kind == "transformer", "to model.kind=transformer"),
            "mlp_ratio": (self.kind in ("transformer", "resmlp"), "to model.kind=transformer or resmlp"),
            "layers": (not cnn, "to model.kind other than cnn (whose conv layers are the entries of model.channels)"),
            "width": (not cnn, "to model.kind other than cnn (whose widths are model.channels)"),
            "activation": (not rnn, "to model.kind other than rnn (its cells use sigmoid and tanh, as nn.GRU / nn.LSTM)"),
            "input": (self.kind in ("mlp", "resmlp"), "to model.kind=mlp or resmlp"),
            **{k: (cnn, "to model.kind=cnn") for k in CNN_KEYS},
            **{k: (rnn, "to model.kind=rnn") for k in RNN_KEYS},
        })
        if self.kind == "transformer" and self.width % self.heads:
            raise ValueError(
                f"model.width ({self.width}) must be divisible by model.heads ({self.heads})"
            )
        return self

    @model_serializer(mode="wrap")
    def _applicable(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The cnn's and the rnn's own keys stay out of the other models' resolved form (and so their run ids):
        # adding those models left the id of every earlier run as it was.
        d = handler(self)
        for k in (CNN_KEYS if self.kind != "cnn" else ()) + (RNN_KEYS if self.kind != "rnn" else ()):
            d.pop(k, None)
        if self.bias is not None and self.bias == list(BIAS_PARTS[self.kind]):
            d.pop("bias", None)  # all parts named: the default
        return self._omit_defaults(d, ("bias", "input", "init_std"))

    def has_bias(self, part: str) -> bool:
        """Whether the layers of `part` (an entry of BIAS_PARTS) have biases."""
        return self.bias is None or part in self.bias


class GrokfastConfig(_Strict):
    """Grokfast gradient filter (Lee et al., 2024): g <- g + lamb * slow(g)."""

    kind: Literal["ema", "ma"] = Field(description="ema: slow = exponential moving average of the gradients; ma: "
                                       "mean of the last `window` gradients (applied once the window is full)")
    alpha: float = Field(0.98, ge=0.0, lt=1.0, description="EMA factor (kind ema); per run")
    window: int = Field(100, ge=1, le=10_000, description="window length (kind ma)")
    lamb: float = Field(2.0, ge=0.0, description="amplification λ of the slow gradient; per run")

    @model_validator(mode="after")
    def _applies(self) -> GrokfastConfig:
        self._refuse_inapplicable("optim.grokfast", {
            "alpha": (self.kind == "ema", "to kind ema"), "window": (self.kind == "ma", "to kind ma")})
        return self


SCHEDULE_GAMMA = {"exponential": 0.9995, "step": 0.5}


class OptimConfig(_Strict):
    """The update rule, weight decay and its variants, gradient filters and the learning-rate schedule."""

    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="the update rule, as torch.optim "
                                                  "(SGD with `momentum`, `nesterov`)")
    lr: float = Field(1.0e-3, gt=0.0, description="learning rate; per run")
    betas: tuple[float, float] = Field((0.9, 0.98), description="Adam(W) betas; per run")
    eps: float = Field(1.0e-8, gt=0.0, description="Adam(W) epsilon; per run")
    weight_decay: float = Field(1.0, ge=0.0, description="decay strength λ; per run")
    decay: Literal["decoupled", "coupled", "l1", "to_init"] | None = Field(
        None, description="decoupled (default for adamw): w ← w − lr·λ·w; coupled (default for adam, sgd): λ·w "
        "added to the gradient (L2 in the loss); l1: proximal L1, every weight moves lr·λ toward 0 and stops there; "
        "to_init: w ← w − lr·λ·(w − w₀)")
    decay_on: Literal["all", "matrices"] = Field("all", description="`matrices` decays weight matrices only "
                                                 "(embeddings, biases, norm gains excluded)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum; per run")
    nesterov: bool = Field(False, description="SGD Nesterov momentum (needs momentum > 0)")
    warmup_steps: int = Field(10, ge=0, description="linear warmup: lr·min(1, (t+1)/warmup) for update t "
                              "(= LinearLR(0.1, total_iters=9) at 10); per run")
    warmup_from_zero: bool = Field(False, description="warmup lr·min(1, t/warmup_steps): the first update has lr "
                                   "0 (LambdaLR(min(t/10, 1)) of Nanda et al. and Grokfast) instead of lr/warmup; "
                                   "per run")
    schedule: Literal["constant", "cosine", "exponential", "cyclic", "step"] = Field(
        "constant", description="after warmup, on u = steps since warmup: cosine to min_lr_ratio·lr at "
        "train.steps; exponential gamma^u; step gamma^⌊u/step_size⌋; cyclic triangular between min_lr_ratio·lr and "
        "lr with period cycle_steps. The lr in use is logged as the `lr` metric")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="floor of the cosine and cyclic schedules, as a "
                                "fraction of lr; per run")
    gamma: float | None = Field(None, gt=0.0, le=1.0, description="decay factor of the exponential (default 0.9995) "
                                "and step (default 0.5) schedules; per run")
    step_size: int = Field(1000, ge=1, description="steps between decays of the step schedule; per run")
    cycle_steps: int = Field(1000, ge=2, description="period of the cyclic schedule; per run")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="lr × (b/base_batch_size)^(1 or ½) with b the effective batch in use, so a batch sweep "
        "can hold lr/b fixed or not")
    base_batch_size: int = Field(512, ge=1, description="the batch size at which lr applies unscaled (lr_scaling)")
    fixed_norm: float | None = Field(None, gt=0.0, description="Omnigrok's constraint: rescale the run's whole "
                                     "parameter vector to this L2 norm after every step; per run")
    grokfast: GrokfastConfig | None = Field(None, description="Grokfast filter, e.g. `{kind: ema, alpha: 0.98, "
                                            "lamb: 2.0}` or `{kind: ma, window: 100, lamb: 5.0}`")
    orthograd: bool = Field(False, description="⊥Grad (Prieto et al., 2025): the gradient minus its component "
                            "along the weights, rescaled to its norm, before the optimizer")

    @model_validator(mode="after")
    def _resolve(self) -> OptimConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("optim.nesterov: needs optim.name=sgd and optim.momentum > 0")
        if self.decay is None:
            self.decay = "decoupled" if self.name == "adamw" else "coupled"
        if self.gamma is not None and self.schedule not in SCHEDULE_GAMMA and self.gamma != 1.0:
            raise InapplicableKey("optim.gamma", "to optim.schedule=exponential or step")
        if self.gamma is None:
            self.gamma = SCHEDULE_GAMMA.get(self.schedule, 1.0)
        adam = self.name in ("adam", "adamw")
        self._refuse_inapplicable("optim", {
            "betas": (adam, "to optim.name=adam or adamw"),
            "eps": (adam, "to optim.name=adam or adamw"),
            "momentum": (self.name == "sgd", "to optim.name=sgd"),
            "min_lr_ratio": (self.schedule in ("cosine", "cyclic"), "to optim.schedule=cosine or cyclic"),
            "step_size": (self.schedule == "step", "to optim.schedule=step"),
            "cycle_steps": (self.schedule == "cyclic", "to optim.schedule=cyclic"),
            "base_batch_size": (self.lr_scaling != "none", "with optim.lr_scaling=linear or sqrt"),
        })
        return self

    @model_serializer(mode="wrap")
    def _applicable(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return self._omit_defaults(handler(self), ("warmup_from_zero",))


class StopConfig(_Strict):
    """When a run leaves its pack before its step budget."""

    after_grok: int = Field(0, ge=0, description="stop a run K steps after its grok evaluation; 0 = never stop "
                            "early; per run")


class BatchSchedule(_Strict):
    """ramp: batch size from `start` to `end` over `steps` (linear or geometric), then `end`.
    adaptive: start at `start`; every `check_every` steps double it (up to `end`) while the measured
    gradient noise scale B_simple (McCandlish et al., 2018) exceeds it."""

    kind: Literal["ramp", "adaptive"] = Field(description="ramp: from start to end over `steps`; adaptive: double "
                                              "while the gradient noise scale exceeds the batch (one run per pack)")
    start: int = Field(ge=1, description="first batch size")
    end: int = Field(ge=1, description="last (ramp) or largest (adaptive) batch size")
    steps: int = Field(1000, ge=1, description="ramp length in steps (ramp)")
    shape: Literal["linear", "geometric"] = Field("linear", description="ramp shape (ramp)")
    check_every: int = Field(100, ge=1, description="steps between doubling checks (adaptive)")
    ema: float = Field(0.9, ge=0.0, lt=1.0, description="EMA factor of the noise-scale estimators (adaptive)")

    @model_validator(mode="after")
    def _applies(self) -> BatchSchedule:
        ramp = self.kind == "ramp"
        self._refuse_inapplicable("train.batch_schedule", {
            "steps": (ramp, "to kind ramp"), "shape": (ramp, "to kind ramp"),
            "check_every": (not ramp, "to kind adaptive"), "ema": (not ramp, "to kind adaptive")})
        return self

    def at(self, step: int) -> int:
        """Batch size of update `step` for a ramp."""
        f = min(step / self.steps, 1.0)
        if self.shape == "linear":
            return max(1, round(self.start + (self.end - self.start) * f))
        return max(1, round(self.start * (self.end / self.start) ** f))


class ExposureConfig(_Strict):
    """How a run's train set is exposed: all at once (abrupt), or growing from `start_frac` of it to all of it over
    `steps` (gradual), the examples added in an order drawn from the run's seed."""

    kind: Literal["abrupt", "gradual"] = Field("abrupt", description="abrupt: the whole train split from step 0; "
                                               "gradual: a growing part of it (a curriculum of exposure); the val set "
                                               "is the same either way")
    start_frac: float = Field(0.1, gt=0.0, le=1.0, description="gradual: the fraction of the train split exposed "
                              "at step 0 (at least one example)")
    steps: int = Field(1000, ge=1, description="gradual: steps until the whole train split is exposed")
    shape: Literal["linear", "geometric"] = Field("linear", description="gradual: the exposed count at step t is "
                                                  "round(n0 + (n − n0)·f) (linear) or round(n0·(n/n0)^f) (geometric), "
                                                  "f = min(t/steps, 1), n0 = the count at step 0, n = the split's")

    @model_validator(mode="after")
    def _applies(self) -> ExposureConfig:
        gradual = self.kind == "gradual"
        self._refuse_inapplicable("train.exposure", {k: (gradual, "to kind gradual")
                                                     for k in ("start_frac", "steps", "shape")})
        return self

    def size(self, n: int, step: int) -> int:
        """Examples of a train split of n exposed to update `step` (and to the evaluation at `step`)."""
        if self.kind == "abrupt":
            return n
        n0 = max(1, min(n, round(self.start_frac * n)))
        f = min(step / self.steps, 1.0)
        m = n0 + (n - n0) * f if self.shape == "linear" else n0 * (n / n0) ** f
        return max(n0, min(n, round(m)))


class TrainConfig(_Strict):
    """The step loop: batches, budget, evaluation, loss, precision and where it runs."""

    batch_size: int = Field(512, ge=1, description="minibatch per step; ≥ the train size with "
                            "`without_replacement` means full batch")
    batch_frac: float | None = Field(None, gt=0.0, le=1.0, description="batch = min(batch_size, ⌈batch_frac × "
                                     "train size⌉): openai/grok's min(512, N/2) is batch_size 512, batch_frac 0.5")
    steps: int = Field(100_000, ge=1, description="step budget; per run")
    eval_every: int = Field(100, ge=1, description="evaluation period on the full train and val sets")
    seed: int = Field(0, ge=0, lt=2**31, description="fixes split, init, batch order and dropout masks "
                      "(independent generators)")
    stop: StopConfig = Field(default_factory=StopConfig, description="early stopping")
    device: str = Field("auto", description="`auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`, `mps`; not "
                        "part of the run id")
    loss: Literal["cross_entropy", "stablemax", "mse"] = Field(
        "cross_entropy", description="stablemax: cross-entropy under StableMax (Prieto et al., 2025: s(x) = x+1 "
        "for x ≥ 0, 1/(1−x) below); mse: squared error against one-hot targets, averaged over classes")
    loss_precision: Literal["float64", "float32"] = Field(
        "float64", description="precision of the softmax / loss (the model computes in `precision`): float64, as "
        "the reference implementations (Nanda et al.; Prieto et al.), keeps a memorized example's loss and gradient "
        "from rounding to exactly 0 (softmax collapse), which in float32 can stall grokking")
    sampling: Literal["without_replacement", "with_replacement"] = Field(
        "without_replacement", description="epoch-wise shuffling from the run's generator, or independent "
        "uniform draws")
    accumulate: int = Field(1, ge=1, le=1024, description="gradient accumulation: k micro-batches of batch_size, "
                            "averaged: the update of one batch of k·b")
    batch_schedule: BatchSchedule | None = Field(
        None, description="replaces batch_size: `{kind: ramp, start, end, steps, shape: linear|geometric}` or "
        "`{kind: adaptive, start, end, check_every: 100, ema: 0.9}`")
    exposure: ExposureConfig = Field(default_factory=ExposureConfig, description="gradual exposure to the train "
                                     "split, e.g. `{kind: gradual, start_frac: 0.1, steps: 2000, shape: linear}`; "
                                     "train accuracy and loss are measured on the examples exposed so far, and the "
                                     "exposed count is logged as `train_size`; shared by the runs of a pack")
    init_from: str | None = Field(None, description="a stored run id: start from that run's final weights "
                                  "(shapes must match; e.g. pretrain x+y, fine-tune x−y)")
    save_weights: bool = Field(True, description="keep the run's final weights and training state in "
                               "`<store>.weights/<run_id>.pt` (needed by init_from and by budget extension)")
    checkpoint_every: int = Field(1000, ge=0, description="pack checkpoint period in steps (0 = never); not part "
                                  "of the run id")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: forward and backward in bfloat16; master "
                                               "weights, optimizer state, softmax and loss in float32")
    compile: bool = Field(False, description="torch.compile the loss (falls back to eager with a warning); faster "
                          "on large configurations, slower on small ones on the CPU; not part of the run id")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"got {v!r}; allowed: auto, cpu, cuda, cuda:N, mps")
        return v

    @model_validator(mode="after")
    def _applies(self) -> TrainConfig:
        sched = self.batch_schedule
        self._refuse_inapplicable("train", {
            "batch_size": (sched is None, "without train.batch_schedule (which replaces it)"),
            "batch_frac": (sched is None, "without train.batch_schedule (which replaces it)"),
            "accumulate": (sched is None or sched.kind == "ramp", "without an adaptive train.batch_schedule "
                           "(which measures the noise on the two halves of each batch)"),
        })
        return self

    @model_serializer(mode="wrap")
    def _applicable(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # abrupt exposure (the default, and all there was before the key) stays out of the run id
        d = handler(self)
        if self.exposure.kind == "abrupt":
            d.pop("exposure", None)
        return self._omit_defaults(d, ("batch_frac",))


MEASURES = ("norms", "stability", "sharpness", "noise_scale", "fourier")
DEFAULT_EVALS_BETWEEN = {"sharpness": 10}  # a measure's default period, in evaluations (bench/README.md)


class MetricsConfig(_Strict):
    """What counts as memorized and grokked, and what a run measures beside loss and accuracy."""

    threshold: float = Field(0.99, gt=0.0, le=1.0, description="accuracy that counts as memorized / grokked; "
                             "per run")
    hold: int = Field(1, ge=1, le=1000, description="the threshold must hold for this many consecutive "
                      "evaluations; the event is the first of them (1 = the published definition: the first "
                      "evaluation at or above it). Early stopping (train.stop.after_grok) waits for it; per run")
    measures: list[Literal["norms", "stability", "sharpness", "noise_scale", "fourier"]] = Field(
        default_factory=lambda: ["norms", "stability"], description="what a run records beside loss and "
        "accuracy (docs/measures.md). norms: L2 norm per parameter group (embeddings, each block's attention / "
        "MLP / norms, the last layer); stability: softmax collapse (fraction of train examples whose softmax "
        "sums to exactly 1 in the loss precision), and per run the loss-spike count, val-accuracy volatility "
        "after grokking, last-layer norm growth; sharpness: top Hessian eigenvalue of the train loss (power "
        "iteration) and Hessian trace (Hutchinson); noise_scale: gradient noise scale B_simple (McCandlish et "
        "al.); fourier: progress measures of Nanda et al. (modular tasks of x and y). The first two are cheap "
        "and on by default")
    every: int | None = Field(None, ge=1, description="period in steps of the measures (a multiple of "
                              "train.eval_every; default: every evaluation, every 10th for sharpness)")
    periods: dict[Literal["norms", "stability", "sharpness", "noise_scale", "fourier"], int] = Field(
        default_factory=dict, description="a period per measure, overriding `every`, e.g. {sharpness: 1000}")
    sharpness_iters: int = Field(20, ge=1, le=1000, description="sharpness: the cap on power iterations "
                                 "(each one Hessian-vector product on the full train set)")
    sharpness_tol: float = Field(1e-3, gt=0.0, description="sharpness: stop when the eigenvalue's relative "
                                 "change is below this")
    trace_samples: int = Field(10, ge=0, description="sharpness: Hutchinson samples for the Hessian trace "
                               "(0 = no trace)")
    noise_batch: int = Field(64, ge=2, description="noise_scale: the large of the two batch sizes (the small one "
                             "is half of it), drawn from the run's own generator apart from its training batches")
    noise_ema: float = Field(0.9, ge=0.0, lt=1.0, description="noise_scale: EMA factor of the numerator and the "
                             "denominator, kept separately")
    spike_factor: float = Field(10.0, gt=1.0, description="stability: an evaluation is a loss spike when the train "
                                "loss exceeds spike_factor × the median of the previous spike_window evaluations "
                                "and spike_floor (groklab's own definition: the slingshot paper gives none)")
    spike_window: int = Field(10, ge=1, description="stability: evaluations in the running median")
    spike_floor: float = Field(0.01, ge=0.0, description="stability: a spike's train loss is at least this "
                               "(rises among losses of 1e-7 are not spikes)")

    @model_validator(mode="after")
    def _applies(self) -> MetricsConfig:
        on = set(self.measures)
        for name in self.periods:
            if name not in on:
                raise InapplicableKey(f"metrics.periods.{name}", f"to a measure in metrics.measures (add {name} there)")
        self._refuse_inapplicable("metrics", {
            **{k: ("sharpness" in on, "with sharpness in metrics.measures")
               for k in ("sharpness_iters", "sharpness_tol", "trace_samples")},
            **{k: ("noise_scale" in on, "with noise_scale in metrics.measures") for k in ("noise_batch", "noise_ema")},
            **{k: ("stability" in on, "with stability in metrics.measures")
               for k in ("spike_factor", "spike_window", "spike_floor")},
        })
        return self

    def period(self, measure: str, eval_every: int) -> int:
        """Steps between two recordings of `measure`: its own period, else `every`, else every evaluation
        (every 10th for sharpness, whose power iteration costs ~30 backward passes over the train set)."""
        return self.periods.get(measure, self.every or eval_every * DEFAULT_EVALS_BETWEEN.get(measure, 1))


class Config(_Strict):
    """One run. Its resolved form (every default filled in) is stored with the run and hashed into its id."""

    task: TaskConfig = Field(default_factory=TaskConfig, description="the task")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the model")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="the optimizer and regularizers")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training loop")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="events")

    @model_validator(mode="after")
    def _combination(self) -> Config:
        t, m = self.task, self.model
        allowed = ", ".join(models_for(t.name))
        if m.kind in TOKEN_MODELS and t.name in FEATURE_TASKS:
            raise ValueError(f"model.kind: the {m.kind} needs a token task and task.name={t.name} is a feature "
                             f"task; allowed for {t.name}: {allowed}")
        if m.kind == "cnn" and t.name not in IMAGE_TASKS:
            raise ValueError(f"model.kind: the cnn needs an image task (digits) and task.name={t.name} is not one; "
                             f"allowed for {t.name}: {allowed}; the image tasks: {', '.join(IMAGE_TASKS)} (a local "
                             "file, task.path)")
        if m.kind == "cnn" and m.pool != "none" and min(t.image_shape[1:]) >> len(m.channels) == 0:
            _, h, w = t.image_shape
            raise ValueError(f"model.channels: {len(m.channels)} conv layers, each pooled 2×2, shrink the {h}×{w} "
                             f"images of task.name={t.name} to nothing; allowed: at most "
                             f"{min(h, w).bit_length() - 1} layers, or model.pool=none")
        every = self.train.eval_every
        for name in self.metrics.measures:
            if self.metrics.period(name, every) % every:
                key = f"metrics.periods.{name}" if name in self.metrics.periods else "metrics.every"
                raise ValueError(f"{key}: {self.metrics.period(name, every)} is not a multiple of train.eval_every "
                                 f"({every}); measures are taken at evaluations")
        if "fourier" in self.metrics.measures and not (t.name == "modular" and t.op in FOURIER_OPS
                                                        and not t.skip_zero):
            raise ValueError(f"metrics.measures: fourier applies to task.name=modular with task.op {FOURIER_OPS[0]} "
                             f"on all p² pairs (task.skip_zero false); got task {t.name} {t.op}")
        if m.input == "onehot" and t.name in FEATURE_TASKS:
            raise InapplicableKey("model.input", "to token tasks (a feature task feeds its features)")
        n = t.n_examples
        if t.train_size is not None and t.train_size >= n:
            raise ValueError(f"task.train_size: {t.train_size} leaves no validation examples; task {t.name} has "
                             f"{n} examples, allowed: 1..{n - 1}")
        if t.folds is not None and t.folds > n:
            raise ValueError(f"task.folds: {t.folds} folds of task {t.name}'s {n} examples leave some empty; "
                             f"allowed: 2..{n}")
        return self

    def resolved(self) -> dict[str, Any]:
        """Plain JSON-able dict with every default filled in: what is stored and hashed."""
        return self.model_dump(mode="json")

    @property
    def run_id(self) -> str:
        return run_id(self)


# Keys that may differ between runs trained in one pack: they become per-run tensors [R].
# `train.device` is left out on purpose: where a run trains does not change what it computes.
PER_RUN_KEYS = (
    "optim.lr",
    "optim.betas",
    "optim.eps",
    "optim.weight_decay",
    "optim.momentum",
    "optim.warmup_steps",
    "optim.warmup_from_zero",
    "optim.min_lr_ratio",
    "optim.gamma",
    "optim.step_size",
    "optim.cycle_steps",
    "optim.fixed_norm",
    "optim.grokfast.alpha",
    "optim.grokfast.lamb",
    "model.init_scale",
    "model.dropout",
    "task.augment.shift",
    "task.augment.noise",
    "train.seed",
    "train.steps",
    "train.stop.after_grok",
    "train.init_from",
    "train.save_weights",
    "metrics.threshold",
    "metrics.hold",
)
# Where and how fast a run trains does not change what it computes (compile: up to float rounding).
_NOT_HASHED = ("train.device", "train.save_weights", "train.checkpoint_every", "train.compile")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _drop(d: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.get(p) or {}
    d.pop(leaf, None)


def _hash(resolved: dict[str, Any], leave_out: tuple[str, ...]) -> str:
    d = copy.deepcopy(resolved)
    for key in leave_out:
        _drop(d, key)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_id(cfg: Config) -> str:
    return _hash(cfg.resolved(), _NOT_HASHED)


def budget_id(resolved: dict[str, Any]) -> str:
    """Equal for runs that differ at most in their step budget (`train.steps`), from a resolved config:
    a longer run of the same experiment can continue a stored shorter one instead of starting over."""
    return _hash(resolved, _NOT_HASHED + ("train.steps",))


def pack_key(cfg: Config) -> str:
    """Runs with equal pack keys share every shape and can train in lockstep in one pack."""
    d = cfg.resolved()
    for key in PER_RUN_KEYS + ("train.checkpoint_every",):
        _drop(d, key)
    if d["task"].get("augment") == {}:  # augmented and plain runs share a pack
        del d["task"]["augment"]
    if cfg.train.batch_schedule is not None and cfg.train.batch_schedule.kind == "adaptive":
        d["run"] = run_id(cfg)  # each adaptive run follows its own batch size: a pack of its own
    return json.dumps(d, sort_keys=True)


def set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `value` at `dotted` path in nested dict `d`, creating levels as needed."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"{dotted!r}: empty key segment; use dotted paths like optim.weight_decay")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted!r}: {p!r} is a value, not a section")
        d = nxt
    d[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=3e-3' -> ('optim.lr', 0.003). Values are parsed as YAML, Hydra style."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.weight_decay=0.1")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: value {raw!r} is not valid YAML ({e})") from None
    # YAML 1.1 reads "1e-3" as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def _numbers(obj: Any) -> Any:
    """Turn YAML 1.1 strings like '1e-3' into floats, recursively."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    if isinstance(obj, str):
        try:
            return float(obj) if any(c in obj for c in "eE.") and obj[0] in "0123456789.-+" else obj
        except ValueError:
            return obj
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (task, model, ...)")
    return _numbers(data)


def _format_validation(e: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        key = prefix + ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            msg = f"unknown key; allowed: {', '.join(_allowed_keys(parent))}"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"got {err.get('input')!r}; allowed: {err['ctx']['expected']}"
        elif "input" in err and err["type"] not in ("missing", "value_error"):
            msg = f"{msg} (got {err['input']!r})"
        if re.match(r"^[a-z_]+\.[a-z_.]+ ?[:(]", msg):  # a model validator naming its own key
            lines.append(msg)
        else:
            lines.append(f"{key or '(config)'}: {msg}")
    return "; ".join(lines)


def _allowed_keys(section: str) -> list[str]:
    model: type[BaseModel] = Config
    for part in [p for p in section.split(".") if p]:
        field = model.model_fields.get(part)
        if field is None:
            return []
        candidates = (field.annotation, *get_args(field.annotation))
        sub = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sub:
            return []
        model = sub[0]
    return list(model.model_fields)


def make_config(
    source: Config | dict[str, Any] | str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Build a validated Config from a Config, dict, or YAML path, plus dotted overrides.

    Raises ConfigError with a message naming the key and the allowed values.
    """
    if isinstance(source, Config):
        raw = source.resolved()
    elif isinstance(source, (str, Path)):
        raw = load_yaml(source)
    else:
        raw = copy.deepcopy(source) if source else {}
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        set_dotted(raw, key, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        errors = [err.get("ctx", {}).get("error") for err in e.errors()]
        if all(isinstance(x, InapplicableKey) for x in errors):
            raise InapplicableKeyError(_format_validation(e), [x.key for x in errors]) from None
        raise ConfigError(_format_validation(e)) from None


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.resolved(), sort_keys=False)
