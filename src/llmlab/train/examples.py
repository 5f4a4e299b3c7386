"""Post-training data: JSONL records -> conversations -> encoded examples -> padded batches.

Every post-training stage (SFT, DPO, reward models, RL) reads JSONL, renders conversations with the chat
template, trains on right-padded batches whose targets are -100 wherever nothing is learned, and holds
out a seeded validation split. Those parts live here, so the stages import them from one place.

Two conversation forms are read: `{"instruction": ..., "input"?: ..., "response": ...}` (one exchange)
and `{"messages": [{"role": ..., "content": ...}, ...]}` (any conversation with an assistant turn).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from llmlab.errors import CheckpointError, InputError
from llmlab.tokenizer.chat import render_chat

IGNORE = -100  # the target of a position that is not trained (prompt, padding): cross_entropy's ignore_index


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) per non-blank line; `where` is "file:line" for error messages."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no data file at {path}", hint="pass a JSONL file (one JSON object per line)")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where} is not valid JSON ({e.msg} at column {e.colno})",
                                 hint="each line must be one complete JSON object") from e
            if not isinstance(record, dict):
                raise InputError(f"{where} holds a {type(record).__name__}, not a JSON object")
            yield where, record


def conversation(record: dict[str, Any], where: str = "record") -> list[dict[str, str]]:
    """The messages of one line in either form, checked; InputError naming `where` otherwise."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise InputError(f"{where}: message {i} must be {{\"role\": system|user|assistant, "
                                 f"\"content\": string}}, got {json.dumps(m)[:80]}")
        if not any(m["role"] == "assistant" for m in messages):
            raise InputError(f"{where}: the conversation has no assistant message, so nothing to learn from")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    missing = [k for k in ("instruction", "response") if not isinstance(record.get(k), str)]
    if missing:
        raise InputError(f"{where}: expected {{\"instruction\", \"input\"?, \"response\"}} or {{\"messages\"}}; "
                         f"{' and '.join(repr(k) for k in missing)} missing or not a string",
                         hint=f"keys found: {', '.join(record) or 'none'}")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise InputError(f"{where}: 'input' must be a string")
    user = record["instruction"] + (f"\n\n{extra}" if extra else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["response"]}]


def read_conversations(path: str | os.PathLike) -> list[list[dict[str, str]]]:
    out = [conversation(record, where) for where, record in read_jsonl(path)]
    if not out:
        raise InputError(f"{path} holds no conversations")
    return out


def encode_conversation(messages: Sequence[dict[str, str]], tokenizer, max_tokens: int) -> dict[str, list[int]] | None:
    """Inputs and next-token targets of one conversation; targets are -100 except where the next token
    is one the assistant wrote. None when truncation left no assistant token to learn."""
    rendered = render_chat(messages, tokenizer, max_tokens=max_tokens)
    labels = rendered.labels(IGNORE)
    example = {"input_ids": rendered.ids[:-1], "targets": labels[1:]}
    return example if any(t != IGNORE for t in example["targets"]) else None


def pad_batch(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: padding comes after every real token, so causal attention never
    lets a real token see it, and its targets are -100."""
    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        targets[i, : len(r["targets"])] = torch.tensor(r["targets"])
    return {"input_ids": input_ids, "targets": targets}


def split_validation(items: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, validation): a seeded random `fraction` (at least one item) held out, the rest for training."""
    if len(items) < 2:
        raise InputError(f"{len(items)} usable example(s): need at least 2 (one to train on, one to validate)")
    order = np.random.default_rng([seed, 7]).permutation(len(items))
    n_val = min(len(items) - 1, max(1, round(len(items) * fraction)))
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in sorted(order[:n_val])]


class ExampleBatches:
    """A `BatchSource` of whole examples, reshuffled every epoch; a step's rows depend on (seed, step) only.

    Like the pretraining windows, the global batch of step s has micro_batch x grad_accum x world rows
    and process `rank` takes its slice, so a resumed run needs nothing but the step count.
    """

    def __init__(self, items: Sequence[Any], collate: Callable[[list[Any]], dict[str, torch.Tensor]],
                 micro_batch: int, grad_accum: int = 1, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if not items:
            raise InputError("no training examples")
        self.items, self.collate = list(items), collate
        self.micro_batch, self.grad_accum, self.seed, self.rank, self.world = micro_batch, grad_accum, seed, rank, world
        self.global_rows = micro_batch * grad_accum * world
        self.micro_step = 0
        self._order: tuple[int, np.ndarray] | None = None

    def steps_for(self, epochs: float) -> int:
        """Optimizer steps that show every example `epochs` times."""
        return max(1, math.ceil(epochs * len(self.items) / self.global_rows))

    def _item(self, g: int) -> Any:
        epoch, pos = divmod(g, len(self.items))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.items)))
        return self.items[self._order[1][pos]]

    def next_batch(self) -> dict[str, torch.Tensor]:
        step, m = divmod(self.micro_step, self.grad_accum)
        first = step * self.global_rows + (m * self.world + self.rank) * self.micro_batch
        self.micro_step += 1
        return self.collate([self._item(g) for g in range(first, first + self.micro_batch)])

    def state_dict(self) -> dict[str, Any]:
        return {"micro_step": self.micro_step, "seed": self.seed, "examples": len(self.items),
                "global_rows": self.global_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("examples", len(self.items)), ("global_rows", self.global_rows)):
            if state.get(key, mine) != mine:
                raise CheckpointError(f"the checkpoint was trained with {key}={state[key]}, this run has {mine}",
                                      hint="resume with the same data, seed and batch options as the interrupted run")
        self.micro_step = int(state["micro_step"])


def pad_id(tokenizer) -> int:
    """Padding id: end-of-text when the tokenizer has one (padded positions are masked anyway)."""
    return tokenizer.eos_id if tokenizer.eos_id is not None else 0
