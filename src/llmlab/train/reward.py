"""A reward model: a language model with a scalar head, trained so that preferred answers score higher.

The reward r(x, y) of an answer y to a prompt x is the value head's output at the conversation's last
token (the end-of-turn token that closes the answer), so the transformer has read all of x and y
(InstructGPT, Ouyang et al., 2022). Trained on the same {"prompt", "chosen", "rejected"} JSONL as DPO,
with the Bradley–Terry model of a preference, P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r)):

    loss = -log sigmoid(r(x, y_c) - r(x, y_r))

Held-out pairwise accuracy (how often r(x, y_c) > r(x, y_r)) is what tells a useful reward model from a
useless one. Checkpoints are ordinary llmlab checkpoints whose config has `value_head: true`; what a
trained one computes, and how RL loads it, is `reward_scores.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from llmlab.errors import ConfigError, InputError
from llmlab.train.config import TrainConfig
from llmlab.train.distributed import DistInfo, setup_process
from llmlab.train.examples import ExampleBatches, pad_id, split_validation
from llmlab.train.loop import TrainResult
from llmlab.train.posttrain import PostTraining, PostTrainOptions, build_trainer, load_start, write_posttrain_report
from llmlab.train.preferences import preference_pairs
from llmlab.train.reward_scores import collate_rows, encode_answer, sequence_rewards


@dataclass
class RewardOptions(PostTrainOptions):
    eval_data: str | None = None  # held-out preference JSONL (with data="tasks": their held-out pairs)


# --- batches of pairs ---------------------------------------------------------------------------------

def collate_scored_pairs(pairs: Sequence[dict[str, list[int]]], pad: int) -> dict[str, torch.Tensor]:
    """2B rows: the B chosen conversations, then the B rejected ones."""
    return collate_rows([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad)


# --- the reward and its loss ----------------------------------------------------------------------------

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

    @torch.no_grad()
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


# --- the run --------------------------------------------------------------------------------------------

def prepare_reward(config: TrainConfig, options: RewardOptions, resume: bool = False,
                   info: DistInfo | None = None) -> PostTraining:
    """Load the starting model, give it a value head, encode the pairs and build the trainer."""
    if options.system is not None:
        raise ConfigError("options.system is honoured by SFT and RL only; preference pairs keep the template's default")
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
