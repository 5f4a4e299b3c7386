"""The transformer's configuration: one dataclass whose fields choose every architectural variant.

GPT-2 and Llama are not different classes, they are different values here: learned vs rotary
positions, LayerNorm vs RMSNorm, GELU vs SwiGLU, multi-head vs grouped-query attention, biases or none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

POSITIONS = ("learned", "sinusoidal", "rope", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post")


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    context_length: int = 1024
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None: same as n_heads (MHA); 1: MQA; in between: GQA
    d_model: int = 768
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int | None = None  # None: 4 * d_model (GELU/ReLU) or the Llama rule (SwiGLU)
    positions: str = "learned"
    rope_theta: float = 10000.0
    activation: str = "gelu_tanh"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"  # "post" is the original Transformer's Add & Norm
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    # Mixture of experts (0 experts: every layer has one dense MLP).
    n_experts: int = 0  # routed expert MLPs per layer
    experts_per_token: int = 2  # top-k: how many experts each token goes through
    n_shared_experts: int = 0  # experts every token also goes through (DeepSeekMoE), as one wider MLP
    # Scale on the routed experts' weighted sum. None: experts_per_token, so that with the router split evenly
    # a token gets what a dense MLP k experts wide would give (DeepSeek-V3 scales its routed output too);
    # 1.0 is Mixtral's plain renormalised sum.
    routed_scale: float | None = None
    router_aux_loss: float = 0.01  # weight of the load-balancing loss added to the training loss
    router_jitter: float = 0.0  # training-time multiplicative noise on the router's input (Switch, Mixtral)
    capacity_factor: float = 0.0  # 0: no token is dropped; else an expert takes at most factor * k * tokens / E
    value_head: bool = False  # a scalar head beside the LM head: a reward model's score, PPO's value V(s)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "n_layers", "n_heads", "d_model"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
            self.head_dim = self.d_model // self.n_heads
        if self.d_ff is None:
            self.d_ff = self._rule_d_ff()
        for name, allowed in (
            ("positions", POSITIONS),
            ("activation", ACTIVATIONS),
            ("norm", NORMS),
            ("norm_placement", NORM_PLACEMENTS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} "
                             "(set n_kv_heads too)")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")
        if self.n_experts:
            if self.n_experts < 2:
                raise ValueError(f"n_experts={self.n_experts}: a mixture needs at least 2 experts (0 for a dense MLP)")
            if not 1 <= self.experts_per_token <= self.n_experts:
                raise ValueError(f"experts_per_token={self.experts_per_token} must lie in [1, n_experts={self.n_experts}]")
            if self.router_aux_loss < 0 or self.router_jitter < 0 or self.capacity_factor < 0:
                raise ValueError("router_aux_loss, router_jitter and capacity_factor must not be negative")
            if self.routed_scale is not None and not self.routed_scale > 0:
                raise ValueError(f"routed_scale={self.routed_scale} must be positive (None: experts_per_token)")

    def _rule_d_ff(self) -> int:
        if self.activation == "swiglu":
            # Llama: 2/3 of 4d so that three matrices cost what two 4d ones would, rounded up to 256.
            return 256 * math.ceil(int(8 * self.d_model / 3) / 256)
        return 4 * self.d_model

    @property
    def routed_output_scale(self) -> float:
        """What the routed experts' weighted sum is multiplied by (`routed_scale`, None meaning k)."""
        return float(self.experts_per_token) if self.routed_scale is None else self.routed_scale

    @property
    def expert_params(self) -> int:
        """Weights of one expert MLP (experts have no biases)."""
        return (3 if self.activation == "swiglu" else 2) * self.d_model * self.d_ff

    def derived_fields(self) -> set[str]:
        """The fields whose values are what their rule gives (n_kv_heads = n_heads, head_dim = d_model /
        n_heads, d_ff from the width and activation): such a value is indistinguishable from a derived one."""
        derived = set()
        if self.n_kv_heads == self.n_heads:
            derived.add("n_kv_heads")
        if self.head_dim * self.n_heads == self.d_model:
            derived.add("head_dim")
        if self.d_ff == self._rule_d_ff():
            derived.add("d_ff")
        return derived

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        if d.get("n_experts") and "routed_scale" not in d:  # saved before the field existed: a plain sum
            d = {**d, "routed_scale": 1.0}
        return cls(**d)

    def replace(self, **changes: Any) -> "GPTConfig":
        """A copy with `changes`; the fields that followed their rule follow it again, so GPT-2's preset
        with d_model=64 and n_heads=4 gets head_dim 16, d_ff 256 and 4 key/value heads, not GPT-2's."""
        derived = {name: None for name in self.derived_fields() if name not in changes}
        return replace(self, **derived, **changes)


def _gpt2(n_layers: int, n_heads: int, d_model: int) -> GPTConfig:
    return GPTConfig(vocab_size=50257, context_length=1024, n_layers=n_layers, n_heads=n_heads, d_model=d_model)


def _llama(**kw: Any) -> GPTConfig:
    base = dict(
        positions="rope", activation="swiglu", norm="rmsnorm", bias=False, tie_embeddings=False, norm_eps=1e-5
    )
    base.update(kw)
    return GPTConfig(**base)


PRESETS: dict[str, GPTConfig] = {
    "gpt2": _gpt2(12, 12, 768),
    "gpt2-medium": _gpt2(24, 16, 1024),
    "gpt2-large": _gpt2(36, 20, 1280),
    "gpt2-xl": _gpt2(48, 25, 1600),
    # GPT-3 (Brown et al. 2020, table 2.1): for the estimator; its alternating sparse attention has no parameters.
    "gpt3-175b": _gpt2(96, 96, 12288).replace(context_length=2048),
    "smollm2-135m": _llama(
        vocab_size=49152, context_length=8192, n_layers=30, n_heads=9, n_kv_heads=3, d_model=576,
        d_ff=1536, rope_theta=100000.0, tie_embeddings=True,
    ),
    "llama-7b": _llama(vocab_size=32000, context_length=2048, n_layers=32, n_heads=32, d_model=4096, d_ff=11008),
    # Llama 3 / 3.1 (Grattafiori et al. 2024, table 3), at their 8,192-token pretraining context.
    "llama-3-8b": _llama(vocab_size=128256, context_length=8192, n_layers=32, n_heads=32, n_kv_heads=8,
                         d_model=4096, d_ff=14336, rope_theta=500000.0),
    "llama-3-70b": _llama(vocab_size=128256, context_length=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                          d_model=8192, d_ff=28672, rope_theta=500000.0),
    "llama-3-405b": _llama(vocab_size=128256, context_length=8192, n_layers=126, n_heads=128, n_kv_heads=8,
                           d_model=16384, d_ff=53248, rope_theta=500000.0),
    # Mixtral 8x7B (Jiang et al. 2024): 8 experts per layer, 2 per token.
    "mixtral-8x7b": _llama(vocab_size=32000, context_length=32768, n_layers=32, n_heads=32, n_kv_heads=8,
                           d_model=4096, d_ff=14336, rope_theta=1e6, n_experts=8, experts_per_token=2,
                           routed_scale=1.0),
    "llama-small": _llama(vocab_size=32000, context_length=1024, n_layers=12, n_heads=12, n_kv_heads=4, d_model=768),
    "tiny": GPTConfig(vocab_size=512, context_length=128, n_layers=2, n_heads=4, d_model=64),
    "tiny-llama": _llama(vocab_size=512, context_length=128, n_layers=2, n_heads=4, n_kv_heads=2, d_model=64),
}


def preset(name: str, **overrides: Any) -> GPTConfig:
    """A named configuration, with any field overridden."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def from_depth(depth: int, vocab_size: int, context_length: int = 512, family: str = "gpt2") -> GPTConfig:
    """The single size dial: depth sets width (64 per layer), heads (64-wide) and everything else.

    Aspect ratio d_model / n_layers = 64 follows nanochat's rule of thumb for small models.
    """
    if depth < 1:
        raise ValueError("depth must be at least 1")
    d_model = 64 * depth
    n_heads = max(1, d_model // 64)
    if family == "llama":
        return _llama(
            vocab_size=vocab_size, context_length=context_length, n_layers=depth, n_heads=n_heads,
            n_kv_heads=max(1, n_heads // 2) if n_heads % 2 == 0 else n_heads, d_model=d_model,
            tie_embeddings=True,
        )
    return GPTConfig(
        vocab_size=vocab_size, context_length=context_length, n_layers=depth, n_heads=n_heads, d_model=d_model
    )


def suggested_lr(config: GPTConfig) -> float:
    """A peak AdamW learning rate for from-scratch training that shrinks with width.

    Scales as 1/sqrt(d_model) from 3e-3 at d_model=128 (a value that trains tiny models well on CPU) down
    to 1.2e-3 at GPT-2 small's width; never above 3e-3.
    """
    return min(3e-3, 3e-3 * math.sqrt(128 / config.d_model))
