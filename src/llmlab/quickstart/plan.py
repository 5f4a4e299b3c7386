"""How the quickstart spends its time budget: which stage gets how long, and how big a model fits.

The model is sized the textbook way: training costs C = 6·N·D FLOPs (Kaplan et al., 2020) and the
compute-optimal split puts D ≈ 20·N (Hoffmann et al., 2022, "Chinchilla"), so N ≈ sqrt(C / 120). With
little text, repeating it more than ~4 times stops helping (Muennighoff et al., 2023), so when the
optimal D exceeds 4 passes over the data the budget goes into a larger model instead: N = C / (6·D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmlab.estimate import chinchilla_optimal, param_breakdown
from llmlab.model import GPTConfig, from_depth

EVAL_RESERVE_S = 90.0  # greedy answers for base and SFT models, and the report
MIN_PRETRAIN_S = 20.0
MIN_SFT_S = 10.0
MAX_EPOCHS = 4
PRETRAIN_SHARE = 0.8


@dataclass(frozen=True)
class Budget:
    pretrain: float
    sft: float


def split_budget(remaining_s: float) -> Budget:
    """Seconds for pretraining and SFT out of what the earlier stages left (80/20 after a reserve).

    SFT on a thousand short questions needs a few epochs, not minutes: pretraining gets the rest.
    """
    trainable = max(0.0, remaining_s - EVAL_RESERVE_S)
    return Budget(pretrain=max(MIN_PRETRAIN_S, PRETRAIN_SHARE * trainable),
                  sft=max(MIN_SFT_S, (1 - PRETRAIN_SHARE) * trainable))


@dataclass(frozen=True)
class ModelPlan:
    config: GPTConfig
    depth: int
    params: int
    target_params: float
    compute_flops: float
    reason: str


def optimal_params(compute_flops: float, tokens_available: float) -> tuple[float, str]:
    """Chinchilla-optimal parameter count for the compute, unless the data runs out first."""
    chinchilla = chinchilla_optimal(compute_flops)["params"]
    if 20 * chinchilla <= MAX_EPOCHS * tokens_available:
        return chinchilla, f"Chinchilla-optimal: N = sqrt(C/120) = {chinchilla:,.0f}"
    data_limited = compute_flops / (6 * MAX_EPOCHS * tokens_available)
    return data_limited, (
        f"data-limited: {MAX_EPOCHS} passes over {tokens_available:,.0f} tokens, so N = C/(6D) = {data_limited:,.0f} "
        f"(Chinchilla alone would say {chinchilla:,.0f})"
    )


def plan_model(
    seconds: float, flops_per_second: float, tokens_available: int, vocab_size: int, context_length: int,
    max_depth: int = 12,
) -> ModelPlan:
    """The depth (llmlab's size dial) whose parameter count is closest to the optimum for this budget."""
    compute = seconds * flops_per_second
    target, reason = optimal_params(compute, tokens_available)
    best = None
    for depth in range(1, max_depth + 1):
        config = from_depth(depth, vocab_size=vocab_size, context_length=context_length)
        params = param_breakdown(config)["total"]
        distance = abs(math.log(params / target))
        if best is None or distance < best[0]:
            best = (distance, depth, config, params)
    _, depth, config, params = best
    return ModelPlan(config, depth, params, target, compute, reason)
