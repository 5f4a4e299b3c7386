"""The generation engine: prefill once, then decode one token at a time from a KV cache.

    prompts -> token ids -> left-pad into one batch (attention mask + position ids)
            -> prefill: one forward over every prompt token, filling the KV cache
            -> decode:  one forward per new token, each reading the cache instead of recomputing it
            -> per sequence: sample, check end tokens / stop strings / length, stream a UTF-8-safe delta

Finished sequences leave the batch (their cache rows are dropped), so one long answer does not make the
others pay. `Engine.generate` returns whole completions; `Engine.stream` yields one event per token.
Both run the same loop, so streaming and non-streaming outputs are identical.
"""

from __future__ import annotations

import codecs
import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from llmlab.errors import ConfigError, InputError
from llmlab.infer.head import DecodeHead
from llmlab.infer.sampling import SamplingParams, make_generator, processed_logits, sample
from llmlab.model.transformer import KVCache

# Special tokens that end a completion whenever the tokenizer has them (end of text / end of turn).
END_TOKENS = ("<|endoftext|>", "<|end|>", "<|im_end|>", "<|eot_id|>")


@dataclass
class TokenLogprob:
    """A generated token with its log-probability under the model and the most likely alternatives."""

    token_id: int
    text: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end token or stop string) | "length"
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    index: int = 0  # which of the n samples of its prompt


@dataclass
class StreamEvent:
    """One generated token. `text` is the new text it completes (maybe "" while UTF-8 or a stop string is pending)."""

    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, str, float]] | None = None
    finish_reason: str | None = None
    index: int = 0


class _Sequence:
    """One row of the batch: its tokens, its RNG and the text it has streamed so far."""

    def __init__(self, prompt: list[int], params: SamplingParams, budget: int, end_ids: set[int],
                 tokenizer: Any, device: torch.device, seed: int | None, index: int) -> None:
        self.prompt, self.params, self.budget, self.tokenizer, self.index = prompt, params, budget, tokenizer, index
        self.end_ids = set() if params.ignore_eos else end_ids
        self.end_ids |= set(params.stop_token_ids)
        self.generator = make_generator(seed, device)
        self.generated: list[int] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.emitted = 0
        self.finish_reason: str | None = None if budget > 0 else "length"
        self.max_stop = max((len(s) for s in params.stop), default=0)

    def next_token(self, logits: torch.Tensor) -> tuple[int, float | None, list | None]:
        p = self.params
        penalised = p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty
        if penalised:
            gen = torch.tensor(self.generated, dtype=torch.long, device=logits.device)
            ctx = torch.cat([torch.tensor(self.prompt, dtype=torch.long, device=logits.device), gen])
            scores = processed_logits(logits, p, ctx, gen)
        else:
            scores = processed_logits(logits, p)
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
        if token in self.end_ids:
            self.finish_reason = "stop"
        else:
            start = max(0, len(self.text) - self.max_stop + 1)
            if self.tokenizer is not None:
                self.text += self.decoder.decode(self.tokenizer.decode_bytes([token]))
            hits = [at for at in (self.text.find(stop, start) for stop in self.params.stop) if at != -1]
            if hits:
                self.text, self.finish_reason = self.text[: min(hits)], "stop"
            if self.finish_reason is None and len(self.generated) >= self.budget:
                self.finish_reason = "length"
        if self.finish_reason is not None:
            if self.finish_reason == "length" or token in self.end_ids:
                self.text += self.decoder.decode(b"", final=True)
            end = len(self.text)
        else:
            end = len(self.text) - self._pending_stop_prefix()
        delta, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return StreamEvent(token, delta, logprob, top, self.finish_reason, self.index)

    def _pending_stop_prefix(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string (held back)."""
        for n in range(min(self.max_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(stop.startswith(tail) for stop in self.params.stop):
                return n
        return 0


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Generate without dropout, then give the model back in the mode it was in (training samples)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def end_token_ids(tokenizer: Any) -> set[int]:
    """Ids that end a completion: the tokenizer's end-of-text id and any end-of-turn special token."""
    if tokenizer is None:
        return set()
    ids = {tokenizer.special_tokens[t] for t in END_TOKENS if t in tokenizer.special_tokens}
    if tokenizer.eos_id is not None:
        ids.add(tokenizer.eos_id)
    return ids


class Engine:
    """Generate from one model: batched, KV-cached, streaming. See docs/inference.md.

    `tokenizer` may be None when prompts are token ids and only ids are wanted (tests, tiny models).
    `use_kv_cache=False` recomputes the whole sequence at every step (for teaching and for tests).
    The model runs in eval mode while generating and is handed back in the mode it was in.
    Prompts are processed in batches of at most `max_batch_size` rows, grouped by length.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, use_kv_cache: bool = True,
                 max_batch_size: int = 32) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.use_kv_cache = use_kv_cache
        self.max_batch_size = max_batch_size
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.end_ids = end_token_ids(tokenizer)

    # ----- prompts -----------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a prompt; text may contain special tokens (e.g. a rendered chat)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ConfigError("this engine has no tokenizer, so prompts must be token ids")
            ids = self.tokenizer.encode(prompt, allowed_special="all")
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            eos = getattr(self.tokenizer, "eos_id", None)
            if eos is None:
                raise InputError("the prompt is empty", hint="give at least one token")
            ids = [eos]  # documents in training start after <|endoftext|>: an empty prompt starts a new one
        return ids

    def _check_length(self, ids: list[int]) -> None:
        limit = self.config.context_length
        if len(ids) >= limit:
            raise InputError(
                f"the prompt is {len(ids)} tokens long; the model's context window is {limit} tokens "
                f"(at most {limit - 1} leave room for one new token)",
                hint="shorten the prompt",
            )

    # ----- public API ---------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[str] | Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams]
    ) -> list[Completion]:
        """Complete every prompt; with params.n > 1, prompt i's samples are at [i*n, (i+1)*n)."""
        rows = self._rows(prompts, params)
        results: dict[int, Completion] = {}
        for row, event in self._run_rows(rows):
            prompt, p, _, _ = rows[row]
            c = results.get(row)
            if c is None:
                c = results[row] = Completion("", [], "length", len(prompt), 0, [] if p.wants_logprobs else None,
                                              index=event.index)
            c.text += event.text
            c.token_ids.append(event.token_id)
            c.completion_tokens += 1
            if c.logprobs is not None:
                c.logprobs.append(TokenLogprob(event.token_id, self._piece(event.token_id), event.logprob,
                                               event.top_logprobs or []))
            if event.finish_reason:
                c.finish_reason = event.finish_reason
        for row, (prompt, p, _, index) in enumerate(rows):  # max_new_tokens=0 yields no events
            results.setdefault(row, Completion("", [], "length", len(prompt), 0, [] if p.wants_logprobs else None,
                                               index=index))
        return [results[r] for r in range(len(rows))]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams) -> Iterator[StreamEvent]:
        """Yield one StreamEvent per generated token; the last has finish_reason set.

        With params.n > 1 the samples' events interleave; `event.index` says whose each is.
        """
        for _, event in self._run_rows(self._rows([prompt], params)):
            yield event

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.tokenizer is not None else ""

    # ----- the decoding loop --------------------------------------------------------------------
    def _rows(self, prompts, params) -> list[tuple[list[int], SamplingParams, int | None, int]]:
        """(prompt ids, params, seed, sample index) per row; each prompt expands into params.n rows."""
        if isinstance(prompts, str) or (len(prompts) and isinstance(prompts[0], int)):
            raise ConfigError("generate() takes a list of prompts", hint="wrap a single prompt in a list")
        per_prompt = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise ConfigError(f"{len(per_prompt)} SamplingParams for {len(prompts)} prompts")
        rows = []
        for prompt, p in zip(prompts, per_prompt):
            p.validate()
            ids = self.encode(prompt)
            self._check_length(ids)
            for j in range(p.n):
                rows.append((ids, p, None if p.seed is None else p.seed + j, j))
        return rows

    def _run_rows(self, rows) -> Iterator[tuple[int, StreamEvent]]:
        """Run rows in length-sorted batches; yield (row number, event) as tokens are produced."""
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))
        for start in range(0, len(order), self.max_batch_size):
            batch = order[start : start + self.max_batch_size]
            sequences = [self._sequence(rows[r]) for r in batch]
            ctx = self.config.context_length
            longest = max(len(s.prompt) for s in sequences)
            if len(sequences) > 1 and any(longest + s.budget > ctx for s in sequences):
                # Left padding would push a short prompt's cache past the context window: run rows alone.
                for r, seq in zip(batch, sequences):
                    with eval_mode(self.model):
                        yield from ((r, e) for e in self._decode([seq]))
                continue
            row_of = {id(s): r for r, s in zip(batch, sequences)}
            with eval_mode(self.model):
                for seq, event in self._decode_tagged(sequences):
                    yield row_of[id(seq)], event

    def _sequence(self, row: tuple) -> _Sequence:
        prompt, p, seed, index = row
        budget = min(p.max_new_tokens, self.config.context_length - len(prompt))
        return _Sequence(prompt, p, budget, set(self.end_ids), self.tokenizer, self.device, seed, index)

    def _decode(self, sequences: list[_Sequence]) -> Iterator[StreamEvent]:
        for _, event in self._decode_tagged(sequences):
            yield event

    @torch.inference_mode()
    def _forward(self, ids, cache, positions, mask, head) -> torch.Tensor:
        """Logits of the last position only: in a prefill the output head (vocab x d_model, often the
        largest matrix) projects one position instead of all."""
        x, _ = self.model.hidden_states(ids, kv_cache=cache, position_ids=positions, attention_mask=mask)
        return head(x[:, -1])

    def _decode_tagged(self, sequences: list[_Sequence]) -> Iterator[tuple[_Sequence, StreamEvent]]:
        """Prefill and decode one batch until every sequence has finished."""
        active = [s for s in sequences if s.finish_reason is None]
        if not active:
            return
        B = len(active)
        lengths = [len(s.prompt) for s in active]
        P = max(lengths)
        total = P + max(s.budget for s in active)
        ids = torch.zeros(B, P, dtype=torch.long)
        mask = torch.zeros(B, total, dtype=torch.long)
        for b, s in enumerate(active):
            ids[b, P - len(s.prompt):] = torch.tensor(s.prompt)
            mask[b, P - len(s.prompt):] = 1  # padding on the left, every later (generated) key is real
        ids, mask = ids.to(self.device), mask.to(self.device)
        padded = min(lengths) != P
        # Without padding every row sits at positions 0, 1, ...: the model's default, sliced not gathered.
        positions = (mask[:, :P].cumsum(-1) - 1).clamp(min=0) if padded else None
        cache = KVCache(self.config, B, total, self.device, self.dtype) if self.use_kv_cache else None
        logits = self._forward(ids, cache, positions, mask[:, :P] if padded else None, self.model.lm_head)
        head = DecodeHead(self.model.lm_head)  # at batch 1-2, a faster layout of the head (llmlab.infer.head)
        seq_ids = ids  # the whole padded sequence, kept only to recompute it when there is no cache
        S = P
        while True:
            next_tokens, keep = [], []
            for b, s in enumerate(active):
                token, logprob, top = s.next_token(logits[b])
                yield s, s.add(token, logprob, top)
                next_tokens.append(token)
                if s.finish_reason is None:
                    keep.append(b)
            if not keep:
                return
            if len(keep) < len(active):  # drop finished rows from the batch and the cache
                index = torch.tensor(keep, device=self.device)
                active = [active[b] for b in keep]
                next_tokens = [next_tokens[b] for b in keep]
                mask, seq_ids = mask.index_select(0, index), seq_ids.index_select(0, index)
                if cache is not None:
                    cache.reorder(index)
            step = torch.tensor(next_tokens, dtype=torch.long, device=self.device)[:, None]
            S += 1
            if cache is not None:
                pos = None
                if padded:
                    pos = torch.tensor([len(s.prompt) + len(s.generated) - 1 for s in active], device=self.device)[:, None]
                logits = self._forward(step, cache, pos, mask[:, :S] if padded else None, head)
            else:
                seq_ids = torch.cat([seq_ids, step], dim=1)
                pos = (mask[:, :S].cumsum(-1) - 1).clamp(min=0) if padded else None
                logits = self._forward(seq_ids, None, pos, mask[:, :S] if padded else None, head)
