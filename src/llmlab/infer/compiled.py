"""A compiled decoding step: static shapes, so `torch.compile` makes one graph (CUDA graphs on a GPU).

An eager decoding step launches a few hundred small kernels per token; on a GPU, a small model's step is
bound by launching them, not by reading its weights. `torch.compile(mode="reduce-overhead")` records the
step once as a CUDA graph and replays it, which needs every shape and address to stay the same from one
token to the next. So this step:

- keeps the keys/values in a `StaticSlotKVCache` allocated once at the full context window, so the
  step always attends over all `context_length` columns (unused ones masked) and writes the new key
  and value into the last column, moving them to each row's position by a scatter inside the graph;
- takes the positions as a tensor, never as Python numbers the graph would specialise on;
- pads the running rows up to a power of two (1, 2, 4, ... `max_rows`), so a changing batch needs at
  most log2(max_rows) + 1 graphs, each compiled once.

`Batcher` uses it on CUDA by default and elsewhere on request (`Engine(compile=True)`,
`llmlab generate --compile`); on the CPU the eager step stays the default (no CUDA graphs there).
"""

from __future__ import annotations

from typing import Any

import torch

from llmlab.infer.slot_cache import SlotKVCache


class StaticSlotKVCache(SlotKVCache):
    """A `SlotKVCache` allocated at its largest (max_rows x context_length) once, so addresses never change."""

    def __init__(self, config: Any, max_rows: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, max_rows, device, dtype)
        self.grow(max_rows, config.context_length)  # every later grow is a no-op

    def scatter_new(self, positions: torch.Tensor) -> None:
        """Move each row's new key/value from the last column to its position (a row already there keeps it):
        the same as `commit`, without picking rows out (a data-dependent shape a graph cannot hold)."""
        last = self.max_len - 1
        for store, view in ((self.slots_k, self.k), (self.slots_v, self.v)):
            new = view.narrow(3, last, 1)  # (layers, rows, kv_heads, 1, head_dim)
            index = positions.view(1, -1, 1, 1, 1).expand_as(new)
            view.scatter_(3, index, new)


def bucket(rows: int, max_rows: int) -> int:
    """The padded batch size for `rows` running rows: the next power of two, at most `max_rows`."""
    return min(max_rows, 1 << (rows - 1).bit_length())


class CompiledDecodeStep:
    """logits = step(tokens (B, 1), positions (B,)) for the rows in slots 0..B-1 of its static cache."""

    def __init__(self, model: torch.nn.Module, max_rows: int, device: torch.device, dtype: torch.dtype,
                 backend: str = "inductor") -> None:
        self.model, self.max_rows = model, max_rows
        with torch.inference_mode():
            self.cache = StaticSlotKVCache(model.config, max_rows, device, dtype)
        if device.type == "cuda":
            for store in (self.cache.slots_k, self.cache.slots_v):
                torch._dynamo.mark_static_address(store)  # CUDA graphs replay reads and writes at these addresses
        # `backend="eager"` captures the same single graph without generating code (tests, quick checks).
        mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
        self.compiled = torch.compile(self.forward, backend=backend, mode=mode, fullgraph=True, dynamic=False)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The eager step the graph is made from; `cache.select` has shown it the rows and every column."""
        width = self.cache.max_len
        mask = torch.arange(width, device=tokens.device)[None, :] < positions[:, None]
        x, _ = self.model.hidden_states(tokens, kv_cache=self.cache, position_ids=positions[:, None],
                                        attention_mask=mask)
        self.cache.scatter_new(positions)
        return self.model.lm_head(x[:, -1])

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        rows = tokens.size(0)
        padded = bucket(rows, self.max_rows)
        if padded > rows:  # spare slots decode token 0 at position 0: their slots are free and rewritten on reuse
            tokens = torch.cat([tokens, tokens.new_zeros(padded - rows, 1)])
            positions = torch.cat([positions, positions.new_zeros(padded - rows)])
        self.cache.select(padded, self.cache.max_len)
        # A CUDA graph's output lives in memory the next replay overwrites: copy the rows we keep.
        return self.compiled(tokens, positions)[:rows].clone()
