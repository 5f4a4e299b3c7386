"""From an API request to a running generation: prompt ids, checked sampling settings, one queued job.

Every token comes from the model's continuous batch (`llmlab.infer.batching`, run by `serve.worker`);
this module only prepares its inputs and applies the server's limits. A request's `n` choices share one
prefill of the prompt.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from llmlab.errors import LlmlabError
from llmlab.infer import SamplingParams
from llmlab.serve.api_errors import APIError, unknown_model
from llmlab.serve.limits import Limits
from llmlab.serve.registry import LoadedModel, ModelRegistry
from llmlab.serve.worker import Busy, GenerationWorker, Job, events_of


@dataclass
class ChoiceResult:
    """One finished choice, gathered from its stream events."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    timings: dict[str, Any] = field(default_factory=dict)


class Generator:
    """Shared by the OpenAI routes, the playground's own routes and the benchmark."""

    def __init__(self, registry: ModelRegistry, worker: GenerationWorker, limits: Limits) -> None:
        self.registry = registry
        self.worker = worker
        self.limits = limits

    async def load(self, model_id: str) -> LoadedModel:
        """The model, loading it in a thread on first use; 404 for a model the server does not have."""
        if model_id not in self.registry:
            raise unknown_model(model_id, self.registry.ids())
        entry = self.registry.entry(model_id)
        if entry.loaded is not None:
            return entry.loaded
        try:
            return await asyncio.to_thread(self.registry.get, model_id)
        except LlmlabError as e:
            raise APIError(500, f"model {model_id} could not be loaded: {e}", param="model") from e

    def chat_prompt(self, loaded: LoadedModel, messages: list[dict[str, str]]) -> list[int]:
        from llmlab.tokenizer.chat import render_chat

        return list(render_chat(messages, loaded.tokenizer, add_generation_prompt=True).ids)

    def text_prompt(self, loaded: LoadedModel, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            # Special tokens typed into a prompt (e.g. <|endoftext|>) are meant as those tokens.
            return list(loaded.tokenizer.encode(prompt, allowed_special="all"))
        vocab = loaded.tokenizer.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt")
        return list(prompt)

    def params(self, loaded: LoadedModel, prompt_len: int, settings: dict[str, Any]) -> SamplingParams:
        """SamplingParams for a prompt of `prompt_len` tokens, within the server's limits and the context window.

        `settings` are a request's sampling values by SamplingParams field name; one a request leaves out
        takes the engine's default, except temperature (OpenAI's 1) and max_new_tokens (the server's default).
        """
        ctx = loaded.context_length
        max_prompt = min(self.limits.max_prompt_tokens, ctx - 1)
        if prompt_len == 0:
            raise APIError(400, "the prompt is empty", param="prompt")
        if prompt_len > max_prompt:
            raise APIError(400, f"the prompt has {prompt_len} tokens; this server accepts at most {max_prompt} for "
                           f"{loaded.id} (context window {ctx})", param="messages", code="context_length_exceeded")
        wanted = settings.get("max_new_tokens")
        if wanted is not None and wanted > self.limits.max_output_tokens:
            raise APIError(400, f"max_tokens={wanted} is above this server's limit of "
                           f"{self.limits.max_output_tokens}", param="max_tokens")
        if wanted is None:
            wanted = self.limits.default_output_tokens
        try:
            return SamplingParams(**{"temperature": 1.0, **settings,  # OpenAI's default temperature
                                     "max_new_tokens": min(wanted, ctx - prompt_len)})  # the rest of the window at most
        except LlmlabError as e:
            raise APIError(400, e.message, code="invalid_value") from e

    def _reserve(self) -> None:
        try:
            self.worker.reserve()
        except Busy as e:
            raise APIError(429, f"{e}; retry shortly", code="server_busy") from e

    def start(self, loaded: LoadedModel, prompt_ids: list[int], params: SamplingParams) -> Job:
        """Queue the generation of `params.n` choices of one prompt (one job; event.index names the choice).

        The engine gives choice j the seed seed + j, so each choice is reproducible and they differ.
        """
        most = min(self.limits.max_n, self.limits.max_batch)  # a request's choices decode side by side
        if params.n > most:
            raise APIError(400, f"n={params.n} is above this server's limit of {most}", param="n")
        self._reserve()
        job = Job()
        self.worker.generate(job, loaded.model, loaded.tokenizer, prompt_ids, params)
        return job

    async def compute(self, fn: Callable[[], Any]) -> Any:
        """Run one model computation (scoring, a look inside) on the compute pool, within the same limits."""
        self._reserve()
        job = Job()
        self.worker.submit(job, lambda: iter([fn()]))
        async for value in events_of(job):
            return value
        raise APIError(500, "the computation was cancelled")

    async def collect(self, job: Job, n: int) -> list[ChoiceResult]:
        """Wait for every choice to finish and gather its text, tokens and logprobs."""
        results = [ChoiceResult(i) for i in range(n)]
        try:
            async for event in events_of(job):
                add_event(results[event.index], event)
        except APIError:
            raise
        except Exception as e:  # the model failed mid-generation: an OpenAI-shaped 500, as when streaming
            raise APIError(500, f"generation failed: {e}") from e
        for r in results:
            r.timings = job.timings()
            r.finish_reason = r.finish_reason or "length"
        return results


def add_event(result: ChoiceResult, event: Any) -> None:
    """Fold one StreamEvent into a choice's result."""
    result.token_ids.append(event.token_id)
    result.events.append(event)
    result.text += event.text
    if event.finish_reason is not None:
        result.finish_reason = event.finish_reason


async def until_disconnected(request: Any, work: asyncio.Future | Any) -> Any:
    """Await `work`, but give up (raising CancelledError) when the client hangs up first."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise asyncio.CancelledError("client disconnected")
