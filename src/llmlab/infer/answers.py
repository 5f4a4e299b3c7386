"""Greedy answers to single-turn questions: how training, the quickstart and evaluation ask a chat model.

Each question becomes one user turn in the model's chat template (truncated to fit the context with
room for the answer), and the engine decodes greedily, so the same model always gives the same answer.
"""

from __future__ import annotations

from typing import Sequence

from llmlab.infer.engine import Engine
from llmlab.infer.sampling import SamplingParams
from llmlab.tokenizer.chat import render_chat


def chat_answers(model, tokenizer, questions: Sequence[str], max_new_tokens: int = 48) -> list[str]:
    """The model's greedy answer to each question, without surrounding whitespace."""
    limit = model.config.context_length - 1
    prompts = [render_chat([{"role": "user", "content": q}], tokenizer, add_generation_prompt=True,
                           max_tokens=limit).ids for q in questions]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    return [c.text.strip() for c in Engine(model, tokenizer).generate(prompts, params)]
