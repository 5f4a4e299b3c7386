"""Continuous batching: requests join the running batch between decoding steps and leave it when done.

    submit(prompt, params) -> waiting queue
    step():  admit    waiting requests while rows are free, prefilling at most `step_tokens` prompt tokens
                      (a long prompt is prefilled in chunks over several steps, so running streams keep going)
             decode   one token for every running row, each at its own position
             retire   finished and cancelled rows, freeing their slots at once

A request with n samples prefills its prompt once and copies the keys/values into n rows. Every row is
a `SequenceState`, the same object a lone request uses, so sampling, seeds, penalties, stop strings and
logprobs do not depend on the batch; only float rounding of the batched matmuls does (Orca, Yu et al. 2022;
vLLM's scheduler does the same with paged blocks instead of slots).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from llmlab.errors import ConfigError, InputError
from llmlab.infer.compiled import CompiledDecodeStep
from llmlab.infer.constrained import allowed_tokens
from llmlab.infer.head import DecodeHead
from llmlab.infer.sampling import SamplingParams, sample_rows
from llmlab.infer.sequence import SequenceState, StreamEvent, end_token_ids, new_sequence
from llmlab.infer.slot_cache import SlotKVCache
from llmlab.model.frozen import compute_dtype
from llmlab.model.transformer import KVCache


@dataclass(eq=False)
class BatchRequest:
    """One submitted prompt and its n samples; `started_at` is when its prefill began (time.perf_counter())."""

    prompt: list[int]
    params: SamplingParams
    sequences: list[SequenceState]
    prefill: KVCache | None = None  # the prompt's keys/values while it is being prefilled
    started_at: float | None = None
    cancelled: bool = False
    _rows_held: int = field(default=0, repr=False)

    @property
    def started(self) -> bool:
        return self.started_at is not None

    @property
    def done(self) -> bool:
        return self.cancelled or all(s.finish_reason is not None for s in self.sequences)


class Batcher:
    """Continuous batching over one model: at most `max_rows` sequences decode together.

    Not thread-safe: one thread submits, cancels and steps (the server funnels requests to that thread).
    `step_tokens` bounds the prompt tokens prefilled per step (None: the context window, no chunking).
    `decode_step` (a `CompiledDecodeStep` for at least `max_rows` rows) decodes through a compiled graph
    and its static cache instead of the eager model; one step serves one batcher at a time.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, max_rows: int = 32,
                 step_tokens: int | None = None, decode_step: CompiledDecodeStep | None = None) -> None:
        if max_rows < 1 or (step_tokens is not None and step_tokens < 1):
            raise ConfigError(f"max_rows ({max_rows}) and step_tokens ({step_tokens}) must be positive")
        if decode_step is not None and decode_step.max_rows < max_rows:
            raise ConfigError(f"the compiled step has {decode_step.max_rows} rows; this batch needs {max_rows}")
        self.model, self.tokenizer, self.max_rows = model, tokenizer, max_rows
        self.config = model.config
        self.step_tokens = step_tokens or self.config.context_length
        first = next(model.parameters())
        self.device, self.dtype = first.device, compute_dtype(model)
        self.end_ids = end_token_ids(tokenizer)
        self.waiting: deque[BatchRequest] = deque()
        self.rows: list[SequenceState] = []  # row i lives in slot i
        self.owners: list[BatchRequest] = []
        self.held = 0  # rows promised to requests being prefilled
        self.decode_step = decode_step
        if decode_step is not None:
            self.cache = decode_step.cache
        else:
            with torch.inference_mode():
                self.cache = SlotKVCache(self.config, max_rows, self.device, self.dtype)
        self.head = DecodeHead(model.lm_head)

    def submit(self, prompt: list[int], params: SamplingParams) -> BatchRequest:
        """Queue a prompt (token ids) for params.n samples; it joins the batch at a coming step."""
        ctx = self.config.context_length
        if not prompt or len(prompt) >= ctx:
            raise InputError(f"the prompt is {len(prompt)} tokens long; it must be 1 to {ctx - 1} tokens "
                             f"(the context window is {ctx})", hint="shorten the prompt")
        if params.n > self.max_rows:
            raise ConfigError(f"n={params.n} samples need more rows than the batch has ({self.max_rows})")
        sequences = [new_sequence(prompt, params, j, ctx, self.end_ids, self.tokenizer, self.device)
                     for j in range(params.n)]
        request = BatchRequest(list(prompt), params, sequences)
        if not request.done:  # max_new_tokens=0 has nothing to generate
            self.waiting.append(request)
        return request

    def cancel(self, request: BatchRequest) -> None:
        """Stop a request: one still waiting leaves the queue now; rows are freed at the start of the next step."""
        request.cancelled = True
        if not request.started and request in self.waiting:
            self.waiting.remove(request)

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    @property
    def running(self) -> int:
        """Requests admitted (prefilling or decoding) and not yet finished."""
        return len({id(r) for r in self.owners} | {id(r) for r in self.waiting if r.started})

    @torch.inference_mode()
    def step(self) -> list[tuple[BatchRequest, StreamEvent]]:
        """One round: admit waiting requests, decode one token for every running row, retire finished rows."""
        events: list[tuple[BatchRequest, StreamEvent]] = []
        self._retire()
        self._admit(events)
        self._retire()  # a first token may already end a sample
        if self.rows:
            self._decode(events)
            self._retire()
        return events

    # ----- the three parts of a step ----------------------------------------------------------------
    def _admit(self, events: list) -> None:
        budget = self.step_tokens
        while self.waiting and budget > 0:
            request = self.waiting[0]
            if request.cancelled:
                self.waiting.popleft()
                self.held -= request._rows_held
                continue
            n = len(request.sequences)
            if request.prefill is None:
                if len(self.rows) + self.held + n > self.max_rows:
                    return  # first come, first served: later requests wait behind this one
                group = self._same_length_group(budget)
                if len(group) > 1:
                    budget -= self._prefill_together(group, events)
                    continue
                request.prefill = KVCache(self.config, 1, len(request.prompt), self.device, self.dtype)
                request.started_at, request._rows_held = time.perf_counter(), n
                self.held += n
            done = request.prefill.length
            chunk = request.prompt[done : done + budget]
            budget -= len(chunk)
            x, _ = self.model.hidden_states(torch.tensor([chunk], device=self.device), kv_cache=request.prefill)
            if request.prefill.length < len(request.prompt):
                return  # the rest of this prompt goes into the next steps
            self.waiting.popleft()
            self.held -= n
            prefill, request.prefill = request.prefill, None
            self._join(request, prefill.k[:, 0], prefill.v[:, 0], self.model.lm_head(x[:, -1])[0], events)

    def _same_length_group(self, budget: int) -> list[BatchRequest]:
        """The waiting requests at the head of the queue whose prompts have the first one's length and fit,
        whole, in the free rows and the step's budget: they prefill as one batch, with no padding."""
        group, rows, length = [], len(self.rows) + self.held, len(self.waiting[0].prompt)
        for request in self.waiting:
            n = len(request.sequences)
            if (request.cancelled or request.prefill is not None or len(request.prompt) != length
                    or rows + n > self.max_rows or (len(group) + 1) * length > budget):
                break
            group.append(request)
            rows += n
        return group

    def _prefill_together(self, group: list[BatchRequest], events: list) -> int:
        """Prefill equal-length prompts in one forward pass; returns the prompt tokens it used."""
        cache = KVCache(self.config, len(group), len(group[0].prompt), self.device, self.dtype)
        ids = torch.tensor([r.prompt for r in group], device=self.device)
        x, _ = self.model.hidden_states(ids, kv_cache=cache)
        logits = self.model.lm_head(x[:, -1])
        now = time.perf_counter()
        for i, request in enumerate(group):
            self.waiting.popleft()
            request.started_at = now
            self._join(request, cache.k[:, i], cache.v[:, i], logits[i], events)
        return ids.numel()

    def _join(self, request: BatchRequest, k: torch.Tensor, v: torch.Tensor, logits: torch.Tensor,
              events: list) -> None:
        """Copy a prefilled prompt's keys/values into one row per sample and sample each one's first token."""
        self.cache.grow(len(self.rows) + len(request.sequences), len(request.prompt) + 1)
        for seq in request.sequences:
            self.cache.put(len(self.rows), k, v)
            self.rows.append(seq)
            self.owners.append(request)
            events.append((request, seq.add(*seq.next_token(logits))))

    def _decode(self, events: list) -> None:
        rows = self.rows
        # Row r's KV cache holds its prompt and all but its newest token, which it feeds now at that position.
        positions = [len(s.prompt) + len(s.generated) - 1 for s in rows]
        width = max(positions) + 1
        self.cache.grow(len(rows), width)
        self.cache.select(len(rows), width)
        tokens = torch.tensor([s.generated[-1] for s in rows], device=self.device)[:, None]
        if self.decode_step is not None:
            self._sample(logits=self.decode_step(tokens, torch.tensor(positions, device=self.device)), events=events)
            return
        if min(positions) == width - 1:  # every row at the same length: the model's default positions, no mask
            x, _ = self.model.hidden_states(tokens, kv_cache=self.cache)
        else:
            pos = torch.tensor(positions, device=self.device)
            mask = torch.arange(width, device=self.device)[None, :] < pos[:, None]
            x, _ = self.model.hidden_states(tokens, kv_cache=self.cache, position_ids=pos[:, None],
                                            attention_mask=mask)
            self.cache.commit(pos, width)
        self._sample(logits=self.head(x[:, -1]), events=events)

    def _sample(self, logits: torch.Tensor, events: list) -> None:
        """Each row's next token: rows without penalties or logprobs in shared steps, the rest alone.

        Rows with a JSON grammar get their allowed-token masks from one host-built tensor (`allowed_tokens`)
        and share a step of their own, so rows without one sample exactly as if no such row were in the batch.
        """
        rows = self.rows
        guided = [b for b, seq in enumerate(rows) if seq.constraint is not None]
        allowed = allowed_tokens([rows[b].constraint for b in guided], logits.size(-1), self.device) if guided else None
        mask_row = {b: i for i, b in enumerate(guided)}
        plain = [b for b, seq in enumerate(rows) if not seq.samples_alone and b not in mask_row]
        shared_guided = [b for b in guided if not rows[b].samples_alone]
        tokens = self._sample_shared(logits, plain)
        if shared_guided:
            masks = allowed if len(shared_guided) == len(guided) else allowed[[mask_row[b] for b in shared_guided]]
            tokens |= self._sample_shared(logits, shared_guided, masks)
        for b, seq in enumerate(rows):
            token = tokens.get(b)
            if token is None:
                chosen = seq.next_token(logits[b], None if allowed is None or b not in mask_row else allowed[mask_row[b]])
            else:
                chosen = (token, None, None)
            events.append((self.owners[b], seq.add(*chosen)))

    def _sample_shared(self, logits: torch.Tensor, part: list[int], allowed: torch.Tensor | None = None) -> dict[int, int]:
        """Tokens for the rows `part` in one `sample_rows` call (their logits gathered unless it is every row)."""
        if not part:
            return {}
        rows = self.rows
        scores = logits if len(part) == len(rows) else logits[part]
        return dict(zip(part, sample_rows(scores, [rows[b].params for b in part], [rows[b].generator for b in part],
                                          allowed)))

    def _retire(self) -> None:
        """Drop finished and cancelled rows, moving the last row into each hole so rows stay contiguous."""
        for i in reversed(range(len(self.rows))):
            if self.rows[i].finish_reason is None and not self.owners[i].cancelled:
                continue
            last = len(self.rows) - 1
            if i != last:
                moved = self.rows[last]
                self.cache.move(last, i, len(moved.prompt) + len(moved.generated) - 1)
                self.rows[i], self.owners[i] = moved, self.owners[last]
            self.rows.pop()
            self.owners.pop()
