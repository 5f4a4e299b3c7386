"""An instruction set built from the same documentation the model was pretrained on.

Each question asks what a standard-library module, function or class does; its answer is the first
sentence of that object's docstring, which is on the crawled pages. Answers are therefore checkable
(exact match, BLEU) and a tiny model can learn to recall them.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import random
import re
import warnings
from dataclasses import dataclass

MODULE_QUESTIONS = (
    "What does the Python module {name} do?",
    "What is the {name} module for?",
    "Describe the {name} module.",
)
MEMBER_QUESTIONS = (
    "What does {name} do?",
    "What is {name} used for?",
    "Explain {name} in one sentence.",
)
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]'\"`])[.!?](\s|$)")


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    subject: str  # the module or "module.member" the question is about

    def to_messages(self) -> dict:
        return {"messages": [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.answer}]}


def first_sentence(doc: str | None, max_chars: int = 200) -> str | None:
    """The docstring's first sentence on one line, or None if it is missing, a signature, or too long."""
    if not doc:
        return None
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = _SENTENCE_END.search(paragraph)
    sentence = paragraph[: match.start() + 1] if match else paragraph
    if len(sentence) < 12 or len(sentence) > max_chars or "(" in sentence[:1] or sentence.endswith(":"):
        return None
    if re.match(r"^[\w.]+\(.*\)", sentence):  # a signature line, not prose
        return None
    return sentence


def own_doc(obj: object) -> str | None:
    """The object's own docstring; None when it only inherits one (inspect.getdoc would borrow the base's)."""
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return None
    if inspect.isclass(obj) and any(doc == getattr(base, "__doc__", None) for base in obj.__mro__[1:]):
        return None
    return inspect.cleandoc(doc)


def _import_quietly(name: str):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - a module that cannot be imported contributes no questions
            return None


def questions_for_module(name: str, rng: random.Random, max_members: int = 8) -> list[QA]:
    module = _import_quietly(name)
    if module is None:
        return []
    out = []
    answer = first_sentence(own_doc(module))
    if answer:
        out.append(QA(rng.choice(MODULE_QUESTIONS).format(name=name), answer, name))
    members = []
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
            answer = first_sentence(own_doc(obj))
            if answer:
                members.append(QA(rng.choice(MEMBER_QUESTIONS).format(name=f"{name}.{attr}"), answer, f"{name}.{attr}"))
    rng.shuffle(members)
    return out + members[:max_members]


def build_instructions(modules: list[str], seed: int = 0, held_out: float = 0.1) -> tuple[list[QA], list[QA]]:
    """Questions about `modules`, split at random (seeded) into (train, held_out)."""
    rng = random.Random(seed)
    pairs = [qa for name in sorted(set(modules)) for qa in questions_for_module(name, rng)]
    rng.shuffle(pairs)
    n_held = max(1, int(len(pairs) * held_out)) if pairs else 0
    return pairs[n_held:], pairs[:n_held]
