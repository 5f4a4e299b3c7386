"""Knowledge distillation (Hinton et al. 2015): a student learns from the data and from a teacher's
softened next-token distribution at once.

    L = alpha * CE(student, data) + (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)

p^T is the softmax of logits / T: a temperature T > 1 spreads the teacher's probability over the tokens
it ranks below its first choice, which is what the student learns from the teacher beyond the data's
one-hot targets; T^2 keeps that term's gradients on the scale of the CE term's as T changes. The run is
a pretraining run on the same token windows (the one training loop, its checkpoints, resume, report),
with this loss in place of the cross-entropy; the teacher, frozen, runs on each micro-batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from llmlab.errors import CheckpointError, ConfigError
from llmlab.model.loading import load_model
from llmlab.train.config import TrainConfig
from llmlab.train.data import check_compatible, open_shards
from llmlab.train.distributed import setup_process
from llmlab.train.loop import MODEL_INPUTS, TrainResult
from llmlab.train.pretrain import prepare, summarize


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, alpha: float,
    temperature: float, ignore_index: int = -100,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, {"ce", "kl"}) over the positions whose target is not `ignore_index`, in fp32.
    Logits (B, T, V); the KL is per position, averaged like the cross-entropy."""
    s, t = student_logits.float().flatten(0, 1), teacher_logits.float().flatten(0, 1)
    targets = targets.flatten()
    ce = F.cross_entropy(s, targets, ignore_index=ignore_index)
    keep = (targets != ignore_index).float()
    log_p_student = F.log_softmax(s / temperature, dim=-1)
    log_p_teacher = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    kl = (kl * keep).sum() / keep.sum()
    loss = alpha * ce + (1 - alpha) * temperature**2 * kl
    return loss, {"ce": ce.detach(), "kl": kl.detach()}


@dataclass
class DistillLoss:
    """The loop's loss function: the student's logits against the data and the frozen teacher's."""

    teacher: torch.nn.Module
    alpha: float
    temperature: float

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        extra = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        logits, _ = model(batch["input_ids"], **extra)
        with torch.no_grad():
            teacher_logits, _ = self.teacher(batch["input_ids"], **extra)
        return distillation_loss(logits, teacher_logits, batch["targets"], self.alpha, self.temperature)


def distill(
    config: TrainConfig, teacher: str | os.PathLike, alpha: float = 0.5, temperature: float = 2.0,
    resume: bool = False, until_step: int | None = None,
) -> TrainResult:
    """Train the student that `config` describes on its token shards, taught by `teacher` (a checkpoint,
    a run directory, a .gguf file or `smollm2-135m`), which must use the tokenizer that wrote the shards.
    The student gets the teacher's vocabulary size unless it starts from a checkpoint."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha} must lie in [0, 1] (1 trains on the data alone)")
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature} must be positive")
    device, info = setup_process(config)
    teacher_model, teacher_tokenizer = load_model(teacher, device=device)
    teacher_model.requires_grad_(False)
    vocab = teacher_model.config.vocab_size
    try:
        check_compatible(open_shards(config.shards).meta, vocab, teacher_tokenizer, teacher)
    except CheckpointError as e:
        raise CheckpointError(f"the teacher cannot read these shards: {e.message}", hint=e.hint) from e
    if not config.init_from:
        config = replace(config, model={"vocab_size": vocab, **config.model})
    run = prepare(config, resume=resume, info=info, loss_fn=DistillLoss(teacher_model, alpha, temperature),
                  stage="distill")
    if run.trainer.gpt.config.vocab_size != vocab:
        raise ConfigError(f"the student's vocabulary ({run.trainer.gpt.config.vocab_size}) differs from the "
                          f"teacher's ({vocab}): the two distributions must be over the same tokens")
    run.notes.append(f"distilled from {teacher} ({teacher_model.num_params():,} parameters), alpha {alpha}, "
                     f"temperature {temperature}; train_loss is the distillation loss, validation the student's "
                     "cross-entropy; throughput and MFU count the student's FLOPs only")
    result = run.trainer.fit(until_step)
    if run.trainer.info.is_main:
        summarize(run, result)
    return result
