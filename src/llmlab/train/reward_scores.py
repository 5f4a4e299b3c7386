"""What a reward model computes: r(x, y), the value head's output at the last token of a conversation.

The reward-model stage (`reward.py`) trains this number and RL (`rl.py`) optimises a policy against it;
both read it here. `load_reward_model` refuses a model without a value head, and one whose tokenizer is
not the policy's (its scores would be of other token ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from llmlab.errors import ConfigError
from llmlab.model.loading import load_model
from llmlab.tokenizer.chat import render_chat
from llmlab.train.examples import pad_id


# --- encoding -------------------------------------------------------------------------------------------

def encode_answer(prompt: str, answer: str, tokenizer, max_tokens: int) -> list[int]:
    """The whole conversation (user prompt, assistant answer, end-of-turn) as ids: what the reward reads."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return render_chat(messages, tokenizer, max_tokens=max_tokens).ids


def collate_rows(rows: Sequence[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and each row's length (the reward is read at position length - 1)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
    return {"input_ids": input_ids, "lengths": torch.tensor([len(r) for r in rows])}


def sequence_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """r(x, y) per row: the value head at each row's last real token (fp32)."""
    _, _, values = model(batch["input_ids"], return_values=True)
    last = batch["lengths"].to(values.device) - 1
    return values.float()[torch.arange(values.size(0), device=values.device), last]


# --- scoring with a trained reward model ---------------------------------------------------------------

def load_reward_model(path: str | Path, device: str | torch.device = "cpu", policy_tokenizer: Any = None):
    """(reward model in eval mode, its tokenizer); refuses a model without a value head, and one whose
    tokenizer differs from `policy_tokenizer` (its scores would be of other token ids' texts)."""
    model, tokenizer = load_model(path, device=device)
    if model.value_head is None:
        raise ConfigError(f"{path} is not a reward model: it has no value head",
                          hint="train one with `llmlab reward train --init-from SFT_CHECKPOINT --data pairs.jsonl`")
    if policy_tokenizer is not None and tokenizer.sha256 != policy_tokenizer.sha256:
        raise ConfigError(
            f"the reward model at {path} was trained with another tokenizer than the policy "
            f"(vocabularies of {tokenizer.vocab_size} and {policy_tokenizer.vocab_size} tokens, different ids)",
            hint="train the reward model from a checkpoint of the same family as the policy (the same tokenizer.json)")
    return model, tokenizer


@torch.no_grad()
def score_answers(model: torch.nn.Module, tokenizer, prompts: Sequence[str], answers: Sequence[str],
                  batch_size: int = 16) -> list[float]:
    """r(prompt, answer) for each pair, in eval mode and fp32."""
    if len(prompts) != len(answers):
        raise ConfigError(f"{len(answers)} answers for {len(prompts)} prompts")
    device = next(model.parameters()).device
    limit = model.config.context_length
    pad = pad_id(tokenizer)
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        for i in range(0, len(prompts), batch_size):
            rows = [encode_answer(p, a, tokenizer, limit) for p, a in zip(prompts[i : i + batch_size],
                                                                          answers[i : i + batch_size])]
            batch = {k: v.to(device) for k, v in collate_rows(rows, pad).items()}
            out += sequence_rewards(model, batch).tolist()
    finally:
        model.train(was_training)
    return out
