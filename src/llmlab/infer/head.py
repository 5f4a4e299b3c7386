"""The output head when decoding: the logits of one position per sequence, read from a column-major copy.

At batch 1 the head is a matrix-vector product over what is often the model's largest matrix, so its
speed is the speed memory can be read. MKL's kernel for a row-major (vocab x d_model) weight, one short
dot product per row, reads it at ~5-11 GB/s on our 2-core EPYC; the same values stored column-major
(d_model x vocab contiguous) are read at 10-20 GB/s, 1.4-2.3x faster for heads of 256-768 columns
(`benchmarks/generate.py`, `docs/inference.md`). For 4 rows or more MKL's matrix-matrix kernel
sometimes prefers the original layout, so only batches of one or two rows use the copy, and only on
the CPU.

The copy costs one more vocab x d_model matrix for as long as its batcher lives: one `Engine.generate`
or `Engine.stream` call, or a served model's lifetime. It is made at the first one- or two-row decoding
step, not kept between engine calls: a model may be trained between two calls (and PyTorch's fused
optimizers update weights without moving their version counters); a served model is not trained.
"""

from __future__ import annotations

import torch
import torch.nn as nn

MAX_ROWS = 2  # batches up to this many rows read the column-major copy


class DecodeHead:
    """head(x) for last-position states x (B, d_model), through a column-major copy where that is faster."""

    def __init__(self, head: nn.Module) -> None:
        self.head = head
        self.fast = type(head) is nn.Linear and head.bias is None and head.weight.device.type == "cpu"
        self.weight_t: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast or x.size(0) > MAX_ROWS:
            return self.head(x)
        if self.weight_t is None:
            self.weight_t = self.head.weight.detach().t().contiguous()
        return x @ self.weight_t
