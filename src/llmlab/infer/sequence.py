"""One sequence being generated, whatever batch it runs in: sampling, end tokens, stop strings, streaming.

Each sequence owns its RNG (seeded per request), its token history (for penalties), its incremental
UTF-8 decoder and, for constrained output (JSON, tool calls), its place in the grammar (`infer/constrained.py`), so the tokens it produces and the text it streams do not depend on which other sequences
share its batch. The engine's static batches and the continuous batcher both drive this one class.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any

import torch

from llmlab.infer.constrained import GrammarConstraint, json_grammar
from llmlab.infer.sampling import SamplingParams, make_generator, processed_logits, sample

# Special tokens that end a completion whenever the tokenizer has them (end of text / end of turn).
END_TOKENS = ("<|endoftext|>", "<|end|>", "<|im_end|>", "<|eot_id|>")


@dataclass
class StreamEvent:
    """One generated token. `text` is the new text it completes (maybe "" while UTF-8 or a stop string is pending)."""

    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, str, float]] | None = None
    finish_reason: str | None = None
    index: int = 0


class SequenceState:
    """One sequence being generated: its tokens, its RNG and the text it has streamed so far."""

    def __init__(self, prompt: list[int], params: SamplingParams, budget: int, end_ids: set[int],
                 tokenizer: Any, device: torch.device, seed: int | None, index: int) -> None:
        self.prompt, self.params, self.budget, self.tokenizer, self.index = prompt, params, budget, tokenizer, index
        # A grammar decides where constrained output ends, so ignore_eos does not apply to it.
        grammar = params.grammar if params.json_schema is None else json_grammar(params.json_schema)
        self.constraint = None if grammar is None else GrammarConstraint(tokenizer, grammar, end_ids)
        self.end_ids = set() if params.ignore_eos and self.constraint is None else end_ids
        self.end_ids |= set(params.stop_token_ids)
        self.generator = make_generator(seed, device)
        self.generated: list[int] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None if budget > 0 else "length"
        self.max_stop = max((len(s) for s in params.stop), default=0)
        # Penalties and logprobs need this sequence's own history or outputs: no shared sampling step.
        penalised = params.repetition_penalty != 1.0 or bool(params.frequency_penalty or params.presence_penalty)
        self.samples_alone = penalised or params.wants_logprobs

    def next_token(self, logits: torch.Tensor, allowed: torch.Tensor | None = None) -> tuple[int, float | None, list | None]:
        """Sample this sequence's next token from the model's logits (V,); `allowed` is its grammar's mask,
        computed here when the caller has not batched it. Logprobs are the model's, before any mask."""
        p = self.params
        if allowed is None and self.constraint is not None:
            allowed = self.constraint.allowed(logits.size(-1), logits.device)
        penalised = p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty
        if penalised:
            gen = torch.tensor(self.generated, dtype=torch.long, device=logits.device)
            ctx = torch.cat([torch.tensor(self.prompt, dtype=torch.long, device=logits.device), gen])
            scores = processed_logits(logits, p, ctx, gen, allowed)
        else:
            scores = processed_logits(logits, p, allowed=allowed)
        token = sample(scores, p, self.generator)
        if not p.wants_logprobs:
            return token, None, None
        logprobs = logits.float().log_softmax(dim=-1)
        top = []
        if p.top_logprobs:
            values, ids = torch.topk(logprobs, min(p.top_logprobs, logprobs.numel()))
            top = [(int(i), self._piece(int(i)), float(v)) for v, i in zip(values, ids)]
        return token, float(logprobs[token]), top

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.tokenizer is not None else ""

    def add(self, token: int, logprob: float | None, top: list | None) -> StreamEvent:
        """Record a sampled token and return the text it makes safe to show."""
        self.generated.append(token)
        if self.constraint is not None:
            self.constraint.advance(token)
        if token in self.end_ids:
            self.finish_reason = "stop"
        else:
            start = max(0, len(self.text) - self.max_stop + 1)
            if self.tokenizer is not None:
                self.text += self.decoder.decode(self.tokenizer.decode_bytes([token]))
            hits = [at for at in (self.text.find(stop, start) for stop in self.params.stop) if at != -1]
            if hits:
                self.text, self.finish_reason = self.text[: min(hits)], "stop"
            elif self.constraint_finished:
                self.finish_reason = "stop"  # the JSON is complete: nothing may follow it
            if self.finish_reason is None and len(self.generated) >= self.budget:
                self.finish_reason = "length"
        if self.finish_reason is not None:
            if self.finish_reason == "length" or token in self.end_ids or self.constraint_finished:
                self.text += self.decoder.decode(b"", final=True)
            end = len(self.text)
        else:
            end = len(self.text) - self._pending_stop_prefix()
        delta, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return StreamEvent(token, delta, logprob, top, self.finish_reason, self.index)

    @property
    def constraint_finished(self) -> bool:
        return self.constraint is not None and self.constraint.finished

    def _pending_stop_prefix(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string (held back)."""
        for n in range(min(self.max_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(stop.startswith(tail) for stop in self.params.stop):
                return n
        return 0


def end_token_ids(tokenizer: Any) -> set[int]:
    """Ids that end a completion: the tokenizer's end-of-text id and any end-of-turn special token."""
    if tokenizer is None:
        return set()
    ids = {tokenizer.special_tokens[t] for t in END_TOKENS if t in tokenizer.special_tokens}
    if tokenizer.eos_id is not None:
        ids.add(tokenizer.eos_id)
    return ids


def sample_seed(params: SamplingParams, index: int) -> int | None:
    """The seed of sample `index` of a request: seed, seed + 1, ... so n samples differ but stay reproducible."""
    return None if params.seed is None else params.seed + index


def new_sequence(prompt: list[int], params: SamplingParams, index: int, context_length: int, end_ids: set[int],
                 tokenizer: Any, device: torch.device) -> SequenceState:
    """Sample `index` of a request, allowed at most the rest of the context window."""
    budget = min(params.max_new_tokens, context_length - len(prompt))
    return SequenceState(prompt, params, budget, set(end_ids), tokenizer, device, sample_seed(params, index), index)
