"""Built-in instruction and preference data whose answers a program can check.

Five small task families — arithmetic, sorting, reversing, counting letters, following a format — each
make (prompt, answer, wrong answer) triples from a seeded generator, so post-training gains are
measured by exact match instead of being claimed:

    train = generate(2000, split="train", seed=0)
    held_out = generate(200, split="held_out", seed=1)
    records = sft_records(train)            # {"instruction", "response"} lines for `llmlab sft`
    pairs = preference_records(train)       # {"prompt", "chosen", "rejected"} lines for `llmlab dpo`
    score(held_out, predictions)            # {"exact_match": ..., "exact_match/arithmetic": ...}

The split is a hash of the prompt, not of the seed: a held-out prompt never appears in any training
set, whatever seeds were used to draw them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from llmlab.errors import ConfigError
from llmlab.files import atomic_write
from llmlab.infer.answers import chat_answers

SPLITS = ("train", "held_out")
HELD_OUT_PER_MILLE = 100  # 10% of all possible prompts are reserved for evaluation

WORDS = (
    "apple river stone cloud green music paper light tiger honey winter garden bread candle mirror ocean "
    "silver forest planet window rabbit yellow button castle dragon pepper summer violin anchor basket "
    "cactus dinner eagle feather guitar hammer island jacket kettle lemon magnet needle orange pillow "
    "puzzle rocket saddle tomato umbrella valley wagon zebra bottle carpet desert engine finger ginger "
    "helmet insect jungle ladder meadow napkin parrot pencil quartz ribbon shadow turtle velvet walnut "
    "butter cotton monkey spider"
).split()


@dataclass(frozen=True)
class Example:
    """One checkable instruction: the prompt, its one correct answer and a plausible wrong one."""

    task: str
    prompt: str
    answer: str
    wrong: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# --- the task families: each draws one example from `rng` -------------------------------------------

def arithmetic(rng: random.Random) -> Example:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if rng.random() < 0.5:
        prompt, answer = f"What is {a} + {b}?", a + b
    else:
        a, b = max(a, b), min(a, b)
        prompt, answer = f"What is {a} - {b}?", a - b
    return Example("arithmetic", prompt, str(answer), str(answer + rng.choice([-2, -1, 1, 2, 10])))


def sorting(rng: random.Random) -> Example:
    numbers = rng.sample(range(10), rng.randint(3, 5))
    ordered = sorted(numbers)
    wrong = list(ordered)
    i = rng.randrange(len(wrong) - 1)
    wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]  # one adjacent swap: almost sorted
    join = ", ".join
    return Example("sorting", f"Sort in ascending order: {join(map(str, numbers))}",
                   join(map(str, ordered)), join(map(str, wrong)))


def reversing(rng: random.Random) -> Example:
    words = rng.sample(WORDS, rng.randint(3, 4))
    wrong = words[1:] + words[:1] if rng.random() < 0.5 else list(words)  # rotated, or not reversed at all
    return Example("reversing", f"Reverse the order of these words: {' '.join(words)}",
                   " ".join(reversed(words)), " ".join(wrong))


def counting(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)
    n = word.count(letter)
    return Example("counting", f'How many times does the letter "{letter}" appear in "{word}"?',
                   str(n), str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1))


def following_format(rng: random.Random) -> Example:
    word = rng.choice(WORDS)
    style = rng.choice(["json", "json", "brackets", "quotes", "repeat"])
    if style == "json":
        key = rng.choice(["answer", "word", "result", "value", "output", "item"])
        prompt = f'Reply with only a JSON object with the key "{key}" holding the word: {word}'
        answer, wrong = json.dumps({key: word}), rng.choice([word, f"{{{key}: {word}}}", json.dumps({"text": word})])
    elif style == "brackets":
        prompt, answer, wrong = f"Reply with the word {word} inside square brackets.", f"[{word}]", f"({word})"
    elif style == "quotes":
        prompt, answer, wrong = f"Reply with the word {word} in double quotes.", f'"{word}"', f"'{word}'"
    else:
        prompt, answer = f"Write the word {word} three times, separated by commas.", ", ".join([word] * 3)
        wrong = ", ".join([word] * 2)
    return Example("format", prompt, answer, wrong)


TASKS: dict[str, Callable[[random.Random], Example]] = {
    "arithmetic": arithmetic,
    "sorting": sorting,
    "reversing": reversing,
    "counting": counting,
    "format": following_format,
}


def split_of(prompt: str) -> str:
    """"held_out" for a fixed 10% of prompts (by SHA-256 of the text), "train" for the rest."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big") % 1000
    return "held_out" if bucket < HELD_OUT_PER_MILLE else "train"


def generate(n: int, split: str = "train", seed: int = 0, tasks: Sequence[str] | None = None) -> list[Example]:
    """`n` distinct examples of `split`, the task families taking turns; the same arguments give the same list."""
    names = list(tasks or TASKS)
    unknown = [t for t in names if t not in TASKS]
    if unknown or split not in SPLITS:
        raise ConfigError(f"unknown task {unknown[0]!r}" if unknown else f"unknown split {split!r}",
                          hint=f"tasks: {', '.join(TASKS)}; splits: {', '.join(SPLITS)}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Example] = []
    misses = 0  # draws in a row that gave nothing new: the task's prompts of this split are used up
    while len(out) < n:
        task = names[len(out) % len(names)]
        example = TASKS[task](rng)
        if example.prompt in seen or split_of(example.prompt) != split:
            misses += 1
            if misses > 10_000:
                have = sum(e.task == task for e in out)
                raise ConfigError(f"the {task} task ran out of distinct {split} prompts after {have}",
                                  hint=f"ask for at most about {have * len(names)} examples, or fewer tasks")
            continue
        misses = 0
        seen.add(example.prompt)
        out.append(example)
    return out


# --- the file forms that `llmlab sft` and `llmlab dpo` read -------------------------------------------

def sft_records(examples: Sequence[Example]) -> list[dict[str, str]]:
    return [{"instruction": e.prompt, "response": e.answer} for e in examples]


def preference_records(examples: Sequence[Example]) -> list[dict[str, str]]:
    return [{"prompt": e.prompt, "chosen": e.answer, "rejected": e.wrong} for e in examples]


def write_jsonl(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> Path:
    path = Path(path)
    with atomic_write(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def export(directory: str | os.PathLike, n_train: int = 2000, n_held_out: int = 200, seed: int = 0) -> list[Path]:
    """Write sft_train/sft_held_out/dpo_train/dpo_held_out JSONL files and the held-out answers."""
    directory = Path(directory)
    train, held_out = generate(n_train, "train", seed), generate(n_held_out, "held_out", seed + 1)
    return [
        write_jsonl(directory / "sft_train.jsonl", sft_records(train)),
        write_jsonl(directory / "sft_held_out.jsonl", sft_records(held_out)),
        write_jsonl(directory / "dpo_train.jsonl", preference_records(train)),
        write_jsonl(directory / "dpo_held_out.jsonl", preference_records(held_out)),
        write_jsonl(directory / "held_out_examples.jsonl", [e.to_dict() for e in held_out]),
    ]


# --- scoring ------------------------------------------------------------------------------------------

def normalize(text: str) -> str:
    """Collapse whitespace runs and strip the ends: the only leniency exact match allows."""
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> bool:
    return normalize(prediction) == normalize(answer)


def score(examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, float]:
    """Fraction of exact matches overall (`exact_match`) and per task (`exact_match/<task>`)."""
    if len(examples) != len(predictions):
        raise ConfigError(f"{len(predictions)} predictions for {len(examples)} examples")
    hits: dict[str, list[bool]] = defaultdict(list)
    for e, p in zip(examples, predictions):
        hits[e.task].append(exact_match(p, e.answer))
    all_hits = [h for task in hits.values() for h in task]
    out = {"exact_match": sum(all_hits) / max(1, len(all_hits))}
    out.update({f"exact_match/{t}": sum(h) / len(h) for t, h in sorted(hits.items())})
    return out


def evaluate(model, tokenizer, examples: Sequence[Example], max_new_tokens: int = 24,
             system: str | None = None) -> dict[str, float]:
    """Exact match of the model's greedy answers on `examples` (`system`: see `chat_answers`)."""
    return score(examples, chat_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens, system))
