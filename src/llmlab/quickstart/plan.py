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
# The share of the matmul peak a whole training step reaches. CPU: about half of the measured fp32 peak
# (attention, norms, optimizer and data cost the rest). GPU: of the datasheet bf16 peak, about a third:
# `llmlab train` measured 33% on an H200 with compile (issue 17); small models reach less, so assume 25%.
EXPECTED_MFU = {"cpu": 0.5, "cuda": 0.25}


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


@dataclass(frozen=True)
class TrainingPlan:
    model: ModelPlan
    micro_batch: int
    compile: bool
    expected_steps: int  # at the expected speed, the budget's steps
    max_steps: int  # MAX_EPOCHS passes over the data, or a machine far faster than planned: the step cap


def plan_pretraining(
    seconds: float, device_type: str, peak_flops: float, tokens_available: int, vocab_size: int, context_length: int,
) -> TrainingPlan:
    """Model size, batch and step bounds for `seconds` of pretraining on a device of this kind and peak.

    A GPU gets bf16 with torch.compile, a larger batch and the up-to-GPT-2-small sizes its speed buys;
    it may finish its passes over a small corpus before the deadline (the step cap then ends the run
    and the schedule, which follows whichever of steps and time is further along)."""
    gpu = device_type == "cuda"
    sized = plan_model(seconds, EXPECTED_MFU.get(device_type, 0.5) * peak_flops, tokens_available, vocab_size,
                       context_length)
    micro_batch = 32 if gpu else 8
    tokens_per_step = micro_batch * context_length
    expected = max(1, round(sized.compute_flops / (6 * sized.params * tokens_per_step)))
    passes = max(1, math.ceil(MAX_EPOCHS * tokens_available / tokens_per_step))
    return TrainingPlan(sized, micro_batch, compile=gpu, expected_steps=min(expected, passes),
                        max_steps=min(4 * expected, passes))
