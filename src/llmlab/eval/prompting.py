"""Prompting techniques: zero-shot, k-shot and chain-of-thought, as data over the benchmark tasks.

A technique says whether solved examples ("shots") precede the question and whether their answers
are worked reasoning. It does not hold prompt text of its own: the text of every technique comes
from a task definition in `tasks.py`, so one format exists once.

| technique | task definition | shots |
|---|---|---|
| zero-shot | the task (gsm8k: `Question: ..\\nAnswer:`) | none |
| few-shot | the task | k drawn by seed from the few-shot pool, answered as the data set answers (`#### N`) |
| cot | the task's `cot_variant` (gsm8k_cot: `Q: ..\\nA:`) | k drawn the same way, answered as prose ending "The answer is N." |

Chain-of-thought (Wei et al., 2022) exists only for tasks with worked solutions (GSM8K); multiple
choice takes zero-shot and few-shot. Base models read the shots as plain text; with `chat=True` a chat
model reads each shot as a user turn and an assistant turn in its own chat template, then the question
as the last user turn (lm-eval's `--apply_chat_template --fewshot_as_multiturn`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmlab.errors import ConfigError
from llmlab.eval.tasks import Doc, Task, get_task


@dataclass(frozen=True)
class Technique:
    name: str
    uses_shots: bool
    chain_of_thought: bool


TECHNIQUES: dict[str, Technique] = {
    t.name: t
    for t in (
        Technique("zero-shot", uses_shots=False, chain_of_thought=False),
        Technique("few-shot", uses_shots=True, chain_of_thought=False),
        Technique("cot", uses_shots=True, chain_of_thought=True),
    )
}


def get_technique(name: str) -> Technique:
    if name not in TECHNIQUES:
        raise ConfigError(f"unknown prompting technique {name!r}", hint=f"choose from: {', '.join(TECHNIQUES)}")
    return TECHNIQUES[name]


def resolve(technique: Technique, task: Task, num_fewshot: int) -> tuple[Task, int]:
    """The task definition and the number of shots that `technique` uses on `task`."""
    if technique.chain_of_thought:
        if task.cot_variant is None:
            raise ConfigError(
                f"{task.name} has no chain-of-thought form (it needs worked solutions to show)",
                hint="cot is defined for gsm8k; use zero-shot or few-shot for the other tasks",
            )
        task = get_task(task.cot_variant)
    if not technique.uses_shots:
        return task, 0
    if num_fewshot < 1:
        raise ConfigError(f"{technique.name} needs solved examples", hint="give --num-fewshot K with K >= 1, e.g. 8")
    return task, num_fewshot


def check_chat(task: Task) -> None:
    """Chat prompts are built for generation tasks only; a clear error for the others."""
    if task.kind != "generate":
        raise ConfigError(f"chat prompts are built for generation tasks; {task.name} is scored by log-likelihood",
                          hint="evaluate multiple-choice tasks without --chat-template")


def chat_prompt(task: Task, doc: Doc, shots: list[Doc], tokenizer: Any, max_tokens: int | None = None) -> list[int]:
    """Token ids of `doc` for a chat model: each shot a user and an assistant turn, then the question.

    With `max_tokens`, the oldest shots are dropped until the prompt fits (`render_chat` drops whole turns).
    """
    from llmlab.tokenizer.chat import render_chat

    check_chat(task)
    messages = []
    for shot in shots:
        messages += [{"role": "user", "content": shot.shot_prompt()},
                     {"role": "assistant", "content": shot.answer_text()}]
    messages.append({"role": "user", "content": doc.shot_prompt()})
    messages[0]["content"] = task.description(doc) + messages[0]["content"]
    return render_chat(messages, tokenizer, add_generation_prompt=True, max_tokens=max_tokens).ids

