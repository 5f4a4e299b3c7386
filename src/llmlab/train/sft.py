"""Supervised fine-tuning: teach a pretrained model to answer in the chat format.

    JSONL conversations -> chat template (ids + loss mask on the assistant's tokens)
                        -> right-padded batches (targets -100 on prompts and padding)
                        -> the pretraining loop (`Trainer`), full or LoRA, with a validation split

The line forms are `llmlab.train.examples`'s. `data="tasks"` trains on the built-in checkable tasks
(`llmlab.train.checkable_tasks`) and scores exact match on their held-out split at every evaluation.

Post-training differs from pretraining in its data and its numbers (a smaller learning rate, a few
epochs, no weight decay), not in its loop: the optimizer step, schedule, logging, checkpoints and exact
resume are the pretraining loop's.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from llmlab.tokenizer.chat import with_system
from llmlab.train import checkable_tasks
from llmlab.train.config import TrainConfig
from llmlab.train.distributed import DistInfo, setup_process
from llmlab.train.examples import (IGNORE, ExampleBatches, conversation, encode_conversation, pad_batch, pad_id,
                                   read_conversations, split_validation)
from llmlab.train.loop import TrainResult, lm_loss
from llmlab.train.posttrain import (ExactMatchEval, PostTraining, PostTrainOptions, build_trainer, held_out_examples,
                                    load_start, write_posttrain_report)


@torch.no_grad()
def masked_loss(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean cross-entropy per trained (non -100) target token over all `batches`."""
    total, count = 0.0, 0
    for batch in batches:
        logits, _ = model(batch["input_ids"].to(device))
        targets = batch["targets"].to(device)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                       reduction="sum"))
        count += int((targets != IGNORE).sum())
    return total / max(1, count)


class SFTEval:
    """The SFT evaluation hook: validation loss on assistant tokens, then exact match when there are answers."""

    def __init__(self, val_batches: list[dict[str, torch.Tensor]], device: torch.device, exact: ExactMatchEval) -> None:
        self.val_batches, self.device, self.exact = val_batches, device, exact

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        return {"val_loss": masked_loss(model, self.val_batches, self.device), **self.exact(model)}


def conversations_for(options: PostTrainOptions, seed: int) -> list[list[dict[str, str]]]:
    if options.data == "tasks":
        records = checkable_tasks.sft_records(checkable_tasks.generate(options.tasks_train, "train", seed))
        return [conversation(r) for r in records]
    return read_conversations(options.data)


def prepare_sft(config: TrainConfig, options: PostTrainOptions, resume: bool = False,
                info: DistInfo | None = None) -> PostTraining:
    """Read and encode the data, load the model (with LoRA if asked) and build the trainer; nothing trains yet."""
    device, info = setup_process(config, info)
    start = load_start(config, options, resume)
    limit = start.model.config.context_length + 1  # inputs are the ids but the last
    encoded = [encode_conversation(with_system(c, options.system), start.tokenizer, limit)
               for c in conversations_for(options, config.seed)]
    usable = [e for e in encoded if e is not None]
    notes = list(start.notes)
    if len(usable) < len(encoded):
        notes.append(f"{len(encoded) - len(usable)} conversations had no assistant token left after truncation to "
                     f"{limit - 1} tokens and were skipped")
    train, val = split_validation(usable, config.val_fraction, config.seed)
    pad = pad_id(start.tokenizer)
    collate = lambda rows: pad_batch(rows, pad)  # noqa: E731
    batches = ExampleBatches(train, collate, config.micro_batch, config.grad_accum or 1, config.seed,
                             info.rank, info.world)
    val_batches = [collate(val[i : i + config.micro_batch]) for i in range(0, len(val), config.micro_batch)]
    exact = ExactMatchEval(start.tokenizer, held_out_examples(options, config.seed), options.max_new_tokens,
                           system=options.system)
    evaluate = SFTEval(val_batches, device, exact)
    trainer = build_trainer(config, options, start, batches, lm_loss, evaluate if info.is_main else None,
                            "sft", resume, info, device)
    return PostTraining(trainer, start.tokenizer, len(train), len(val), notes)


def sft(config: TrainConfig, options: PostTrainOptions, resume: bool = False,
        until_step: int | None = None) -> TrainResult:
    """Fine-tune `config.init_from` on `options.data`; writes checkpoints, metrics, loss.png and report.md."""
    run = prepare_sft(config, options, resume)
    result = run.trainer.fit(until_step)
    if run.trainer.info.is_main:
        write_posttrain_report(run, result, options, "Supervised fine-tuning")
    return result
