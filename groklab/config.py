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
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
}
DEFAULT_OP = {"modular": "x+y", "s5": "x*y", "parity": "parity", "sequence": "sort", "digits": "classify"}


class ConfigError(ValueError):
    """Bad user input. The message names the offending key and what is allowed (CLI exit code 2)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


class TaskConfig(_Strict):
    name: Literal["modular", "s5", "parity", "sequence", "digits"] = "modular"
    op: str | None = None
    modulus: int = Field(97, ge=2, le=2000)
    train_frac: float = 0.5
    train_size: int | None = Field(None, ge=1)
    bits: int = Field(10, ge=2, le=16)
    k: int = Field(3, ge=1)
    symbols: int = Field(5, ge=2, le=16)
    length: int = Field(5, ge=2, le=8)

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
        if self.name == "parity" and self.k > self.bits:
            raise ValueError(f"task.k ({self.k}) must be <= task.bits ({self.bits})")
        if self.name == "sequence" and self.symbols**self.length > 200_000:
            raise ValueError("task.symbols ** task.length must be <= 200000 (the task holds every sequence)")
        return self


NORMS = {"transformer": ("post", "pre", "none"), "mlp": ("none", "batch", "layer"), "resmlp": ("none", "batch", "layer")}


class ModelConfig(_Strict):
    kind: Literal["transformer", "mlp", "resmlp"] = "transformer"
    layers: int = Field(2, ge=1, le=64)
    width: int = Field(128, ge=1, le=65536)
    heads: int = Field(4, ge=1)
    mlp_ratio: int = Field(4, ge=1)
    norm: Literal["pre", "post", "none", "batch", "layer"] | None = None
    activation: Literal["relu", "gelu", "quadratic"] | None = None
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_scale: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.activation is None:
            self.activation = "gelu" if self.kind == "transformer" else "relu"
        if self.norm is None:
            self.norm = "post" if self.kind == "transformer" else "none"
        if self.norm not in NORMS[self.kind]:
            raise ValueError(f"model.norm: {self.norm!r} is not available for model.kind={self.kind}; "
                             f"allowed: {', '.join(NORMS[self.kind])}")
        if self.kind == "transformer" and self.width % self.heads:
            raise ValueError(
                f"model.width ({self.width}) must be divisible by model.heads ({self.heads})"
            )
        return self


class GrokfastConfig(_Strict):
    """Grokfast gradient filter (Lee et al., 2024): g <- g + lamb * slow(g)."""

    kind: Literal["ema", "ma"]
    alpha: float = Field(0.98, ge=0.0, lt=1.0)  # ema
    window: int = Field(100, ge=1, le=10_000)  # ma
    lamb: float = Field(2.0, ge=0.0)


SCHEDULE_GAMMA = {"exponential": 0.9995, "step": 0.5}


class OptimConfig(_Strict):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1.0e-3, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1.0e-8, gt=0.0)
    weight_decay: float = Field(1.0, ge=0.0)
    decay: Literal["decoupled", "coupled", "l1", "to_init"] | None = None
    decay_on: Literal["all", "matrices"] = "all"
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    warmup_steps: int = Field(10, ge=0)
    schedule: Literal["constant", "cosine", "exponential", "cyclic", "step"] = "constant"
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    gamma: float | None = Field(None, gt=0.0, le=1.0)
    step_size: int = Field(1000, ge=1)
    cycle_steps: int = Field(1000, ge=2)
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    base_batch_size: int = Field(512, ge=1)
    fixed_norm: float | None = Field(None, gt=0.0)
    grokfast: GrokfastConfig | None = None
    orthograd: bool = False

    @model_validator(mode="after")
    def _resolve(self) -> OptimConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("optim.nesterov: needs optim.name=sgd and optim.momentum > 0")
        if self.decay is None:
            self.decay = "decoupled" if self.name == "adamw" else "coupled"
        if self.gamma is None:
            self.gamma = SCHEDULE_GAMMA.get(self.schedule, 1.0)
        return self

class StopConfig(_Strict):
    after_grok: int = Field(0, ge=0)


class BatchSchedule(_Strict):
    """ramp: batch size from `start` to `end` over `steps` (linear or geometric), then `end`.
    adaptive: start at `start`; every `check_every` steps double it (up to `end`) while the measured
    gradient noise scale B_simple (McCandlish et al., 2018) exceeds it."""

    kind: Literal["ramp", "adaptive"]
    start: int = Field(ge=1)
    end: int = Field(ge=1)
    steps: int = Field(1000, ge=1)
    shape: Literal["linear", "geometric"] = "linear"
    check_every: int = Field(100, ge=1)
    ema: float = Field(0.9, ge=0.0, lt=1.0)

    def at(self, step: int) -> int:
        """Batch size of update `step` for a ramp."""
        f = min(step / self.steps, 1.0)
        if self.shape == "linear":
            return max(1, round(self.start + (self.end - self.start) * f))
        return max(1, round(self.start * (self.end / self.start) ** f))


class TrainConfig(_Strict):
    batch_size: int = Field(512, ge=1)
    steps: int = Field(100_000, ge=1)
    eval_every: int = Field(100, ge=1)
    seed: int = Field(0, ge=0, lt=2**31)
    stop: StopConfig = StopConfig()
    device: str = "auto"
    loss: Literal["cross_entropy", "stablemax", "mse"] = "cross_entropy"
    sampling: Literal["without_replacement", "with_replacement"] = "without_replacement"
    accumulate: int = Field(1, ge=1, le=1024)
    batch_schedule: BatchSchedule | None = None
    init_from: str | None = None
    save_weights: bool = True
    checkpoint_every: int = Field(1000, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"got {v!r}; allowed: auto, cpu, cuda, cuda:N, mps")
        return v


class MetricsConfig(_Strict):
    threshold: float = Field(0.99, gt=0.0, le=1.0)


class Config(_Strict):
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    metrics: MetricsConfig = MetricsConfig()

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
    "optim.min_lr_ratio",
    "optim.gamma",
    "optim.step_size",
    "optim.cycle_steps",
    "optim.fixed_norm",
    "optim.grokfast.alpha",
    "optim.grokfast.lamb",
    "model.init_scale",
    "model.dropout",
    "train.seed",
    "train.steps",
    "train.stop.after_grok",
    "train.init_from",
    "train.save_weights",
    "metrics.threshold",
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


def run_id(cfg: Config) -> str:
    d = cfg.resolved()
    for key in _NOT_HASHED:
        _drop(d, key)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pack_key(cfg: Config) -> str:
    """Runs with equal pack keys share every shape and can train in lockstep in one pack."""
    d = cfg.resolved()
    for key in PER_RUN_KEYS + ("train.checkpoint_every",):
        _drop(d, key)
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
        raise ConfigError(_format_validation(e)) from None


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.resolved(), sort_keys=False)
