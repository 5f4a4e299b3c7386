"""Choosing the next token: the one sampling implementation the CLI, server, training and eval share.

A decoding step turns the model's logits for the last position into one token id:

    logits -> penalties (repetition, frequency, presence) -> / temperature
           -> keep top-k -> keep top-p (nucleus) -> keep min-p -> softmax -> draw with the request's RNG

Temperature 0 means greedy (argmax). Each filter masks logits with -inf, so what is left renormalises
in the softmax. The filters are separate functions so that tests can check exactly which tokens each keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from llmlab.errors import ConfigError


@dataclass
class SamplingParams:
    """How to decode one request. Defaults follow docs/design.md; temperature=0 is greedy.

    Penalties follow common practice (vLLM / OpenAI): `repetition_penalty` (CTRL, Keskar et al. 2019)
    divides positive and multiplies negative logits of every token already in the prompt or output;
    `frequency_penalty` subtracts penalty * count and `presence_penalty` subtracts penalty once, for
    tokens already generated. `stop` strings end the completion and are not part of its text;
    `stop_token_ids` are extra end tokens besides the tokenizer's end-of-text / end-of-turn tokens.
    `n` samples per prompt use seeds seed, seed+1, ... so they differ but stay reproducible.
    """

    max_new_tokens: int = 64
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    n: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid value."""
        checks = [
            (self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}"),
            (math.isfinite(self.temperature) and self.temperature >= 0,
             f"temperature must be >= 0 (0 is greedy), got {self.temperature}"),
            (self.top_k is None or self.top_k >= 0, f"top_k must be >= 0 (0 or None keeps all), got {self.top_k}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0 (1 is off), got {self.repetition_penalty}"),
            (-2.0 <= self.frequency_penalty <= 2.0, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (-2.0 <= self.presence_penalty <= 2.0, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (self.top_logprobs >= 0, f"top_logprobs must be >= 0, got {self.top_logprobs}"),
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message, hint="see `llmlab generate --help` for each option's range")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or self.top_logprobs > 0

    def replace(self, **changes) -> "SamplingParams":
        return replace(self, **changes)


def apply_penalties(
    logits: torch.Tensor, context: torch.Tensor, generated: torch.Tensor, params: SamplingParams
) -> torch.Tensor:
    """Penalise tokens already seen. logits: (V,); context: all token ids so far; generated: the output's ids."""
    if params.repetition_penalty != 1.0 and context.numel():
        seen = torch.unique(context)
        values = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    if (params.frequency_penalty or params.presence_penalty) and generated.numel():
        counts = torch.bincount(generated, minlength=logits.numel()).to(logits.dtype)
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits (exactly k: ties at the boundary go by index order); k None/0 keeps all."""
    if not k or k >= logits.size(-1):
        return logits
    keep = torch.topk(logits, k, dim=-1).indices
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, keep, logits.gather(-1, keep))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus (Holtzman et al., 2020): keep the fewest most-likely tokens whose probability sums to >= p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = sorted_logits.softmax(dim=-1)
    # A token is dropped when the tokens before it already reach p; the first token always stays.
    before = probs.cumsum(dim=-1) - probs
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p (Nguyen et al., 2024): keep tokens whose probability is >= min_p x the top token's."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, float("-inf"))


def processed_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    context: torch.Tensor | None = None,
    generated: torch.Tensor | None = None,
) -> torch.Tensor:
    """The logits the sampler draws from: penalties, temperature, then the top-k / top-p / min-p filters.

    For greedy decoding only penalties apply (temperature and filters do not change the argmax).
    """
    logits = logits.float()
    if context is not None and generated is not None:
        logits = apply_penalties(logits, context, generated, params)
    if params.greedy:
        return logits
    logits = logits / params.temperature
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """Draw one token id from already-processed logits (V,): argmax when greedy, else from softmax."""
    if params.greedy:
        return int(torch.argmax(logits))
    probs = logits.softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private RNG per request, so its samples do not depend on what else runs in the batch.

    Without a seed the request draws one from torch's global RNG, so `torch.manual_seed` still
    makes a whole run reproducible.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
