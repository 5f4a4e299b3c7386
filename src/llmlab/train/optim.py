"""AdamW with decoupled weight decay on the right parameters, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices that multiply activations decay; norms, biases and embeddings do not.

    Decay pulls weights toward zero; that regularises the linear maps but would shrink a norm's gain
    toward zero and tokens' embeddings toward each other (GPT-3, nanoGPT). A tied head shares the
    embedding's tensor and is listed once, without decay.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() yields a shared (tied) tensor once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def decay_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters in the decayed and the non-decayed group (for reports and tests)."""
    groups = param_groups(model, 1.0)
    ids = [{id(p) for p in g["params"]} for g in groups]
    names = dict((id(p), n) for n, p in model.named_parameters())
    return [names[i] for i in names if i in ids[0]], [names[i] for i in names if i in ids[1]]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float
) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the fused kernel where PyTorch has one for the parameters' device.

    The fused step updates each parameter in one pass over memory instead of a chain of elementwise ops,
    which matters on CPU where the optimizer is memory-bound.
    """
    groups = param_groups(model, weight_decay)
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= {"cpu", "cuda", "mps"} and not _has_dtensor(groups)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None, foreach=None if fused else True)


def _has_dtensor(groups: list[dict]) -> bool:
    # FSDP2 parameters are DTensors; the foreach path is the one PyTorch tests with them.
    return any(type(p).__name__ == "DTensor" for g in groups for p in g["params"])


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float,
          time_fraction: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine decay to peak * min_ratio.

    Step 0 already gets peak / warmup (not zero, which would waste a step); the warmup ends at
    `warmup`, the cosine reaches its floor at `total` and stays there. A run with a deadline passes the
    fraction of its time spent: the cosine then follows whichever of steps and time is further along.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    floor = peak * min_ratio
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if time_fraction is not None:
        progress = max(progress, min(1.0, time_fraction))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
