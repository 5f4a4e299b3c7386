"""What a training run is told to do: one dataclass, TOML recipes that override it, CLI `--set` on top.

Precedence, lowest to highest: the dataclass defaults (a small model that trains on CPU), a recipe file,
explicit `key=value` overrides. Nested model fields are set as `model.<field>` (a GPTConfig override).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError

SAMPLING = ("random", "packed")
STRATEGIES = ("ddp", "fsdp")
DEFAULT_PROMPTS = ["The ", "Once upon a time", "In the beginning"]


@dataclass
class TrainConfig:
    # --- inputs and outputs ---
    shards: str = "shards"  # directory with meta.json + shard_*.bin
    out_dir: str = "pretrain"  # checkpoints/, metrics.jsonl, loss.png, report.md
    tokenizer: str | None = None  # tokenizer.json; None: look beside the shards (../tokenizer/, shards/)
    # --- the model: a checkpoint to continue from, a preset, or the depth dial ---
    init_from: str | None = None  # checkpoint directory whose weights start the run
    preset: str | None = None  # a name from llmlab.model.PRESETS
    depth: int = 4  # from-scratch size dial (llmlab.model.from_depth) when no preset/init_from
    family: str = "gpt2"  # "gpt2" or "llama" for the depth dial
    context_length: int = 256
    model: dict[str, Any] = field(default_factory=dict)  # GPTConfig field overrides
    # --- data ---
    sampling: str = "random"  # "random" windows or "packed" (every token once per epoch, shuffled)
    val_fraction: float = 0.02  # tail of the token stream held out for validation
    seed: int = 1337
    # --- batch ---
    micro_batch: int = 8  # sequences per forward/backward on one process
    tokens_per_step: int | None = None  # global tokens per optimizer step; sets gradient accumulation
    grad_accum: int | None = None  # explicit accumulation steps (overrides tokens_per_step)
    max_steps: int = 1000
    time_limit_s: float | None = None  # end on this wall-clock deadline (schedule follows time); max_steps caps it
    # --- optimiser and schedule ---
    lr: float | None = None  # peak learning rate; None: llmlab.model.suggested_lr(config)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    # --- evaluation and samples ---
    eval_every: int = 200
    eval_tokens: int = 32768  # validation tokens per evaluation
    sample_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    sample_tokens: int = 48
    sample_temperature: float = 0.8
    # --- checkpoints and logs ---
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # newest step_* directories kept (0 keeps all)
    log_every: int = 10  # progress bar / metrics cadence in steps
    # --- hardware ---
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 autocast where supported, else fp32) | float32 | bfloat16
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block in the backward pass: less memory, ~1/3 more compute
    prefetch: bool | None = None  # read the next batch in a background thread; None: on for CUDA
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    distributed: str = "ddp"  # under torchrun: "ddp" (replicate) or "fsdp" (fully_shard)
    peak_flops: float | None = None  # for MFU; None: measured (CPU) or looked up (GPU)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.sampling in SAMPLING, f"sampling={self.sampling!r}; choose one of {', '.join(SAMPLING)}"),
            (self.distributed in STRATEGIES, f"distributed={self.distributed!r}; choose ddp or fsdp"),
            (self.family in ("gpt2", "llama"), f"family={self.family!r}; choose gpt2 or llama"),
            (self.dtype in ("auto", "float32", "bfloat16"), f"dtype={self.dtype!r}; choose auto, float32 or bfloat16"),
            (0.0 < self.val_fraction < 1.0, f"val_fraction={self.val_fraction} must lie strictly between 0 and 1"),
            (self.micro_batch >= 1, "micro_batch must be at least 1"),
            (self.context_length >= 2, f"context_length={self.context_length} must be at least 2 (an input and its next token)"),
            (self.lr is None or (math.isfinite(self.lr) and self.lr > 0), f"lr={self.lr} must be a positive number"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0, f"weight_decay={self.weight_decay} must not be negative"),
            (math.isfinite(self.grad_clip) and self.grad_clip >= 0, f"grad_clip={self.grad_clip} must not be negative (0 turns clipping off)"),
            (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0, f"beta1={self.beta1} and beta2={self.beta2} must lie in [0, 1)"),
            (self.eps > 0, f"eps={self.eps} must be positive"),
            (self.eval_tokens >= 1, "eval_tokens must be at least 1"),
            (self.peak_flops is None or self.peak_flops > 0, f"peak_flops={self.peak_flops} must be positive"),
            (self.threads is None or self.threads >= 1, f"threads={self.threads} must be at least 1"),
            (not Path(self.out_dir).exists() or Path(self.out_dir).is_dir(),
             f"out_dir={self.out_dir} is a file, not a directory: choose another output directory"),
            (self.max_steps >= 1, "max_steps must be at least 1"),
            (self.time_limit_s is None or self.time_limit_s > 0, f"time_limit_s={self.time_limit_s} must be positive"),
            (self.depth >= 1, "depth must be at least 1"),
            (self.grad_accum is None or self.grad_accum >= 1, "grad_accum must be at least 1"),
            (self.warmup_steps >= 0, "warmup_steps must not be negative"),
            (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must lie in [0, 1]"),
            (self.eval_every >= 1 and self.checkpoint_every >= 1 and self.log_every >= 1,
             "eval_every, checkpoint_every and log_every must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _known(cls=TrainConfig) -> dict[str, Any]:
    return {f.name: f for f in fields(cls)}


def _merge(base: dict[str, Any], changes: dict[str, Any], where: str) -> dict[str, Any]:
    known = _known()
    out = dict(base)
    for key, value in changes.items():
        if key not in known:
            raise ConfigError(f"unknown training option {key!r} in {where}", hint=f"known options: {', '.join(known)}")
        if key == "model":
            if not isinstance(value, dict):
                raise ConfigError(f"'model' in {where} must be a table of GPTConfig fields")
            out["model"] = {**out.get("model", {}), **value}
        else:
            out[key] = value
    return out


def recipe_path(name_or_path: str) -> Path:
    """A recipe file: a path, or the name of one shipped in llmlab/train/recipes (with or without .toml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = resources.files("llmlab.train") / "recipes" / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if shipped.is_file():
        return Path(str(shipped))
    names = sorted(p.name.removesuffix(".toml") for p in (resources.files("llmlab.train") / "recipes").iterdir()
                   if p.name.endswith(".toml"))
    raise ConfigError(f"no recipe file {name_or_path!r}", hint=f"pass a .toml path or one of: {', '.join(names)}")


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as TOML (numbers, booleans, lists, quoted strings) or else as a bare string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value", hint="e.g. --set max_steps=200 --set model.dropout=0.1")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_config(
    recipe: str | None = None, overrides: list[str] | dict[str, Any] | None = None, **explicit: Any
) -> TrainConfig:
    """Defaults <- recipe <- overrides (`["k=v", ...]` or a dict) <- explicit keyword values that are not None."""
    values: dict[str, Any] = {}
    if recipe:
        path = recipe_path(recipe)
        try:
            values = _merge(values, tomllib.loads(path.read_text(encoding="utf-8")), str(path))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"recipe {path} is not valid TOML: {e}") from e
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs = [parse_override(o) for o in overrides or []]
    for key, value in pairs:
        if key.startswith("model."):
            values = _merge(values, {"model": {key.split(".", 1)[1]: value}}, "overrides")
        else:
            values = _merge(values, {key: value}, "overrides")
    values = _merge(values, {k: v for k, v in explicit.items() if v is not None}, "arguments")
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise ConfigError(f"bad training options: {e}") from e
