"""Speculative decoding (Leviathan et al., 2023; Chen et al., 2023): a small draft model guesses, the target checks.

One round:
    1. the draft model proposes k tokens d_1..d_k one at a time, each from its distribution q_i;
    2. the target scores the pending token plus all k guesses in ONE forward, giving p_1..p_{k+1};
    3. guess i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection a token
       is drawn from the residual max(0, p_i - q_i) (renormalised) and the round ends; if all k pass,
       a bonus token is drawn from p_{k+1}.
Every emitted token is then distributed exactly as if sampled from the target alone, and with greedy
decoding (p, q one-hot) the output is identical to the target's greedy output. The speed-up comes from
the target doing one forward per round instead of one per token; the acceptance rate says how often
the draft agrees. Rejected guesses are forgotten by truncating both KV caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from llmlab.errors import ConfigError
from llmlab.infer.engine import Completion, Engine, eval_mode
from llmlab.infer.sampling import SamplingParams, processed_logits
from llmlab.infer.sequence import StreamEvent
from llmlab.model.frozen import compute_dtype
from llmlab.model.transformer import KVCache


@dataclass
class SpeculativeStats:
    proposed: int = 0  # draft tokens offered to the target
    accepted: int = 0  # of which the target kept
    rounds: int = 0  # target forwards after the prefill

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_round(self) -> float:
        return (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0


def distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a token is drawn from: one-hot argmax when greedy, else the processed softmax."""
    scores = processed_logits(logits, params)
    if params.greedy:
        return torch.nn.functional.one_hot(scores.argmax(-1), scores.size(-1)).float()
    return scores.softmax(-1)


def accept_or_resample(
    p: torch.Tensor, q: torch.Tensor, drafts: Sequence[int], generator: torch.Generator | None = None
) -> tuple[int, int]:
    """The accept/reject rule. p: (k+1, V) target, q: (k, V) draft distributions; returns (n accepted, next token)."""
    for i, x in enumerate(drafts):
        u = float(torch.rand((), generator=generator, device=p.device))
        if u * float(q[i, x]) < float(p[i, x]):  # u < p/q without dividing
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        return i, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))


class _Runner:
    """A model with its own KV cache, fed whatever tokens of the sequence it has not seen yet."""

    def __init__(self, model: torch.nn.Module, max_len: int, device: torch.device) -> None:
        self.model = model
        self.cache = KVCache(model.config, 1, max_len, device, compute_dtype(model))
        self.device = device

    @torch.inference_mode()
    def feed(self, ids: list[int]) -> torch.Tensor:
        """Process the unseen tail of `ids`; return logits for each of those positions."""
        new = ids[self.cache.length :]
        logits, _ = self.model(torch.tensor([new], device=self.device), kv_cache=self.cache)
        return logits[0]


def speculative_stream(
    engine: Engine, draft: torch.nn.Module, prompt, params: SamplingParams, num_draft_tokens: int = 4,
    stats: SpeculativeStats | None = None,
) -> Iterator[StreamEvent]:
    """Stream a completion of one prompt by the engine's (target) model, drafted by `draft`.

    Text, stop strings, end tokens and the budget are handled exactly as in `Engine.stream`.
    """
    with eval_mode(engine.model), eval_mode(draft):
        yield from _speculative_events(engine, draft, prompt, params, num_draft_tokens, stats)


def _speculative_events(engine, draft, prompt, params, num_draft_tokens, stats) -> Iterator[StreamEvent]:
    if draft.config.vocab_size != engine.config.vocab_size:
        raise ConfigError(
            f"the draft model's vocabulary ({draft.config.vocab_size}) differs from the target's "
            f"({engine.config.vocab_size})", hint="a draft model must share the target's tokenizer",
        )
    if params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty or params.wants_logprobs:
        raise ConfigError("speculative decoding supports temperature, top-k, top-p and min-p only",
                          hint="drop penalties and logprobs, or decode without --draft")
    if num_draft_tokens < 1:
        raise ConfigError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
    stats = stats if stats is not None else SpeculativeStats()
    prompt = engine.encode(prompt)
    engine._check_length(prompt)
    seq = engine._sequence((prompt, params, params.seed, 0))
    if seq.finish_reason is not None:
        return
    budget = min(seq.budget, draft.config.context_length - len(prompt))
    max_len = len(prompt) + budget
    target, drafter = _Runner(engine.model, max_len, engine.device), _Runner(draft, max_len, engine.device)
    ids = list(prompt)
    if len(ids) > 1:  # prefill all but the pending last token
        target.feed(ids[:-1])
        drafter.feed(ids[:-1])
    produced = 0
    while True:
        k = min(num_draft_tokens, budget - produced - 1)
        drafts, q = [], []
        for _ in range(k):
            dist = distribution(drafter.feed(ids + drafts)[-1], params)
            drafts.append(int(torch.multinomial(dist, 1, generator=seq.generator)))
            q.append(dist)
        p = distribution(target.feed(ids + drafts)[-(k + 1):], params)
        n, token = accept_or_resample(p, torch.stack(q) if q else p[:0], drafts, seq.generator)
        stats.proposed, stats.accepted, stats.rounds = stats.proposed + k, stats.accepted + n, stats.rounds + 1
        target.cache.truncate(len(ids) + n)
        drafter.cache.truncate(len(ids) + n)
        for t in drafts[:n] + [token]:
            ids.append(t)
            produced += 1
            yield seq.add(t, None, None)
            if seq.finish_reason is not None:
                return


def speculative_generate(
    engine: Engine, draft: torch.nn.Module, prompt, params: SamplingParams, num_draft_tokens: int = 4
) -> tuple[Completion, SpeculativeStats]:
    """A whole completion plus how many draft tokens the target accepted."""
    stats = SpeculativeStats()
    completion = Completion("", [], "length", len(engine.encode(prompt)), 0)
    for event in speculative_stream(engine, draft, prompt, params, num_draft_tokens, stats):
        completion.text += event.text
        completion.token_ids.append(event.token_id)
        completion.completion_tokens += 1
        completion.finish_reason = event.finish_reason or completion.finish_reason
    return completion, stats
