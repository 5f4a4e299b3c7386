"""4-bit NormalFloat (NF4) storage of a frozen linear layer: QLoRA's base (Dettmers et al. 2023).

One absmax per block of 64 consecutive weights; the 16 levels are quantiles of a standard normal scaled
to [-1, 1] (with an exact zero), so each level is equally likely for normally distributed weights, and a
weight's code is the level nearest W / absmax. The model stage holds it because training (QLoRA) and
inference (`infer.quantize`) both build on it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.errors import ConfigError
from llmlab.model.frozen import frozen_linear


def normal_float_levels(bits: int = 4) -> torch.Tensor:
    """The 2^bits NormalFloat levels in [-1, 1]: quantiles of N(0, 1) at evenly spaced probabilities,
    2^(bits-1) on the positive side and one fewer on the negative, plus 0, each side scaled so that its
    extreme is 1. The outermost probability (1 - delta) averages the two halves' choices of delta,
    1/(2 * 15) and 1/(2 * 16) for 4 bits, so that the quantile stays finite."""
    n = 2 ** (bits - 1)
    delta = 0.5 * (1 / (2 * (2 * n - 1)) + 1 / (2 * 2 * n))
    normal = torch.distributions.Normal(0.0, 1.0)
    positive = normal.icdf(torch.linspace(1 - delta, 0.5, n + 1, dtype=torch.float64)[:-1])
    negative = -normal.icdf(torch.linspace(1 - delta, 0.5, n, dtype=torch.float64)[:-1])
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative])
    return (levels / levels.abs().max()).sort().values.float()


class NF4Linear(nn.Module):
    """A frozen Linear layer stored as 4-bit NormalFloat codes with an fp32 absmax per block of 64
    weights, dequantized for every forward pass and again for the backward one (the base of QLoRA), so
    training keeps no fp32 copy of it. 4.5 bits per weight."""

    def __init__(self, linear: nn.Linear, block_size: int = 64) -> None:
        super().__init__()
        out_f, in_f = linear.weight.shape
        if (out_f * in_f) % block_size or block_size % 2:
            raise ConfigError(f"NF4 needs the weight's size ({out_f} x {in_f}) divisible by an even block_size ({block_size})")
        w = linear.weight.detach().float().reshape(-1, block_size)
        absmax = w.abs().amax(dim=1).clamp(min=1e-12)
        levels = normal_float_levels().to(w.device)
        midpoints = (levels[1:] + levels[:-1]) / 2  # nearest level = how many midpoints lie below
        codes = torch.bucketize(w / absmax[:, None], midpoints).to(torch.uint8).view(-1)
        self.register_buffer("packed", codes[0::2] | (codes[1::2] << 4))
        self.register_buffer("absmax", absmax)
        self.register_buffer("levels", levels, persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features, self.block_size = in_f, out_f, block_size
        self.expanded: torch.Tensor | None = None  # the fp32 weight, held only inside `expanded_weights`

    def dequantize(self) -> torch.Tensor:
        if self.expanded is not None:
            return self.expanded
        return self.expand(self.packed, self.absmax, self.levels)

    def expand(self, packed: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """The fp32 weight from its codes, block absmax and levels: this layer's buffers, or the copies
        autograd saved of them (`frozen_linear`)."""
        # One lookup per byte in a 256-row table of (low code's level, high code's level): a row gather is
        # ~3x quicker on a CPU than unpacking the two codes and indexing the levels with each.
        pairs = torch.stack([levels.repeat(16), levels.repeat_interleave(16)], dim=-1)
        w = F.embedding(packed.int(), pairs).view(-1, self.block_size).mul_(absmax[:, None])
        return w.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.expanded is not None:
            y = frozen_linear(x, self.expanded)
        else:
            y = frozen_linear(x, self.packed, self.absmax, self.levels, expand=self.expand)
        return y if self.bias is None else y + self.bias.to(y.dtype)


@contextlib.contextmanager
def expanded_weights(model: nn.Module) -> Iterator[None]:
    """Dequantize each NF4 matrix of `model` once for the block instead of at every forward pass: an
    evaluation or a generation runs hundreds of forward passes over the same frozen weights. Costs the
    fp32 copies' memory until the block ends."""
    layers = [m for m in model.modules() if isinstance(m, NF4Linear) and m.expanded is None]
    try:
        for layer in layers:
            layer.expanded = layer.dequantize()
        yield
    finally:
        for layer in layers:
            layer.expanded = None
