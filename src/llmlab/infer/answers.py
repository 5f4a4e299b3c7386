"""Greedy answers to questions: how training, the quickstart and evaluation ask a chat model.

Each question (a string: one user turn; or a list of messages) is rendered in the model's chat template
(truncated to fit the context with room for the answer), and the engine decodes greedily, so the same
model always gives the same answer.
"""

from __future__ import annotations

from typing import Sequence

from llmlab.infer.engine import Engine
from llmlab.infer.sampling import SamplingParams
from llmlab.tokenizer.chat import render_chat, with_system


def chat_answers(model, tokenizer, questions: Sequence[str | list[dict[str, str]]], max_new_tokens: int = 48,
                 system: str | None = None) -> list[str]:
    """The model's greedy answer to each question, without surrounding whitespace; `system` (see
    `with_system`) goes before each question that has no system message of its own."""
    limit = model.config.context_length - 1
    conversations = [with_system([{"role": "user", "content": q}] if isinstance(q, str) else q, system)
                     for q in questions]
    prompts = [render_chat(c, tokenizer, add_generation_prompt=True, max_tokens=limit).ids for c in conversations]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    # One short-lived engine per call: compiling its decode step on CUDA would cost more than it saves.
    return [c.text.strip() for c in Engine(model, tokenizer, compile=False).generate(prompts, params)]
