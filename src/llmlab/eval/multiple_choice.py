"""Accuracy metrics of multiple-choice benchmarks, as lm-evaluation-harness defines them.

Given the log-likelihood ll_i of each choice i (the sum over its tokens, see `loglikelihood`):

- acc: 1 if argmax_i ll_i is the gold choice. Longer choices have more tokens and so lower sums, which
  favours short answers;
- acc_norm: 1 if argmax_i ll_i / len(choice_i) is gold, where len counts the choice's *characters*
  (without the leading space). Characters, unlike tokens, do not depend on the tokenizer, so acc_norm
  stays comparable across models;
- ties go to the lower index (numpy's argmax), which is what the harness does.

The standard error of a mean of n per-example scores is the sample standard deviation over sqrt(n)
(for 0/1 scores with mean p: sqrt(p (1 - p) / (n - 1))).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


@dataclass(frozen=True)
class ChoiceResult:
    pred: int
    pred_norm: int
    acc: float
    acc_norm: float


def score_choices(logprobs: Sequence[float], choices: Sequence[str], gold: int) -> ChoiceResult:
    """acc and acc_norm of one example from its choices' log-likelihoods."""
    if len(logprobs) != len(choices):
        raise ValueError(f"{len(logprobs)} scores for {len(choices)} choices")
    pred = argmax(logprobs)
    # A zero-length choice would divide by zero; the harness's numpy division would give inf/nan. None of
    # the supported tasks has one, so treat it as one character rather than crash.
    pred_norm = argmax([lp / max(len(c), 1) for lp, c in zip(logprobs, choices)])
    return ChoiceResult(pred, pred_norm, float(pred == gold), float(pred_norm == gold))


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean: sample standard deviation (n - 1 denominator) / sqrt(n); NaN for n < 2."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = mean(values)
    variance = sum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)
