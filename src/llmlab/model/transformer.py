"""A decoder-only transformer, written the way the papers describe it.

    tokens -> token embedding (+ learned/sinusoidal positions)
           -> N x Block [ norm -> causal self-attention (RoPE, GQA) -> +residual
                          norm -> MLP (GELU/ReLU or SwiGLU)          -> +residual ]
           -> final norm -> linear head (tied to the embedding or not) -> logits

Every variant is a field of `GPTConfig`. This file does no I/O; checkpoints live in `llmlab.model.checkpoint`.

RoPE, RMSNorm, SwiGLU and the loss are written here as plain PyTorch expressions, the way the papers
give them; that is what runs under `torch.compile` (one graph: the compiler fuses them itself) and on a
GPU. `llmlab.model.fused` holds hand-written backward passes of the same functions that pay in eager
mode on a CPU (benchmarks/model.py), and `use_fused` picks them there; tests hold the two paths equal.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from llmlab.model.config import GPTConfig
from llmlab.model import fused
from llmlab.model.frozen import CastLinear, compute_dtype

# Whether eager CPU runs use llmlab.model.fused; False runs the plain expressions everywhere.
FUSED_ON_CPU = True


def use_fused(x: torch.Tensor) -> bool:
    """The hand-written kernels for `x`: on a CPU in eager mode only. A compiled graph fuses the plain
    expressions itself (and cannot trace the kernels' writes into strided buffers without breaking)."""
    return FUSED_ON_CPU and not torch.compiler.is_compiling() and x.is_cpu


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """w * x / sqrt(mean(x^2) + eps), normalised in fp32 and cast back to x's dtype as Llama does."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i + D/2}) of the last dim by its position's angle (RoPE, Su et al. 2021,
    in Llama's half-split layout): (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def split_heads(
    qkv: torch.Tensor, n_heads: int, n_kv_heads: int, rope: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (B, H, T, D), keys and values (B, K, T, D) from the fused projection's (B, T, H + 2K, D),
    RoPE applied to queries and keys."""
    if use_fused(qkv):
        return fused.split_heads(qkv, n_heads, n_kv_heads, rope)
    q, k, v = qkv.transpose(1, 2).split([n_heads, n_kv_heads, n_kv_heads], dim=1)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    return q, k, v


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for h = [gate; up] on the last dim (Shazeer, 2020)."""
    if use_fused(h):
        return fused.swiglu(h)
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019): w * x / sqrt(mean(x^2) + eps), LayerNorm without
    re-centring or bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused(x):
            return fused.rms_norm(x, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero a fraction p of x during training (rescaling the rest); p = 0 (inference, most pretraining)
    costs no call at all, which matters when decoding one token at a time."""
    return F.dropout(x, p) if p > 0 else x


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """Fixed positions of "Attention Is All You Need": sin on even, cos on odd dims, wavelengths up to 10000*2pi."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]
    return table


def rope_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim / 2) of RoPE's angles (Su et al., 2021): position p turns the pair
    (x_i, x_{i + head_dim/2}) by p * theta^(-2i / head_dim), the half-split layout Llama uses."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


class KVCache:
    """Keys and values of the positions seen so far, preallocated for `max_len` positions.

    The model writes each layer's new keys/values with `update` and advances `length` once per forward.
    Inference code may `reorder` the batch (beam search) or `truncate` it (speculative decoding).
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (config.n_layers, batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = k.size(2)
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.length + n} were needed")
        keys, values = self.k[layer], self.v[layer]  # narrow/copy_ on these, not a 4-d setitem: ~5x less Python
        keys.narrow(2, self.length, n).copy_(k)
        values.narrow(2, self.length, n).copy_(v)
        return keys.narrow(2, 0, self.length + n), values.narrow(2, 0, self.length + n)

    def advance(self, n: int) -> None:
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (rejected draft tokens in speculative decoding)."""
        self.length = min(self.length, length)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (with repeats), e.g. the surviving beams."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)


class CausalSelfAttention(nn.Module):
    """Multi-head attention where each position sees itself and the past; n_kv_heads < n_heads is GQA."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.dropout = config.dropout
        # Queries, keys and values from one fused matrix: (n_heads + 2 * n_kv_heads) * head_dim outputs.
        self.qkv = nn.Linear(config.d_model, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=config.bias)
        self.proj = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=config.bias)
        self.proj.residual_projection = True

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        kv_cache: KVCache | None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, _ = x.shape
        H, K = self.n_heads, self.n_kv_heads
        q, k, v = split_heads(self.qkv(x).view(B, T, H + 2 * K, self.head_dim), H, K, rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        # mask is None exactly when plain causal masking over these T positions is right.
        is_causal = mask is None and T > 1
        if return_weights:
            y, weights = self._explicit_attention(q, k, v, mask)
        else:
            weights = None
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.proj(y), weights

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(QK^T / sqrt(d)) V written out, to return the weights for visualisation."""
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        T, S = q.size(2), k.size(2)
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        return weights @ v, weights


def activate(h: torch.Tensor, activation: str) -> torch.Tensor:
    """The MLP's non-linearity; for SwiGLU, h holds [gate; up] and the result is half as wide."""
    if activation == "swiglu":
        return swiglu(h)  # silu(gate) * up
    if activation == "gelu_tanh":
        return F.gelu(h, approximate="tanh")  # GPT-2's "gelu_new"
    if activation == "gelu":
        return F.gelu(h)
    return F.relu(h)


class MLP(nn.Module):
    """Position-wise feed-forward: down(act(up(x))), or down(silu(gate(x)) * up(x)) for SwiGLU."""

    def __init__(self, config: GPTConfig, d_ff: int | None = None) -> None:
        super().__init__()
        self.activation = config.activation
        d_ff = d_ff or config.d_ff
        n_up = 2 * d_ff if config.activation == "swiglu" else d_ff
        self.up = nn.Linear(config.d_model, n_up, bias=config.bias)  # SwiGLU: [gate; up] fused
        self.down = nn.Linear(d_ff, config.d_model, bias=config.bias)
        self.down.residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(activate(self.up(x), self.activation))


def load_balancing_loss(probs: torch.Tensor, chosen: torch.Tensor, n_experts: int) -> torch.Tensor:
    """E * sum_i f_i * P_i (Switch Transformer, Fedus et al. 2021, eq. 4): f_i is the fraction of the
    routing choices that went to expert i, P_i the router's mean probability for it. 1 when the load is
    even, up to E when everything goes to one expert; only P carries a gradient."""
    f = F.one_hot(chosen, n_experts).float().mean(dim=(0, 1))
    return n_experts * (f * probs.mean(0)).sum()


class MoE(nn.Module):
    """A mixture of experts in place of the MLP (Shazeer et al. 2017; Mixtral, Jiang et al. 2024): a
    linear router scores the E experts for each token, the token goes through the k best, and their
    outputs are summed with the router's softmax probabilities renormalised over those k, times
    `routed_output_scale` (k by default: 1 is Mixtral's sum, which halves a top-2 layer's output against a
    dense MLP as wide as the two experts, and trains worse). Shared experts (DeepSeekMoE) are one dense
    MLP every token also passes through.

    Training adds the load-balancing loss (`aux_loss`, read by `GPT.forward`), may jitter the router's
    input and, with `capacity_factor`, drops a token's visit to an expert that is full (the residual
    connection carries the token on). Inference never drops."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        E, d, f = config.n_experts, config.d_model, config.d_ff
        self.activation, self.k = config.activation, config.experts_per_token
        self.jitter, self.capacity_factor = config.router_jitter, config.capacity_factor
        self.scale = config.routed_output_scale
        self.router = nn.Linear(d, E, bias=False)
        self.experts_up = nn.Parameter(torch.empty(E, 2 * f if config.activation == "swiglu" else f, d))
        self.experts_down = nn.Parameter(torch.empty(E, d, f))
        self.shared = MLP(config, d_ff=f * config.n_shared_experts) if config.n_shared_experts else None
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        scored = flat  # jitter perturbs what the router sees, never what the experts compute on (Switch)
        if self.training and self.jitter > 0:
            scored = flat * torch.empty_like(flat).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        probs = self.router(scored).float().softmax(dim=-1)  # (N, E)
        weights, chosen = probs.topk(self.k, dim=-1)  # (N, k)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.scale != 1.0:
            weights = weights * self.scale
        self.aux_loss = load_balancing_loss(probs, chosen, probs.size(-1)) if self.training else None
        capacity = None
        if self.training and self.capacity_factor > 0:
            capacity = max(1, math.ceil(self.capacity_factor * self.k * flat.size(0) / probs.size(-1)))
        out = torch.zeros_like(flat)
        for e in range(self.experts_up.size(0)):
            token, slot = torch.where(chosen == e)  # in token order: a full expert keeps the earliest
            if capacity is not None:
                token, slot = token[:capacity], slot[:capacity]
            h = activate(F.linear(flat[token], self.experts_up[e]), self.activation)
            y = F.linear(h, self.experts_down[e]) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view_as(x)


def plain_head(head: nn.Module) -> bool:
    """Whether `head(x)` is exactly x @ head.weight^T (in x's dtype), so the loss may fuse it: a LoRA or
    quantized head computes something else."""
    return type(head) in (nn.Linear, CastLinear)


class Block(nn.Module):
    """One transformer layer: attention then MLP, each wrapped in a residual connection and a norm."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.attn_norm = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.mlp_norm = make_norm(config)
        self.mlp = MoE(config) if config.n_experts else MLP(config)
        self.p_drop = config.dropout

    def forward(self, x, rope, mask, kv_cache, return_weights=False):
        p = self.p_drop if self.training else 0.0
        if self.pre_norm:
            a, w = self.attn(self.attn_norm(x), rope, mask, kv_cache, return_weights)
            x = x + dropout(a, p)
            x = x + dropout(self.mlp(self.mlp_norm(x)), p)
        else:  # post-norm: Add & Norm after each sub-layer, as in the original Transformer
            a, w = self.attn(x, rope, mask, kv_cache, return_weights)
            x = self.attn_norm(x + dropout(a, p))
            x = self.mlp_norm(x + dropout(self.mlp(x), p))
        return x, w


class GPT(nn.Module):
    """The language model: token ids in, next-token logits out."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.context_length, config.d_model)
        elif config.positions == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(config.context_length, config.d_model), persistent=False)
        elif config.positions == "rope":
            cos, sin = rope_tables(config.context_length, config.head_dim, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.final_norm = make_norm(config) if config.norm_placement == "pre" else nn.Identity()
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # One number per position read off the same final states (Ouyang et al., 2022): a reward model
        # scores a whole answer at its last token; PPO's critic estimates the return from each token on.
        self.value_head = nn.Linear(config.d_model, 1) if config.value_head else None
        # Recompute each block's activations in the backward pass instead of keeping them (Chen et al.
        # 2016): a training option, not architecture, so it is an attribute and not a config field.
        self.activation_checkpointing = False
        if not self.tok_emb.weight.is_meta:  # a model built on the meta device gets its weights loaded
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * n_layers)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                s = std / math.sqrt(2 * self.config.n_layers) if getattr(module, "residual_projection", False) else std
                nn.init.normal_(module.weight, mean=0.0, std=s)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, MoE):
                nn.init.normal_(module.experts_up, mean=0.0, std=std)
                nn.init.normal_(module.experts_down, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers))
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters counted once (a tied head is the embedding); optionally without embedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.config.positions == "learned":
                n -= self.pos_emb.weight.numel()
        return n

    def add_value_head(self) -> None:
        """Give a language model a freshly initialised scalar head (a no-op when it has one)."""
        if self.value_head is None:
            self.config.value_head = True
            device = self.lm_head.weight.device
            self.value_head = nn.Linear(self.config.d_model, 1, device=device, dtype=compute_dtype(self))
            nn.init.normal_(self.value_head.weight, mean=0.0, std=self.config.init_std)
            nn.init.zeros_(self.value_head.bias)

    def flops_per_token(self, seq_len: int | None = None, head: bool = True) -> int:
        """Training FLOPs per token: 6N for the weights' matmuls (forward 2N, backward 4N) plus attention.

        N counts every matrix a token passes through (embedding lookups are free, the head is not);
        attention adds 6 * 2 * n_layers * n_heads * head_dim * seq_len (QK^T and AV, Kaplan et al. 2020 /
        PaLM appendix B), with the full context as seq_len unless given. `head=False` leaves out the
        head's 6 * V * d: a position without a target (SFT prompt, padding) never reaches the head.
        """
        c = self.config
        T = c.context_length if seq_len is None else seq_len
        # The head's V x d matmul: already among the non-embedding parameters when untied, not when tied.
        n_matmul = self.num_params(exclude_embeddings=True) + (c.vocab_size * c.d_model if c.tie_embeddings else 0)
        if not head:
            n_matmul -= c.vocab_size * c.d_model
        if c.n_experts:  # a token passes through k of the E routed experts
            n_matmul -= c.n_layers * (c.n_experts - c.experts_per_token) * c.expert_params
        return 6 * n_matmul + 12 * c.n_layers * c.n_heads * c.head_dim * T

    def router_balance_loss(self) -> torch.Tensor:
        """The mixture-of-experts layers' mean load-balancing loss from the last training forward pass."""
        return torch.stack([block.mlp.aux_loss for block in self.blocks]).mean()

    def _mask(
        self, T: int, offset: int, attention_mask: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor | None:
        """Boolean (B|1, 1, T, S) mask of which keys each query may see; None when plain causal suffices."""
        # Without padding, a fresh sequence needs only causal masking and one new token sees every key.
        if attention_mask is None and (offset == 0 or T == 1):
            return None
        S = offset + T
        q_pos = torch.arange(offset, S, device=device)[:, None]
        k_pos = torch.arange(S, device=device)[None, :]
        allowed = k_pos <= q_pos  # (T, S)
        if attention_mask is None:
            return allowed[None, None]
        key_ok = attention_mask[:, None, None, :S].bool()
        # A padded query would see no key at all (NaN); let it see itself. Its output is never used.
        return (allowed[None, None] & key_ok) | (k_pos == q_pos)[None, None]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_attention: bool = False,
        return_values: bool = False,
        detach_values: bool = False,
        logits_at: torch.Tensor | None = None,
    ):
        """(logits, None): logits (B, T, V) for every position of `idx` (B, T); or, given `targets`,
        (None, loss): the mean next-token cross-entropy, computed without building the logits.

        `targets` equal to -100 are ignored (prompt tokens in SFT, padding). With a `kv_cache`, `idx`
        holds only the new tokens. `position_ids` (B, T) and a key `attention_mask` (B, S) of 1 for real
        tokens and 0 for padding serve left-padded batches. With `return_attention`, returns
        (logits, loss, weights) where weights is a list of (B, n_heads, T, S) tensors, one per layer.
        With `return_values` (a model with a value head), the value head's (B, T) outputs come after the
        loss: (logits, loss, values[, weights]); `detach_values` stops the value loss's gradient at the
        head, so a critic sharing the trunk learns without moving the language model under it.
        `logits_at`, a (B, T) bool mask, computes the logits at those positions only, as (N, V) in
        row-major order: RL scores a few answer tokens, and the head is a large part of a small model's work.
        """
        x, weights = self.hidden_states(idx, kv_cache, position_ids, attention_mask, return_attention)
        logits = loss = None
        if targets is None:
            logits = self.lm_head(x if logits_at is None else x[logits_at])
        elif use_fused(x) and plain_head(self.lm_head):  # never build the (B, T, V) logits
            loss = fused.linear_cross_entropy(x.reshape(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1))
        else:  # mean -log p(target) over the targets that are not -100, from fp32 logits
            full = self.lm_head(x).float()
            cross_entropy = fused.cross_entropy if use_fused(x) else F.cross_entropy
            loss = cross_entropy(full.view(-1, full.size(-1)), targets.reshape(-1), ignore_index=-100)
        if loss is not None and self.training and self.config.n_experts and self.config.router_aux_loss:
            loss = loss + self.config.router_aux_loss * self.router_balance_loss()
        out = (logits, loss)
        if return_values:
            if self.value_head is None:
                raise ValueError("this model has no value head (GPTConfig.value_head is False)")
            out += (self.value_head(x.detach() if detach_values else x).squeeze(-1),)
        if return_attention:
            out += (weights,)
        return out

    def hidden_states(
        self,
        idx: torch.Tensor,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Everything before the head: the final-normed states (B, T, d_model) and each layer's
        attention weights (None unless `return_attention`). Arguments as in `forward`."""
        T = idx.size(1)
        offset = kv_cache.length if kv_cache is not None else 0
        if offset + T > self.config.context_length:
            raise ValueError(
                f"sequence of {offset + T} tokens exceeds the context window of {self.config.context_length}"
            )
        default_positions = position_ids is None  # offset, offset + 1, ... for every row: slice, don't gather
        x = self.tok_emb(idx)
        if self.config.positions == "learned":
            x = x + (self.pos_emb.weight[offset : offset + T] if default_positions else self.pos_emb(position_ids))
        elif self.config.positions == "sinusoidal":
            table = self.pos_table[offset : offset + T] if default_positions else self.pos_table[position_ids]
            x = x + table.to(x.dtype)
        rope = None
        if self.config.positions == "rope":  # (T, D/2) tables for the default positions, else (B, 1, T, D/2)
            if default_positions:
                rope = (self.rope_cos[offset : offset + T], self.rope_sin[offset : offset + T])
            else:
                rope = (self.rope_cos[position_ids][:, None], self.rope_sin[position_ids][:, None])
        x = dropout(x, self.config.dropout if self.training else 0.0)
        mask = self._mask(T, offset, attention_mask, idx.device)
        weights = []
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for block in self.blocks:
            if recompute:  # keeps only the block's input; dropout masks are redrawn identically (RNG state saved)
                x, w = torch.utils.checkpoint.checkpoint(block, x, rope, mask, None, return_attention, use_reentrant=False)
            else:
                x, w = block(x, rope, mask, kv_cache, return_attention)
            weights.append(w)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.final_norm(x), weights
