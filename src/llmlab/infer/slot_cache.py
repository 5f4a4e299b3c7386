"""The continuous batcher's KV cache: one slot per running row, each row at its own length."""

from __future__ import annotations

from typing import Any

import torch

from llmlab.model.transformer import KVCache


class SlotKVCache(KVCache):
    """Keys and values of the running rows, one slot per row, each row at its own length.

    Row r's keys fill columns [0, length_r) of slot r (left-aligned), so a slot is reused as soon as its
    row retires and memory is bounded by rows x the longest sequence. The model knows one shared length,
    so a decoding step presents the cache as W = longest row + 1 columns: the model writes every row's new
    key/value into column W - 1 and attends over columns [0, W) under a mask that shows each row only its
    own columns plus W - 1 (the model always lets a query see its own column). `commit` then moves the new
    key of each shorter row from W - 1 to its own next column, where later steps will look for it.
    """

    def __init__(self, config: Any, max_rows: int, device: torch.device, dtype: torch.dtype) -> None:
        self.context_length, self.max_rows = config.context_length, max_rows
        self.max_len = self.length = 0
        # Allocated as rows and columns are needed (zeros: a masked value must still be finite).
        shape = (config.n_layers, 0, config.n_kv_heads, 0, config.head_dim)
        self.slots_k = torch.zeros(shape, device=device, dtype=dtype)
        self.slots_v = torch.zeros(shape, device=device, dtype=dtype)
        self.k, self.v = self.slots_k, self.slots_v

    def grow(self, rows: int, width: int) -> None:
        """Make room for `rows` slots of `width` columns, doubling (up to the limits) so growth is rare."""
        have_rows = self.slots_k.size(1)
        if rows <= have_rows and width <= self.max_len:
            return
        new_rows = have_rows if rows <= have_rows else min(self.max_rows, max(rows, 2 * have_rows))
        new_len = self.max_len if width <= self.max_len else min(self.context_length, max(width, 2 * self.max_len))
        for name in ("slots_k", "slots_v"):
            old = getattr(self, name)
            grown = old.new_zeros((old.size(0), new_rows, old.size(2), new_len, old.size(4)))
            grown[:, :have_rows, :, : self.max_len] = old
            setattr(self, name, grown)
        self.max_len = new_len

    def put(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Place a prefilled prompt's keys/values (n_layers, n_kv_heads, T, head_dim) in `slot`."""
        self.slots_k[:, slot, :, : k.size(2)] = k
        self.slots_v[:, slot, :, : v.size(2)] = v

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` columns of row `src` into slot `dst` (keeps the running rows contiguous)."""
        self.slots_k[:, dst, :, :length] = self.slots_k[:, src, :, :length]
        self.slots_v[:, dst, :, :length] = self.slots_v[:, src, :, :length]

    def select(self, rows: int, width: int) -> None:
        """Show the model the first `rows` slots, `width` columns wide, with the new token going to width - 1."""
        self.k, self.v = self.slots_k[:, :rows], self.slots_v[:, :rows]
        self.length = width - 1

    def commit(self, positions: torch.Tensor, width: int) -> None:
        """After a ragged step: move each shorter row's new key/value from column width - 1 to `positions`."""
        rows = torch.nonzero(positions < width - 1).flatten()
        cols, last = positions[rows], torch.full_like(rows, width - 1)
        for store in (self.slots_k, self.slots_v):
            store[:, rows, :, cols] = store[:, rows, :, last]
