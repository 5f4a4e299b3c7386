"""Direct preference optimisation (Rafailov et al., 2023): learn from pairs of better and worse answers.

For a prompt x with a chosen answer y_c and a rejected one y_r, the policy pi (the model being trained)
and a frozen reference model (the same model before DPO) each give the log-probability of every
answer, summed over the answer's tokens. The loss pushes the policy's preference beyond the reference's:

    loss = -log sigmoid(beta * ((log pi(y_c|x) - log pi(y_r|x)) - (log ref(y_c|x) - log ref(y_r|x))))

beta * (log pi(y|x) - log ref(y|x)) is the answer's implicit reward; reported are the reward margin
(chosen minus rejected), the reward accuracy (how often chosen > rejected), and the preference accuracy
(how often the policy itself gives the chosen answer the higher log-probability). beta sets how far the
policy may move from the reference: small beta, weak tether.

The reference is frozen, so its log-probabilities are computed once, before training, and travel in the
batches: no second model in memory, and a resumed run recomputes exactly the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from llmlab.errors import ConfigError, InputError
from llmlab.train.config import TrainConfig
from llmlab.train.distributed import DistInfo, setup_process
from llmlab.train.examples import IGNORE, ExampleBatches, pad_id, split_validation
from llmlab.train.loop import TrainResult
from llmlab.train.lora import adapters_off
from llmlab.train.preferences import collate_pairs, encode_pair, preference_pairs
from llmlab.train.posttrain import (ExactMatchEval, PostTraining, PostTrainOptions, build_trainer, held_out_examples,
                                    load_start, write_posttrain_report)


@dataclass
class DPOOptions(PostTrainOptions):
    beta: float = 0.1
    nll_weight: float = 0.0  # > 0 adds that times the chosen answers' per-token NLL (RPO, Pang et al., 2024)
    eval_data: str | None = None  # preference JSONL for held-out metrics (with data="tasks": their held-out pairs)
    exact_match: bool = True  # with data="tasks": also score exact match on held-out prompts


# --- the loss -----------------------------------------------------------------------------------------

def sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(answer | prompt) per row: the sum of the log-probabilities of the targets that are not -100."""
    logits, _ = model(input_ids)
    token_nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                reduction="none")
    return -token_nll.view(targets.shape).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean DPO loss over pairs, and the implicit-reward statistics of the batch."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    stats = {
        "reward_margin": (chosen_reward - rejected_reward).mean(),
        "reward_accuracy": (chosen_reward > rejected_reward).float().mean(),
        "chosen_reward": chosen_reward.mean(),
        "rejected_reward": rejected_reward.mean(),
        "preference_accuracy": (policy_chosen > policy_rejected).float().mean(),
    }
    return loss, {k: v.detach() for k, v in stats.items()}


class DPOLoss:
    """The training loop's loss hook: one forward over chosen and rejected rows together.

    With `nll_weight` > 0 it adds the chosen answers' mean per-token negative log-likelihood (an SFT term
    on the preferred answers, as RPO does): plain DPO can raise the margin while lowering the chosen
    answers' own probability, which hurts generation when the two answers share most of their tokens.
    """

    def __init__(self, beta: float, nll_weight: float = 0.0) -> None:
        if beta <= 0:
            raise ConfigError(f"beta must be positive, got {beta}", hint="typical values lie between 0.05 and 0.5")
        if nll_weight < 0:
            raise ConfigError(f"nll_weight must not be negative, got {nll_weight}")
        self.beta, self.nll_weight = beta, nll_weight

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logps = sequence_logprobs(model, batch["input_ids"], batch["targets"])
        ref = batch["ref_logps"].to(logps.device, logps.dtype)
        half = logps.shape[0] // 2
        loss, stats = dpo_loss(logps[:half], logps[half:], ref[:half], ref[half:], self.beta)
        if self.nll_weight:
            lengths = (batch["targets"][:half] != IGNORE).sum(-1).to(logps.dtype)
            nll = -(logps[:half] / lengths).mean()
            loss = loss + self.nll_weight * nll
            stats["chosen_nll"] = nll.detach()
        return loss, stats  # detached device scalars: the loop reads them when it logs


@torch.no_grad()
def add_reference_logprobs(model: torch.nn.Module, pairs: list[dict[str, Any]], pad_id: int,
                           device: torch.device, batch_size: int = 16) -> None:
    """Store the frozen reference's log-probabilities of both answers in every pair (eval mode, fp32)."""
    was_training = model.training
    model.eval().to(device)
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        batch = collate_pairs(chunk, pad_id)
        logps = sequence_logprobs(model, batch["input_ids"].to(device), batch["targets"].to(device)).double().cpu()
        for j, pair in enumerate(chunk):
            pair["ref_chosen"], pair["ref_rejected"] = float(logps[j]), float(logps[len(chunk) + j])
    model.train(was_training)


class DPOEval:
    """Held-out pairs: DPO loss, reward margin and accuracy, preference accuracy; plus exact match for tasks."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], beta: float, device: torch.device,
                 exact: ExactMatchEval) -> None:
        self.batches, self.beta, self.device, self.exact = batches, beta, device, exact

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        return {**preference_metrics(model, self.batches, self.beta, self.device), **self.exact(model)}


@torch.no_grad()
def preference_metrics(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], beta: float,
                       device: torch.device) -> dict[str, float]:
    """DPO statistics over every pair of `batches` (pair-weighted means), prefixed "val_"."""
    sums: dict[str, float] = {}
    n = 0
    for batch in batches:
        logps = sequence_logprobs(model, batch["input_ids"].to(device), batch["targets"].to(device)).double()
        ref = batch["ref_logps"].to(device)
        half = logps.shape[0] // 2
        loss, stats = dpo_loss(logps[:half], logps[half:], ref[:half], ref[half:], beta)
        for k, v in {"loss": loss, **stats}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * half
        n += half
    return {f"val_{k}": v / n for k, v in sums.items()}


# --- the run ---------------------------------------------------------------------------------------------

def prepare_dpo(config: TrainConfig, options: DPOOptions, resume: bool = False,
                info: DistInfo | None = None) -> PostTraining:
    """Encode the pairs, score them with the frozen reference (the starting model) and build the trainer."""
    if options.system is not None:
        raise ConfigError("options.system is honoured by SFT and RL only; preference pairs keep the template's default")
    device, info = setup_process(config, info)
    loss_fn = DPOLoss(options.beta, options.nll_weight)
    start = load_start(config, options, resume)
    limit = start.model.config.context_length + 1
    train_pairs, held_pairs = preference_pairs(options, config.seed)
    encode = lambda pairs: [e for e in (encode_pair(p, start.tokenizer, limit) for p in pairs) if e is not None]  # noqa: E731
    train = encode(train_pairs)
    notes = list(start.notes)
    if held_pairs is None:
        train, val = split_validation(train, config.val_fraction, config.seed)
    else:
        val = encode(held_pairs)
    if len(train) < len(train_pairs) and held_pairs is not None:
        notes.append(f"{len(train_pairs) - len(train)} pairs lost their answers to truncation and were skipped")
    if not train or not val:
        raise InputError("no usable preference pairs left after truncation to the context window")
    pad = pad_id(start.tokenizer)
    # The reference is the starting model: the weights before the trainer loads a resumed checkpoint,
    # and without the LoRA adapter (which a resumed LoRA run has already loaded).
    with adapters_off(start.model):
        add_reference_logprobs(start.model, train + val, pad, device)
    collate = lambda rows: collate_pairs(rows, pad)  # noqa: E731
    batches = ExampleBatches(train, collate, config.micro_batch, config.grad_accum or 1, config.seed,
                             info.rank, info.world)
    val_batches = [collate(val[i : i + config.micro_batch]) for i in range(0, len(val), config.micro_batch)]
    examples = held_out_examples(options, config.seed) if options.exact_match and options.data == "tasks" else []
    evaluate = DPOEval(val_batches, options.beta, device, ExactMatchEval(start.tokenizer, examples, options.max_new_tokens))
    trainer = build_trainer(config, options, start, batches, loss_fn, evaluate if info.is_main else None,
                            "dpo", resume, info, device)
    return PostTraining(trainer, start.tokenizer, len(train), len(val), notes)


def dpo(config: TrainConfig, options: DPOOptions, resume: bool = False, until_step: int | None = None) -> TrainResult:
    """Preference-tune `config.init_from` on `options.data`; writes checkpoints, metrics and report.md."""
    run = prepare_dpo(config, options, resume)
    result = run.trainer.fit(until_step)
    if run.trainer.info.is_main:
        write_posttrain_report(run, result, options, "Direct preference optimisation")
    return result
