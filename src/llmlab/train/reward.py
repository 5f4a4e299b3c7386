"""A reward model: a language model with a scalar head, trained so that preferred answers score higher.

The reward r(x, y) of an answer y to a prompt x is the value head's output at the conversation's last
token (the end-of-turn token that closes the answer), so the transformer has read all of x and y
(InstructGPT, Ouyang et al., 2022). Trained on the same {"prompt", "chosen", "rejected"} JSONL as DPO,
with the Bradley–Terry model of a preference, P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r)):

    loss = -log sigmoid(r(x, y_c) - r(x, y_r))

Held-out pairwise accuracy (how often r(x, y_c) > r(x, y_r)) is what tells a useful reward model from a
useless one. Checkpoints are ordinary llmlab checkpoints whose config has `value_head: true`; RL reads
them back with `load_reward_model`, which refuses one trained with another tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from llmlab.errors import ConfigError, InputError
from llmlab.model.loading import load_model
from llmlab.tokenizer.chat import render_chat
from llmlab.train.config import TrainConfig
from llmlab.train.distributed import DistInfo, setup_process
from llmlab.train.examples import ExampleBatches, pad_id, split_validation
from llmlab.train.loop import TrainResult
from llmlab.train.posttrain import PostTraining, PostTrainOptions, build_trainer, load_start, write_posttrain_report
from llmlab.train.preferences import preference_pairs


@dataclass
class RewardOptions(PostTrainOptions):
    eval_data: str | None = None  # held-out preference JSONL (with data="tasks": their held-out pairs)


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


def collate_scored_pairs(pairs: Sequence[dict[str, list[int]]], pad: int) -> dict[str, torch.Tensor]:
    """2B rows: the B chosen conversations, then the B rejected ones."""
    return collate_rows([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad)


# --- the reward and its loss ----------------------------------------------------------------------------

def sequence_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """r(x, y) per row: the value head at each row's last real token (fp32)."""
    _, _, values = model(batch["input_ids"], return_values=True)
    last = batch["lengths"].to(values.device) - 1
    return values.float()[torch.arange(values.size(0), device=values.device), last]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean -log sigmoid(r_c - r_r) over pairs, with the pairwise accuracy and mean margin."""
    margin = chosen - rejected
    loss = -F.logsigmoid(margin).mean()
    stats = {"accuracy": (margin > 0).float().mean(), "margin": margin.mean(),
             "chosen_reward": chosen.mean(), "rejected_reward": rejected.mean()}
    return loss, {k: v.detach() for k, v in stats.items()}


def reward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loop's loss hook: one forward over chosen and rejected rows together."""
    rewards = sequence_rewards(model, batch)
    half = rewards.size(0) // 2
    return bradley_terry_loss(rewards[:half], rewards[half:])


class RewardEval:
    """Held-out pairs: Bradley–Terry loss, pairwise accuracy and margin, prefixed "val_"."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], device: torch.device) -> None:
        self.batches, self.device = batches, device

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        sums: dict[str, float] = {}
        n = 0
        for batch in self.batches:
            rewards = sequence_rewards(model, {k: v.to(self.device) for k, v in batch.items()})
            half = rewards.size(0) // 2
            loss, stats = bradley_terry_loss(rewards[:half], rewards[half:])
            for k, v in {"loss": loss, **stats}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * half
            n += half
        return {f"val_{k}": v / n for k, v in sums.items()}


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


# --- the run --------------------------------------------------------------------------------------------

def prepare_reward(config: TrainConfig, options: RewardOptions, resume: bool = False,
                   info: DistInfo | None = None) -> PostTraining:
    """Load the starting model, give it a value head, encode the pairs and build the trainer."""
    device, info = setup_process(config, info)
    start = load_start(config, options, resume)
    start.model.add_value_head()
    start.model.value_head.requires_grad_(True)  # trained even when LoRA froze the rest
    limit = start.model.config.context_length
    train_pairs, held_pairs = preference_pairs(options, config.seed)
    encode = lambda pairs: [{s: encode_answer(p["prompt"], p[s], start.tokenizer, limit)  # noqa: E731
                             for s in ("chosen", "rejected")} for p in pairs]
    train = encode(train_pairs)
    if held_pairs is None:
        train, val = split_validation(train, config.val_fraction, config.seed)
    else:
        val = encode(held_pairs)
    if not val:
        raise InputError("no held-out preference pairs to measure the reward model's accuracy on")
    pad = pad_id(start.tokenizer)
    collate = lambda rows: collate_scored_pairs(rows, pad)  # noqa: E731
    batches = ExampleBatches(train, collate, config.micro_batch, config.grad_accum or 1, config.seed,
                             info.rank, info.world)
    val_batches = [collate(val[i : i + config.micro_batch]) for i in range(0, len(val), config.micro_batch)]
    notes = start.notes + ["the reward is the value head's output at the answer's end-of-turn token"]
    trainer = build_trainer(config, options, start, batches, reward_loss,
                            RewardEval(val_batches, device) if info.is_main else None, "reward", resume, info, device)
    return PostTraining(trainer, start.tokenizer, len(train), len(val), notes)


def train_reward_model(config: TrainConfig, options: RewardOptions, resume: bool = False,
                       until_step: int | None = None) -> TrainResult:
    """Train a reward model from `config.init_from` on `options.data`; checkpoints, metrics and report.md."""
    run = prepare_reward(config, options, resume)
    result = run.trainer.fit(until_step)
    if run.trainer.info.is_main:
        write_posttrain_report(run, result, options, "Reward model")
    return result
