"""The generation engine: prefill once, then decode one token at a time from a KV cache.

    prompts -> token ids -> the continuous batcher (llmlab.infer.batching): each prompt is prefilled
               once into a KV cache slot, then every running sequence decodes one token per step
            -> per sequence: sample, check end tokens / stop strings / length, stream a UTF-8-safe delta

Finished sequences leave the batch and waiting prompts take their rows, so one long answer does not make
the others pay. `Engine.generate` returns whole completions; `Engine.stream` yields one event per token.
Both run the same loop, so streaming and non-streaming outputs are identical. Without a KV cache
(`use_kv_cache=False`, for teaching and tests) the prompts are left-padded into one batch and every
step recomputes the whole sequence.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from llmlab.errors import ConfigError, InputError
from llmlab.infer.batching import Batcher
from llmlab.infer.compiled import CompiledDecodeStep
from llmlab.infer.sampling import SamplingParams
from llmlab.infer.sequence import SequenceState, StreamEvent, end_token_ids, new_sequence, sample_seed
from llmlab.model.frozen import compute_dtype


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


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Generate without dropout, then give the model back in the mode it was in (training samples)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Engine:
    """Generate from one model: batched, KV-cached, streaming. See docs/inference.md.

    `tokenizer` may be None when prompts are token ids and only ids are wanted (tests, tiny models).
    `use_kv_cache=False` recomputes the whole sequence at every step (for teaching and for tests).
    The model runs in eval mode while generating and is handed back in the mode it was in.
    At most `max_batch_size` sequences decode together; the rest join as rows free up.
    `compile` decodes through a compiled static-shape step (`llmlab.infer.compiled`): None chooses it on
    CUDA only. The step is compiled once per engine and reused by its calls, one call at a time.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, use_kv_cache: bool = True,
                 max_batch_size: int = 32, compile: bool | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.use_kv_cache = use_kv_cache
        self.max_batch_size = max_batch_size
        first = next(model.parameters())
        self.device, self.dtype = first.device, compute_dtype(model)
        self.end_ids = end_token_ids(tokenizer)
        self.compile = self.device.type == "cuda" if compile is None else compile
        self.decode_step: CompiledDecodeStep | None = None

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
                rows.append((ids, p, sample_seed(p, j), j))
        return rows

    def _run_rows(self, rows) -> Iterator[tuple[int, StreamEvent]]:
        """Yield (row number, event) as tokens are produced."""
        if not self.use_kv_cache:
            yield from self._recompute_rows(rows)
            return
        # A request's samples are consecutive rows 0..n-1: submit each prompt once, it prefills once.
        widest = max((p.n for _, p, _, _ in rows), default=1)
        max_rows = max(self.max_batch_size, widest)
        if self.compile and (self.decode_step is None or self.decode_step.max_rows < max_rows):
            self.decode_step = CompiledDecodeStep(self.model, max_rows, self.device, self.dtype)
        batcher = Batcher(self.model, self.tokenizer, max_rows=max_rows, decode_step=self.decode_step)
        first_row = {batcher.submit(ids, p): r for r, (ids, p, _, index) in enumerate(rows) if index == 0}
        with eval_mode(self.model):
            while batcher.busy:
                for request, event in batcher.step():
                    yield first_row[request] + event.index, event

    def _sequence(self, row: tuple) -> SequenceState:
        prompt, p, _, index = row
        return new_sequence(prompt, p, index, self.config.context_length, self.end_ids, self.tokenizer, self.device)

    def _recompute_rows(self, rows) -> Iterator[tuple[int, StreamEvent]]:
        """Without a cache: rows in length-sorted, left-padded batches, each step a forward over everything."""
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))
        for start in range(0, len(order), self.max_batch_size):
            batch = order[start : start + self.max_batch_size]
            sequences = [self._sequence(rows[r]) for r in batch]
            longest = max(len(s.prompt) for s in sequences)
            groups = [list(zip(batch, sequences))]
            if any(longest + s.budget > self.config.context_length for s in sequences):
                groups = [[pair] for pair in groups[0]]  # left padding would overrun the window: one by one
            for group in groups:
                row_of = {id(s): r for r, s in group}
                with eval_mode(self.model):
                    for seq, event in self._recompute([s for _, s in group]):
                        yield row_of[id(seq)], event

    @torch.inference_mode()
    def _recompute(self, sequences: list[SequenceState]) -> Iterator[tuple[SequenceState, StreamEvent]]:
        active = [s for s in sequences if s.finish_reason is None]
        if not active:
            return
        P = max(len(s.prompt) for s in active)
        ids = torch.zeros(len(active), P, dtype=torch.long)
        mask = torch.zeros(len(active), P, dtype=torch.long)
        for b, s in enumerate(active):
            ids[b, P - len(s.prompt):] = torch.tensor(s.prompt)
            mask[b, P - len(s.prompt):] = 1  # padding on the left, every later (generated) token is real
        ids, mask = ids.to(self.device), mask.to(self.device)
        while True:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            x, _ = self.model.hidden_states(ids, position_ids=positions, attention_mask=mask)
            logits = self.model.lm_head(x[:, -1])
            next_tokens, keep = [], []
            for b, s in enumerate(active):
                token, logprob, top = s.next_token(logits[b])
                yield s, s.add(token, logprob, top)
                next_tokens.append(token)
                if s.finish_reason is None:
                    keep.append(b)
            if not keep:
                return
            index = torch.tensor(keep, device=self.device)
            active = [active[b] for b in keep]
            step = torch.tensor(next_tokens, dtype=torch.long, device=self.device)[index, None]
            ids = torch.cat([ids.index_select(0, index), step], dim=1)
            mask = torch.cat([mask.index_select(0, index), torch.ones_like(step)], dim=1)
