"""Batches of (input, target) windows from token shards, with a held-out validation tail.

The shards are one long stream of documents, each preceded by `<|endoftext|>`. The last `val_fraction`
of the stream is held out. A training batch is a function of (seed, step) alone — never of what was
drawn before — so resuming at step k only needs k, and every process of a distributed run can compute
its own slice of the same global batch.

Any object with `next_batch() -> dict[str, Tensor]`, `state_dict()` and `load_state_dict()` can feed the
training loop (see `BatchSource`); `targets` may hold -100 where no loss should be taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from llmlab.errors import CheckpointError, InputError


class BatchSource(Protocol):
    """What the training loop pulls micro-batches from."""

    def next_batch(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Segment:
    """A contiguous run of tokens inside one shard."""

    array: np.ndarray
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


def open_shards(directory: str | Path):
    """The shard set at `directory` (`read_shards` checks meta.json and every file's size), never empty."""
    from llmlab.tokenizer.shards import read_shards

    shards = read_shards(directory)
    if sum(len(a) for a in shards.arrays) == 0:
        raise InputError(f"token shards at {directory} hold no tokens", hint="encode some documents first")
    return shards


def check_compatible(meta: dict, model_vocab: int, tokenizer=None, tokenizer_path: str | Path | None = None) -> None:
    """Refuse, before any training, shards that this model or tokenizer cannot have produced."""
    shard_vocab = int(meta.get("vocab_size", 0))
    if shard_vocab > model_vocab:
        raise CheckpointError(
            f"the shards use a vocabulary of {shard_vocab} tokens but the model's embedding has {model_vocab}",
            hint="set model.vocab_size to at least the shards' vocab_size, or re-encode with the model's tokenizer",
        )
    if tokenizer is None:
        return
    expected = meta.get("tokenizer_sha256")
    if expected and tokenizer.sha256 != expected:
        raise CheckpointError(
            f"tokenizer {tokenizer_path or ''} (sha256 {tokenizer.sha256[:12]}…) is not the one that encoded the "
            f"shards (sha256 {expected[:12]}…)",
            hint="pass the tokenizer.json the shards were written with (--tokenizer), or re-encode the shards",
        )
    if shard_vocab and tokenizer.vocab_size != shard_vocab:
        raise CheckpointError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the shards were written with {shard_vocab}",
            hint="pass the tokenizer.json the shards were written with",
        )


def split_stream(arrays: list[np.ndarray], val_fraction: float) -> tuple[list[Segment], list[Segment]]:
    """Train and validation segments: the last `val_fraction` of all tokens (across shards) is validation."""
    total = sum(len(a) for a in arrays)
    n_val = max(1, math.ceil(total * val_fraction))
    cut = total - n_val
    train, val, pos = [], [], 0
    for a in arrays:
        lo, hi = pos, pos + len(a)
        if cut > lo:
            train.append(Segment(a, 0, min(hi, cut) - lo))
        if cut < hi:
            val.append(Segment(a, max(cut, lo) - lo, len(a)))
        pos = hi
    return train, val


def _locate(lengths: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(segment number, offset inside it) of each global `index` over consecutive runs of `lengths`."""
    ends = np.cumsum(lengths)
    k = np.searchsorted(ends, index, side="right")
    return k, index - (ends[k] - lengths[k])


def _windows(segments: list[Segment], k: np.ndarray, local: np.ndarray, seq_len: int) -> dict[str, torch.Tensor]:
    """Rows of seq_len + 1 tokens at (segment, offset) pairs; inputs and their next-token targets."""
    rows = np.empty((len(k), seq_len + 1), dtype=np.int64)
    for i, (seg_no, off) in enumerate(zip(k, local)):
        seg = segments[seg_no]
        rows[i] = seg.array[seg.start + off : seg.start + off + seq_len + 1]
    t = torch.from_numpy(rows)
    return {"input_ids": t[:, :-1], "targets": t[:, 1:]}


class WindowBatches:
    """Micro-batches of windows from the training segments, one global batch per optimizer step.

    sampling="random": every global batch draws fresh uniform start offsets (from a generator seeded by
    (seed, step)). sampling="packed": the stream is cut into consecutive windows, shuffled once per epoch,
    and read in that order, so each token is trained on once per epoch.

    The global batch of a step has micro_batch * grad_accum * world rows; process `rank` reads rows
    [(m * world + rank) * micro_batch, ...) at micro-step m, so any split of the same global batch over
    processes and accumulation steps sees the same rows.
    """

    def __init__(
        self,
        segments: list[Segment],
        seq_len: int,
        micro_batch: int,
        grad_accum: int = 1,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        sampling: str = "random",
    ) -> None:
        self.segments = [s for s in segments if len(s) > seq_len]
        if not self.segments:
            longest = max((len(s) for s in segments), default=0)
            raise InputError(
                f"the training split has no run of {seq_len + 1} tokens (longest: {longest})",
                hint="use more text, a shorter context_length, or a smaller val_fraction",
            )
        self.seq_len, self.micro_batch, self.grad_accum = seq_len, micro_batch, grad_accum
        self.rank, self.world, self.seed, self.sampling = rank, world, seed, sampling
        self.global_rows = micro_batch * grad_accum * world
        lengths = np.array([len(s) for s in self.segments])
        # Random windows may start anywhere that leaves seq_len + 1 tokens; packed windows tile each segment.
        self._counts = lengths - seq_len if sampling == "random" else (lengths - 1) // seq_len
        self.n_positions = int(self._counts.sum())
        self.micro_step = 0
        self._cache: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def _global_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(segment, offset) of every row of step `step`'s global batch."""
        if self._cache is not None and self._cache[0] == step:
            return self._cache[1]
        if self.sampling == "random":
            index = np.random.default_rng([self.seed, step]).integers(0, self.n_positions, size=self.global_rows)
            rows = _locate(self._counts, index)
        else:
            first = step * self.global_rows
            epochs, within = np.divmod(np.arange(first, first + self.global_rows), self.n_positions)
            chunks = np.empty_like(within)
            for epoch in np.unique(epochs):
                order = np.random.default_rng([self.seed, 1 << 20, int(epoch)]).permutation(self.n_positions)
                chunks[epochs == epoch] = order[within[epochs == epoch]]
            k, n = _locate(self._counts, chunks)
            rows = (k, n * self.seq_len)
        self._cache = (step, rows)
        return rows

    def next_batch(self) -> dict[str, torch.Tensor]:
        step, m = divmod(self.micro_step, self.grad_accum)
        k, local = self._global_rows(step)
        lo = (m * self.world + self.rank) * self.micro_batch
        self.micro_step += 1
        sl = slice(lo, lo + self.micro_batch)
        return _windows(self.segments, k[sl], local[sl], self.seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {"micro_step": self.micro_step, "seed": self.seed, "sampling": self.sampling,
                "global_rows": self.global_rows, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "sampling", "seq_len"):
            if key in state and state[key] != getattr(self, key):
                raise CheckpointError(
                    f"the checkpoint's data position was made with {key}={state[key]!r}, this run has {getattr(self, key)!r}",
                    hint="resume with the same recipe and overrides as the interrupted run",
                )
        if state.get("global_rows", self.global_rows) != self.global_rows:
            raise CheckpointError(
                f"the checkpoint's global batch was {state['global_rows']} rows, this run's is {self.global_rows}",
                hint="resume with the same micro_batch x grad_accum x processes",
            )
        self.micro_step = int(state["micro_step"])


def validation_batches(
    segments: list[Segment], seq_len: int, batch_size: int, max_tokens: int
) -> list[dict[str, torch.Tensor]]:
    """Consecutive non-overlapping windows of the validation split, up to `max_tokens` target tokens.

    Built once per run, so every evaluation scores the same tokens and a too-short split fails early.
    """
    pairs = [(k, local) for k, seg in enumerate(segments) for local in range(0, len(seg) - seq_len, seq_len)]
    pairs = pairs[: max(1, max_tokens // seq_len)]
    if not pairs:
        longest = max((len(s) for s in segments), default=0)
        raise InputError(
            f"the validation split has no run of {seq_len + 1} tokens (longest: {longest})",
            hint="raise val_fraction or use a shorter context_length",
        )
    batches = []
    for i in range(0, len(pairs), batch_size):
        k, local = (np.array(c) for c in zip(*pairs[i : i + batch_size]))
        batches.append(_windows(segments, k, local, seq_len))
    return batches


def token_byte_lengths(tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes each token id stands for; special tokens count 0 (they are not text)."""
    lengths = np.zeros(vocab_size, dtype=np.int64)
    specials = set(getattr(tokenizer, "special_tokens", {}).values())
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        if i not in specials:
            lengths[i] = len(tokenizer.decode_bytes([i]))
    return lengths
