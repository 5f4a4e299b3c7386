"""The back-of-the-envelope arithmetic of training and serving a transformer, as functions.

Everything here is computed from a `GPTConfig` in closed form (no model is built, so a 175B config
costs nothing):

- parameters by component, equal to `GPT(config).num_params()`;
- memory: weights, gradients, AdamW states, activations for a batch (Korthikanti et al. 2022), and the
  KV cache for inference (2 x layers x kv_heads x head_dim x tokens x bytes);
- compute: training FLOPs C = 6 N D (Kaplan et al. 2020: 2N per token forward, 4N backward) plus
  attention's 12 L H d_head T per token (PaLM, Chowdhery et al. 2022, appendix B);
- time and cost at a GPU's peak, a model-FLOPs utilisation (MFU) and a price per GPU-hour;
- Chinchilla-optimal allocation (Hoffmann et al. 2022): for compute C, tokens D ~= 20 N and
  C ~= 6 N D, hence N_opt = sqrt(C / 120) and D_opt = 20 N_opt;
- `size_for_budget`: the largest model (by the `from_depth` dial) that a time budget can train to
  its Chinchilla token count on a machine of measured throughput.

Worked examples it reproduces (tests/test_estimate.py): GPT-2 small has ~124M parameters; GPT-3
(175B) on 300B tokens needs 6ND ~= 3.1e23 FLOPs; LLaMA-7B's KV cache for 2,048 tokens in fp16 is ~1 GB;
Llama 3.1 405B's fp32 weights take ~1.6 TB and its training state alone ~6.5 TB (82 80-GB GPUs);
Mixtral 8x7B has ~46.7B parameters of which ~12.9B are active per token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from llmlab.model.config import GPTConfig, from_depth

CHINCHILLA_TOKENS_PER_PARAM = 20.0

BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


@dataclass(frozen=True)
class GPU:
    name: str
    peak_flops: float  # dense bf16/fp16 tensor-core FLOP/s (no sparsity), from the vendor's datasheet
    memory_gb: float
    price_per_hour: float  # rough on-demand cloud price in USD; pass your own with --price


GPUS = {
    "h200": GPU("NVIDIA H200 SXM", 989e12, 141, 3.50),
    "h100": GPU("NVIDIA H100 SXM", 989e12, 80, 2.50),
    "a100": GPU("NVIDIA A100 SXM", 312e12, 80, 1.50),
    "l4": GPU("NVIDIA L4", 121e12, 24, 0.70),
    "rtx4090": GPU("NVIDIA RTX 4090", 165e12, 24, 0.40),
    "v100": GPU("NVIDIA V100", 125e12, 32, 0.80),
    "t4": GPU("NVIDIA T4", 65e12, 16, 0.35),
}


# ---------------------------------------------------------------------------------------------------
# Parameters


def param_breakdown(config: GPTConfig) -> dict[str, int]:
    """Parameter count of each component; "total" equals `GPT(config).num_params()` (a tied head counts once)."""
    c = config
    d, L = c.d_model, c.n_layers
    bias = 1 if c.bias else 0
    q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    attention = d * (q_out + 2 * kv_out) + bias * (q_out + 2 * kv_out) + q_out * d + bias * d
    n_up = 2 * c.d_ff if c.activation == "swiglu" else c.d_ff
    mlp = d * n_up + bias * n_up + c.d_ff * d + bias * d
    if c.n_experts:  # E bias-free experts and a router; shared experts are one dense MLP n_shared times wider
        shared = c.n_shared_experts * (d * n_up + c.d_ff * d + bias * n_up) + (bias * d if c.n_shared_experts else 0)
        mlp = c.n_experts * c.expert_params + c.n_experts * d + shared
    # LayerNorm has a weight and (with bias) a bias; RMSNorm only a weight. Post-norm has no final norm.
    norm = d * (2 if c.norm == "layernorm" and c.bias else 1)
    parts = {
        "token embedding": c.vocab_size * d,
        "position embedding": c.context_length * d if c.positions == "learned" else 0,
        "attention": L * attention,
        "mlp": L * mlp,
        "norms": (2 * L + (1 if c.norm_placement == "pre" else 0)) * norm,
        "lm head": 0 if c.tie_embeddings else c.vocab_size * d,
    }
    parts["total"] = sum(parts.values())
    parts["non-embedding"] = parts["total"] - parts["token embedding"] - parts["position embedding"]
    # A token passes through k of the E routed experts: the parameters it actually uses.
    parts["active"] = parts["total"] - L * (c.n_experts - c.experts_per_token) * c.expert_params if c.n_experts else parts["total"]
    return parts


def matmul_params(config: GPTConfig) -> int:
    """N in C = 6ND: the weights every token is multiplied through (the head, tied or not, but not the
    embedding lookups, which cost no FLOPs; of a mixture of experts, only the k experts it visits)."""
    p = param_breakdown(config)
    inactive = p["total"] - p["active"]
    return p["non-embedding"] - p["lm head"] + config.vocab_size * config.d_model - inactive


# ---------------------------------------------------------------------------------------------------
# Compute


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6N plus attention's 12 * n_layers * n_heads * head_dim * seq_len
    (PaLM appendix B; the causal half is not subtracted). Same as `GPT.flops_per_token`."""
    T = config.context_length if seq_len is None else seq_len
    return 6 * matmul_params(config) + 12 * config.n_layers * config.n_heads * config.head_dim * T


def training_flops(config: GPTConfig, tokens: float, seq_len: int | None = None) -> dict[str, float]:
    """{"6ND": the textbook rule, "with_attention": 6ND plus the attention term} for `tokens` trained tokens."""
    return {"6ND": 6 * matmul_params(config) * tokens, "with_attention": flops_per_token(config, seq_len) * tokens}


def training_time(flops: float, peak_flops: float, mfu: float = 0.4, n_gpus: int = 1) -> float:
    """Seconds to do `flops` on `n_gpus` devices running at `mfu` of `peak_flops` each."""
    if not (0 < mfu <= 1):
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    return flops / (peak_flops * mfu * n_gpus)


def mfu(tokens_per_second: float, config: GPTConfig, peak_flops: float, seq_len: int | None = None) -> float:
    """Model FLOPs utilisation (PaLM): achieved training FLOP/s over the hardware's peak."""
    return tokens_per_second * flops_per_token(config, seq_len) / peak_flops


def chinchilla_optimal(compute: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> dict[str, float]:
    """Compute-optimal parameters and tokens for a budget of `compute` FLOPs (Hoffmann et al. 2022):
    D = r N with r ~= 20 and C = 6 N D, so N = sqrt(C / (6 r)) and D = r N."""
    n = math.sqrt(compute / (6 * tokens_per_param))
    return {"params": n, "tokens": tokens_per_param * n, "compute": compute}


# ---------------------------------------------------------------------------------------------------
# Memory


def kv_cache_bytes(config: GPTConfig, tokens: int, batch: int = 1, bytes_per_value: float = 2) -> float:
    """Keys and values of every layer for `tokens` positions: 2 * L * n_kv_heads * head_dim * tokens * batch."""
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * tokens * batch * bytes_per_value


def activation_bytes(
    config: GPTConfig, batch: int, seq_len: int, bytes_per_value: float = 2, flash_attention: bool = True,
    checkpointing: bool = False,
) -> float:
    """Activations autograd keeps for the backward pass of one micro-batch.

    Korthikanti et al. 2022 ("Reducing Activation Recomputation"), eq. 1: per layer
    s*b*h*(34 + 5*a*s/h) bytes with 16-bit values, where the 5as/h term is the s x s attention
    scores, softmax and dropout mask that flash attention does not store. Scaled by
    `bytes_per_value / 2` for other precisions; plus the logits and their gradient (b*s*V*4 bytes each
    in fp32, where the loss is computed). With `checkpointing` (full recomputation, section 4 of the
    same paper) each layer keeps only its input, s*b*h values, and one layer's activations exist again
    while it is recomputed. An estimate: frameworks differ by tens of percent.
    """
    s, b, h, a = seq_len, batch, config.d_model, config.n_heads
    per_layer = s * b * h * (34 + (0 if flash_attention else 5 * a * s / h)) * bytes_per_value / 2
    logits = 2 * b * s * config.vocab_size * 4
    if checkpointing:
        return config.n_layers * s * b * h * bytes_per_value + per_layer + logits
    return config.n_layers * per_layer + logits


def training_memory(
    config: GPTConfig, batch: int, seq_len: int, precision: str = "fp32", optimizer: str = "adamw"
) -> dict[str, float]:
    """Bytes of weights, gradients, optimizer states and activations for one training step.

    fp32: weights, grads and AdamW's m and v all fp32 (16 bytes per parameter). Mixed precision
    (bf16/fp16): 16-bit weights and grads plus fp32 master weights, m and v (2+2+12 = 16 bytes/param,
    as in ZeRO, Rajbhandari et al. 2020). SGD keeps no state (momentum would add one copy).
    """
    n = param_breakdown(config)["total"]
    width = BYTES[precision]
    mixed = width < 4
    states = {"adamw": 2, "adam": 2, "sgd": 0}[optimizer]
    out = {
        "weights": n * width,
        "gradients": n * width,
        "optimizer": n * 4 * (states + (1 if mixed and states else 0)),
        "activations": activation_bytes(config, batch, seq_len, bytes_per_value=width),
    }
    out["total"] = sum(out.values())
    return out


def gpus_to_hold(config: GPTConfig, gpu_memory_gb: float, precision: str = "bf16") -> dict[str, int]:
    """The fewest GPUs of `gpu_memory_gb` whose memory holds, split evenly between them:

    - "training_state": weights, gradients and AdamW states, 16 bytes per parameter, sharded as ZeRO-3
      / FSDP does (Rajbhandari et al. 2020). Activations and the framework's buffers come on top, so
      this is a floor, not a plan;
    - "inference": the weights alone in `precision` (the KV cache comes on top).
    A mixture of experts holds every expert, active or not."""
    n = param_breakdown(config)["total"]
    state = sum(v for k, v in training_memory(config, 1, 1, precision).items() if k in ("weights", "gradients", "optimizer"))
    capacity = gpu_memory_gb * 1e9
    return {"training_state": math.ceil(state / capacity), "inference": math.ceil(n * BYTES[precision] / capacity)}


# ---------------------------------------------------------------------------------------------------
# One report for a config (what `llmlab estimate` prints)


@dataclass
class Estimate:
    config: dict
    params: dict[str, int]
    batch: int
    seq_len: int
    precision: str
    memory: dict[str, float]
    inference_weights_bytes: float
    kv_cache: dict[str, float]
    flops_per_token: float
    tokens: float
    training_flops: dict[str, float]
    gpu: dict
    n_gpus: int
    mfu: float
    seconds: float
    cost: float
    chinchilla: dict[str, float] = field(default_factory=dict)
    gpus_to_hold: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(
    config: GPTConfig,
    batch: int = 8,
    seq_len: int | None = None,
    tokens: float | None = None,
    precision: str = "bf16",
    gpu: str | GPU = "h100",
    n_gpus: int = 1,
    mfu: float = 0.4,
    price_per_hour: float | None = None,
    kv_tokens: int | None = None,
    kv_batch: int = 1,
    compute_budget: float | None = None,
) -> Estimate:
    """All of the above for one config. `tokens` defaults to Chinchilla's 20 x parameters;
    `compute_budget` (FLOPs) defaults to the training run's own 6ND, for the Chinchilla comparison."""
    T = config.context_length if seq_len is None else seq_len
    params = param_breakdown(config)
    D = CHINCHILLA_TOKENS_PER_PARAM * params["total"] if tokens is None else tokens
    hw = GPUS[gpu.lower()] if isinstance(gpu, str) else gpu
    if price_per_hour is not None:
        hw = GPU(hw.name, hw.peak_flops, hw.memory_gb, price_per_hour)
    flops = training_flops(config, D, T)
    seconds = training_time(flops["with_attention"], hw.peak_flops, mfu, n_gpus)
    kv_len = T if kv_tokens is None else kv_tokens
    width = BYTES[precision]
    return Estimate(
        config=config.to_dict(), params=params, batch=batch, seq_len=T, precision=precision,
        memory=training_memory(config, batch, T, precision),
        inference_weights_bytes=params["total"] * width,
        kv_cache={"tokens": kv_len, "batch": kv_batch, "bytes": kv_cache_bytes(config, kv_len, kv_batch, width)},
        flops_per_token=flops_per_token(config, T), tokens=D, training_flops=flops, gpu=asdict(hw),
        n_gpus=n_gpus, mfu=mfu, seconds=seconds, cost=seconds / 3600 * n_gpus * hw.price_per_hour,
        chinchilla=chinchilla_optimal(compute_budget if compute_budget is not None else flops["6ND"]),
        gpus_to_hold=gpus_to_hold(config, hw.memory_gb, precision),
    )


# ---------------------------------------------------------------------------------------------------
# Sizing a model for a time budget


@dataclass
class BudgetPlan:
    """The model `size_for_budget` picked and what training it costs."""

    config: GPTConfig
    depth: int
    params: int
    tokens: int  # tokens to train on
    flops: float
    tokens_per_second: float
    seconds: float  # expected training time
    chinchilla: bool  # True if `tokens` reaches tokens_per_param x params

    def to_dict(self) -> dict:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return d


def size_for_budget(
    seconds: float,
    throughput: float | Callable[[GPTConfig], float],
    vocab_size: int,
    context_length: int = 512,
    family: str = "gpt2",
    tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
    max_depth: int = 48,
    seq_len: int | None = None,
) -> BudgetPlan:
    """The deepest `from_depth(depth, ...)` model that trains on `tokens_per_param` x its parameters
    within `seconds`, and the number of tokens to train it on.

    `throughput` is how fast this machine trains, either
      - a number: achieved training FLOP/s (e.g. measured tokens/s x `flops_per_token` of any model,
        i.e. peak x MFU), assumed the same for every size; or
      - a callable `config -> tokens/s` that measures (or models) each candidate's real speed, which
        on a CPU matters: small models reach a lower MFU. It is called for increasing depths and
        the search stops at the first depth that no longer fits, so it runs a few times, not max_depth.
    If even depth 1 cannot reach the Chinchilla count in time, depth 1 is returned with as many
    tokens as fit (`chinchilla=False`). Chinchilla's rule is for compute-optimal loss; a tiny CPU
    model trained on fewer tokens than 20/param is under-trained, not broken.
    """
    if seconds <= 0:
        raise ValueError("the time budget must be positive")

    def plan(depth: int) -> BudgetPlan:
        config = from_depth(depth, vocab_size, context_length, family)
        n = param_breakdown(config)["total"]
        fpt = flops_per_token(config, seq_len)
        tps = throughput(config) if callable(throughput) else throughput / fpt
        affordable = int(tps * seconds)
        needed = int(math.ceil(tokens_per_param * n))
        tokens = min(needed, affordable)
        return BudgetPlan(config, depth, n, tokens, fpt * tokens, tps, tokens / tps, affordable >= needed)

    best = plan(1)
    for depth in range(2, max_depth + 1):
        candidate = plan(depth)
        if not candidate.chinchilla:
            break
        best = candidate
    return best
