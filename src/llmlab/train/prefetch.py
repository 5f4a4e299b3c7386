"""Reading the next micro-batch while the device computes the current one.

On a GPU the step is asynchronous: the host queues kernels and would then wait on the batch source
(numpy slicing, padding) before it can queue more. A background thread builds the next batch meanwhile
and pins its memory, so the copy to the device is asynchronous too (`.to(device, non_blocking=True)`).

The wrapped source is still the run's data position: `state_dict()` is the position after the batches
the trainer has taken, not after the one read ahead, so a checkpoint resumes exactly.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from llmlab.train.data import BatchSource


class Prefetcher:
    """A `BatchSource` that reads one batch ahead of its consumer in a thread."""

    def __init__(self, source: BatchSource, pin_memory: bool) -> None:
        self.source, self.pin_memory = source, pin_memory
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmlab-prefetch")
        self._ahead: Future | None = None

    def _read(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        position = self.source.state_dict()
        batch = self.source.next_batch()
        if self.pin_memory:
            batch = {k: v.pin_memory() for k, v in batch.items()}
        return position, batch

    def next_batch(self) -> dict[str, torch.Tensor]:
        ahead = self._ahead or self._pool.submit(self._read)
        _, batch = ahead.result()
        self._ahead = self._pool.submit(self._read)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The position after the batches handed out: the one the batch read ahead started from."""
        if self._ahead is None:
            return self.source.state_dict()
        return self._ahead.result()[0]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._ahead is not None:
            self._ahead.result()  # let the thread finish before the position moves under it
            self._ahead = None
        self.source.load_state_dict(state)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
