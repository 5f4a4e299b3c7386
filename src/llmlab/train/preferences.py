"""Preference pairs: the {"prompt", "chosen", "rejected"} JSONL that DPO and the reward model both learn from.

One reader checks every line (string fields, a non-empty prompt, two different answers), so the two
stages refuse the same bad input with the same message; `data="tasks"` draws the pairs from the built-in
checkable tasks instead, their wrong answers on the rejected side.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from llmlab.errors import InputError
from llmlab.train import checkable_tasks
from llmlab.train.examples import encode_conversation, pad_batch, read_jsonl

FIELDS = ("prompt", "chosen", "rejected")


def read_preferences(path: str | os.PathLike) -> list[dict[str, str]]:
    """{"prompt", "chosen", "rejected"} per line (all strings, a prompt, answers different), checked."""
    pairs = []
    for where, record in read_jsonl(path):
        bad = [k for k in FIELDS if not isinstance(record.get(k), str)]
        if bad:
            raise InputError(f"{where}: expected string fields \"prompt\", \"chosen\", \"rejected\"; "
                             f"{', '.join(repr(k) for k in bad)} missing or not a string",
                             hint=f"keys found: {', '.join(record) or 'none'}")
        if not record["prompt"].strip():
            raise InputError(f"{where}: the prompt is empty, so there is nothing the answers respond to")
        if record["chosen"] == record["rejected"]:
            raise InputError(f"{where}: the chosen and rejected answers are the same, so there is no preference")
        pairs.append({k: record[k] for k in FIELDS})
    if not pairs:
        raise InputError(f"{path} holds no preference pairs")
    return pairs


def preference_pairs(options: Any, seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]] | None]:
    """(training pairs, held-out pairs or None to split them off the training data) for a post-training
    stage's options (`data`, `eval_data`, `tasks_train`, `tasks_eval`)."""
    if options.data == "tasks":
        train = checkable_tasks.preference_records(checkable_tasks.generate(options.tasks_train, "train", seed))
        held = checkable_tasks.preference_records(checkable_tasks.generate(options.tasks_eval, "held_out", seed + 1))
        return train, held
    return read_preferences(options.data), read_preferences(options.eval_data) if options.eval_data else None


def encode_pair(pair: dict[str, str], tokenizer, max_tokens: int) -> dict[str, Any] | None:
    """Both conversations as (ids, targets) with the loss mask on the answer; None if one lost its answer."""
    sides = {}
    for side in ("chosen", "rejected"):
        messages = [{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": pair[side]}]
        sides[side] = encode_conversation(messages, tokenizer, max_tokens)
        if sides[side] is None:
            return None
    return sides


def collate_pairs(pairs: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B rows: the B chosen answers, then the B rejected ones, and their reference log-probs."""
    rows = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    batch = pad_batch(rows, pad_id)
    if all("ref_chosen" in p for p in pairs):
        batch["ref_logps"] = torch.tensor([p["ref_chosen"] for p in pairs] + [p["ref_rejected"] for p in pairs],
                                          dtype=torch.float64)
    return batch
