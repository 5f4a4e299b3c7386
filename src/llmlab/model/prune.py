"""Pruning: take out the weights a trained model needs least.

- `magnitude_prune`: zero the fraction of weights with the smallest |w| (Han et al. 2015), over all the
  blocks' matrices at once ("global") or each matrix on its own ("layer"). The embeddings, norms and
  output head are left whole, as is usual. The zeros stay in dense tensors: the model is no smaller
  and no faster on dense hardware, only sparser.
- `wanda_prune`: the same with each weight scored by |w| times the norm of the input feature it
  multiplies, measured on calibration text, and compared within its output row (Wanda, Sun et al.
  2023): a small weight on a large activation matters more than its size says.
- `sparsegpt_prune`: the same per-row sparsity, but each matrix's surviving weights are corrected for
  what was removed (SparseGPT, Frantar & Alistarh 2023): with H = X^T X of the layer's calibration
  inputs, zeroing w_q and moving the rest by -w_q / [H^-1]_qq * [H^-1]_q,: (Optimal Brain Surgeon) keeps
  the layer's output X W^T as close as a least-squares step can. Columns go left to right in blocks; the
  mask of a block is chosen by w^2 / [H^-1]_qq^2 just before the block is processed.
- `prune_neurons`: remove the same number of hidden units from every MLP (structured pruning), those
  whose output column is smallest, times their activation's norm on calibration text when given (else
  times the norm of their input weights). The result is a smaller model: `d_ff` shrinks, so the
  checkpoint is smaller and every token costs fewer FLOPs.
- `prune_heads`: remove the same number of attention heads from every layer (Michel et al. 2019),
  scored like neurons by their output projection columns (and their outputs' norm when calibrated);
  with grouped-query attention a key/value head goes with its whole group of query heads. `n_heads`
  (and `n_kv_heads`) shrink, `head_dim` stays.

`hold_zeros` keeps an unstructured model's zeros exactly zero through a recovery fine-tune.

Each returns what it did; the structured ones return a new model and leave the given one untouched.
`input_norms` and `input_grams` collect the calibration statistics: for every linear layer in the
blocks, the L2 norm of each input feature over the calibration tokens, or the whole X^T X. (Experts of a mixture are not linear layers: Wanda
leaves them dense.)
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn

from llmlab.model.checkpoint import model_from_state_dict
from llmlab.model.transformer import GPT


def block_matrices(model: GPT) -> list[tuple[str, torch.Tensor]]:
    """The weight matrices inside the transformer blocks (attention and MLP, experts included)."""
    return [(name, p) for name, p in model.blocks.named_parameters() if p.dim() >= 2]


@torch.no_grad()
def _sum_over_inputs(model: GPT, batches: Iterable[torch.Tensor], statistic) -> dict[str, torch.Tensor]:
    """{"<layer>.attn.qkv": sum of statistic(x) over the batches}, x the (tokens, in_features) inputs of
    every nn.Linear inside the blocks during forward passes over `batches` of token ids."""
    totals: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].size(-1))
            totals[name] = totals.get(name, 0) + statistic(x)
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.blocks.named_modules()
             if isinstance(m, nn.Linear)]
    training = model.training
    try:
        model.eval()
        for ids in batches:
            model(ids)
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    return totals


def input_norms(model: GPT, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"<layer>.attn.qkv": (in_features,), ...}: each input feature's L2 norm over the calibration
    tokens, for every nn.Linear inside the blocks, from forward passes over `batches` of token ids."""
    squares = _sum_over_inputs(model, batches, lambda x: x.pow(2).sum(0))
    return {name: total.sqrt() for name, total in squares.items()}


def input_grams(model: GPT, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"<layer>.attn.qkv": (in_features, in_features), ...}: X^T X of each linear layer's calibration
    inputs (the Hessian of its squared output error, up to a factor 2), for `sparsegpt_prune`."""
    return _sum_over_inputs(model, batches, lambda x: x.T @ x)


def _unstructured(model: GPT, sparsity: float, prune_matrix) -> dict[str, float]:
    """Run `prune_matrix(name, weight)` (in place) on every linear layer in the blocks; each matrix's
    resulting sparsity (and "all")."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity} must lie in [0, 1)")
    out, zeros, total = {}, 0, 0
    for name, module in model.blocks.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        w = module.weight
        prune_matrix(name, w)
        out[name + ".weight"] = (w == 0).float().mean().item()
        zeros, total = zeros + int((w == 0).sum()), total + w.numel()
    out["all"] = zeros / max(1, total)
    return out


@torch.no_grad()
def wanda_prune(model: GPT, sparsity: float, norms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Zero, in every output row of every linear layer in the blocks, the `sparsity` fraction of weights
    with the smallest |w_ij| * ||x_j|| (Wanda); returns each matrix's sparsity (and "all")."""
    def prune_matrix(name: str, w: torch.Tensor) -> None:
        k = int(sparsity * w.size(1))
        if k:
            score = w.abs().float() * norms[name][None, :]
            w.scatter_(1, score.topk(k, dim=1, largest=False).indices, 0.0)

    return _unstructured(model, sparsity, prune_matrix)


@torch.no_grad()
def sparsegpt_matrix(weight: torch.Tensor, gram: torch.Tensor, sparsity: float, block: int = 128,
                     damp: float = 0.01) -> torch.Tensor:
    """`weight` (out, in) with `sparsity` of every row zeroed and the rest updated to keep X W^T close,
    given gram = X^T X (SparseGPT). `damp` times the mean diagonal is added to H for stability."""
    W = weight.detach().float().clone()
    H = gram.float().clone()
    dead = H.diagonal() == 0  # inputs that were never nonzero: their weights cannot matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * H.diagonal().mean())
    # The upper Cholesky factor of H^-1: row q holds the OBS update for column q given that the columns
    # before it are already fixed, so one left-to-right sweep needs no re-inversion.
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    cols = W.size(1)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        W1, Hinv1 = W[:, start:end], Hinv[start:end, start:end]
        d = Hinv1.diagonal()
        k = int(sparsity * (end - start))
        mask = torch.zeros_like(W1, dtype=torch.bool)
        if k:
            loss = W1.pow(2) / d.pow(2)  # the OBS error of zeroing each weight
            mask.scatter_(1, loss.topk(k, dim=1, largest=False).indices, True)
        errors = torch.zeros_like(W1)
        for i in range(end - start):
            w = W1[:, i]
            q = torch.where(mask[:, i], 0.0, w)
            err = (w - q) / d[i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            W1[:, i] = q  # exactly zero where pruned, not w - err * d rounded
            errors[:, i] = err
        W[:, end:] -= errors @ Hinv[start:end, end:]
    return W.to(weight.dtype)


@torch.no_grad()
def sparsegpt_prune(model: GPT, sparsity: float, grams: dict[str, torch.Tensor], block: int = 128) -> dict[str, float]:
    """SparseGPT on every linear layer in the blocks, each from the dense model's calibration inputs
    (`grams` from `input_grams`), in place; returns each matrix's sparsity (and "all")."""
    return _unstructured(model, sparsity,
                         lambda name, w: w.copy_(sparsegpt_matrix(w, grams[name], sparsity, block)))


def hold_zeros(model: nn.Module, optimizer: torch.optim.Optimizer):
    """Keep the exact zeros of the blocks' matrices zero through `optimizer`'s steps (a masked recovery
    fine-tune of an unstructured-pruned model); returns the hook handle (`.remove()` ends it)."""
    masks = [(p, p == 0) for _, p in block_matrices(model)]

    @torch.no_grad()
    def rezero(*_) -> None:
        for p, zero in masks:
            p.masked_fill_(zero, 0.0)

    return optimizer.register_step_post_hook(rezero)


@torch.no_grad()
def magnitude_prune(model: GPT, sparsity: float, scope: str = "global") -> dict[str, float]:
    """Zero the `sparsity` fraction of smallest-magnitude block weights in place; returns each matrix's
    resulting sparsity (and "all")."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity} must lie in [0, 1)")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope={scope!r}; choose global or layer")
    matrices = block_matrices(model)
    if scope == "global":
        magnitudes = torch.cat([p.detach().abs().flatten().float() for _, p in matrices])
        k = int(sparsity * magnitudes.numel())
        threshold = magnitudes.kthvalue(k).values if k else None
    out = {}
    for name, p in matrices:
        if scope == "layer":
            k = int(sparsity * p.numel())
            threshold = p.abs().flatten().float().kthvalue(k).values if k else None
        if threshold is not None:
            p.masked_fill_(p.abs() <= threshold, 0.0)
        out[name] = (p == 0).float().mean().item()
    zeros = sum(out[name] * p.numel() for name, p in matrices)
    out["all"] = zeros / sum(p.numel() for _, p in matrices)
    return out


def _rebuilt(model: GPT, state: dict[str, torch.Tensor], **changes) -> GPT:
    """A new model of the changed config holding `state`, on the old model's device and in its mode."""
    weight = model.tok_emb.weight
    smaller = model_from_state_dict(model.config.replace(**changes), state, device=weight.device)
    return smaller.train(model.training)


@torch.no_grad()
def prune_neurons(model: GPT, fraction: float, norms: dict[str, torch.Tensor] | None = None) -> tuple[GPT, dict[str, Any]]:
    """A copy of `model` with `fraction` of each MLP's hidden units removed: the lowest ||w_out|| times
    the unit's activation norm on calibration text (`norms` from `input_norms`), or without it times
    ||w_in|| (the unit's rows of `up`, both halves for SwiGLU)."""
    config = model.config
    if config.n_experts:
        raise ValueError("neuron pruning of mixture-of-experts layers is not supported")
    keep = config.d_ff - int(fraction * config.d_ff)
    if not 0.0 <= fraction < 1.0 or keep < 1:
        raise ValueError(f"fraction={fraction} must leave at least one of the {config.d_ff} units")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    swiglu = config.activation == "swiglu"
    kept_per_layer = []
    for i, block in enumerate(model.blocks):
        up, down = block.mlp.up, block.mlp.down
        if norms is not None:
            strength = norms[f"{i}.mlp.down"]  # the units' activations are the down projection's input
        else:
            rows = up.weight.view(2, config.d_ff, -1) if swiglu else up.weight[None]  # [gate; up] halves
            strength = rows.float().norm(dim=-1).prod(0)
        score = strength * down.weight.float().norm(dim=0)
        kept = score.topk(keep).indices.sort().values
        kept_per_layer.append(kept.tolist())
        index = torch.cat([kept, kept + config.d_ff]) if swiglu else kept
        prefix = f"blocks.{i}.mlp."
        state[prefix + "up.weight"] = up.weight[index].clone()
        state[prefix + "down.weight"] = down.weight[:, kept].clone()
        if up.bias is not None:
            state[prefix + "up.bias"] = up.bias[index].clone()
    return _rebuilt(model, state, d_ff=keep), {"d_ff": config.d_ff, "kept": keep, "kept_per_layer": kept_per_layer}


@torch.no_grad()
def prune_heads(model: GPT, fraction: float, norms: dict[str, torch.Tensor] | None = None) -> tuple[GPT, dict[str, Any]]:
    """A copy of `model` with `fraction` of each layer's attention heads removed: the lowest norm of
    their output-projection columns, each column times its input's norm on calibration text when
    `norms` is given (under GQA, whole key/value groups go)."""
    c = model.config
    group = c.n_heads // c.n_kv_heads  # query heads per key/value head
    units = c.n_kv_heads if group > 1 else c.n_heads  # what is removed: groups under GQA, heads under MHA
    keep = units - int(fraction * units)
    if not 0.0 <= fraction < 1.0 or keep < 1:
        raise ValueError(f"fraction={fraction} must leave at least one of the {units} heads or groups")
    D = c.head_dim
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kept_per_layer = []
    for i, block in enumerate(model.blocks):
        attn = block.attn
        columns = attn.proj.weight.float().norm(dim=0)  # one per input feature: head h owns [h * D, (h + 1) * D)
        if norms is not None:
            columns = columns * norms[f"{i}.attn.proj"]
        per_head = columns.view(c.n_heads, D).norm(dim=-1)
        score = per_head.view(units, -1).sum(-1) if group > 1 else per_head
        kept = score.topk(keep).indices.sort().values
        q_heads = (kept[:, None] * group + torch.arange(group)).flatten() if group > 1 else kept
        kv_heads = kept  # under MHA each query head has its own key/value head
        kept_per_layer.append(q_heads.tolist())
        rows = lambda heads, offset: (offset + heads[:, None] * D + torch.arange(D)).flatten()  # noqa: E731
        q_rows = rows(q_heads, 0)
        k_rows, v_rows = rows(kv_heads, c.n_heads * D), rows(kv_heads, c.n_heads * D + c.n_kv_heads * D)
        qkv_index = torch.cat([q_rows, k_rows, v_rows])
        prefix = f"blocks.{i}.attn."
        state[prefix + "qkv.weight"] = attn.qkv.weight[qkv_index].clone()
        if attn.qkv.bias is not None:
            state[prefix + "qkv.bias"] = attn.qkv.bias[qkv_index].clone()
        state[prefix + "proj.weight"] = attn.proj.weight[:, q_rows].clone()
    n_heads = len(q_heads)
    n_kv = keep if group > 1 else n_heads
    pruned = _rebuilt(model, state, n_heads=n_heads, n_kv_heads=n_kv, head_dim=D)
    return pruned, {"n_heads": c.n_heads, "kept_heads": n_heads, "n_kv_heads": c.n_kv_heads, "kept_kv_heads": n_kv,
                    "kept_per_layer": kept_per_layer}


def sparsity(model: nn.Module) -> float:
    """The fraction of exact zeros among the blocks' matrices."""
    matrices = block_matrices(model)
    return sum(int((p == 0).sum()) for _, p in matrices) / max(1, sum(p.numel() for _, p in matrices))

