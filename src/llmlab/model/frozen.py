"""Frozen weights stored in fewer bytes than the model computes in (QLoRA's storage vs computation dtype).

QLoRA (Dettmers et al. 2023) stores what it does not train as compactly as it can and expands a weight
to the computation dtype only where it is used. `frozen_linear` is that use for a matrix: the weight is
expanded in the forward pass and expanded again in the backward pass, so between the two autograd keeps
the stored form (4-bit codes, bf16), not an expanded fp32 copy of every matrix. `CastEmbedding` and
`CastLinear` hold a frozen embedding table or head in a narrower float dtype and compute in the model's.
Their `state_dict()` gives the weights back in the computation dtype, so checkpoints look as they always do.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class _FrozenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, expand, *stored):
        ctx.expand = expand
        ctx.save_for_backward(*stored)
        return F.linear(x, _weight(expand, stored, x.dtype))

    @staticmethod
    def backward(ctx, grad):
        # y = x W^T: dL/dx = g W. The frozen W gets no gradient, so x itself was never needed.
        stored = ctx.saved_tensors
        return grad @ _weight(ctx.expand, stored, grad.dtype), None, *(None for _ in stored)


def _weight(expand: Callable[..., torch.Tensor] | None, stored: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    return (stored[0] if expand is None else expand(*stored)).to(dtype)


def frozen_linear(x: torch.Tensor, *stored: torch.Tensor, expand: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """x W^T for a frozen W = `expand(*stored)` (`stored[0]` itself without `expand`), cast to x's dtype.

    Only x gets a gradient; for it the backward pass rebuilds W from `stored` instead of keeping W."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _FrozenLinear.apply(x, expand, *stored)
    return F.linear(x, _weight(expand, stored, x.dtype))


def _compute_dtype_state(module: CastEmbedding | CastLinear, state: dict, prefix: str, local_metadata: Any) -> None:
    state[prefix + "weight"] = state[prefix + "weight"].to(module.compute_dtype)


class CastEmbedding(nn.Embedding):
    """A frozen embedding table held in `weight`'s (narrow) dtype; looked-up rows come out in `compute_dtype`."""

    def __init__(self, weight: torch.Tensor, compute_dtype: torch.dtype) -> None:
        super().__init__(*weight.shape, _weight=weight.detach(), _freeze=True, device=weight.device, dtype=weight.dtype)
        self.compute_dtype = compute_dtype
        self.register_state_dict_post_hook(_compute_dtype_state)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx).to(self.compute_dtype)


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model's activations (and so its KV cache) are in: its first parameter's, unless that is
    a token embedding held narrower than the model computes (QLoRA's bf16 table in an fp32 model)."""
    embedding = getattr(model, "tok_emb", None)
    return embedding.compute_dtype if isinstance(embedding, CastEmbedding) else next(model.parameters()).dtype


class CastLinear(nn.Linear):
    """A frozen bias-free linear layer (a head) whose `weight` is held narrow and cast to x's dtype at use.

    The weight may be a `CastEmbedding`'s, so a tied head stays one tensor with the embedding."""

    def __init__(self, weight: nn.Parameter, compute_dtype: torch.dtype) -> None:
        nn.Module.__init__(self)  # adopt the tensor instead of allocating a new one
        self.out_features, self.in_features = weight.shape
        self.weight, self.bias = weight, None
        self.compute_dtype = compute_dtype
        self.register_state_dict_post_hook(_compute_dtype_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return frozen_linear(x, self.weight)
