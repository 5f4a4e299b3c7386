"""Run one benchmark on one model: build prompts, score or generate, and aggregate the metrics.

Multiple-choice and LAMBADA-style tasks are scored by log-likelihood (`loglikelihood`); generation
tasks decode greedily with `llmlab.infer.Engine`. Every mean comes with its standard error, and the
per-example details come back too, so a result can be checked example by example against another
implementation.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.eval.text_metrics import generate_greedy, gsm8k_scores
from llmlab.eval.loglikelihood import loglikelihood
from llmlab.eval.models import LanguageModel, display_name, load_language_model
from llmlab.eval.multiple_choice import mean, mean_stderr, score_choices
from llmlab.eval.perplexity import perplexity
from llmlab.eval.records import read_texts
from llmlab.eval.report import load_results, model_entry, new_results, write_results
from llmlab.eval.prompting import chat_prompt, check_chat, get_technique, resolve
from llmlab.eval.tasks import (
    Task, build_contexts, check_disjoint, fewshot_pool, get_task, held_out_pool, load_docs, requests_for,
    sample_shots,
)
from llmlab.files import atomic_write
from llmlab.progress import Progress


@dataclass
class TaskResult:
    task: str
    num_fewshot: int
    examples: int
    metrics: dict[str, float | None]
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    prompting: str | None = None  # the technique (zero-shot, few-shot, cot) when one was asked for

    def to_dict(self) -> dict[str, Any]:
        """The summary kept in results.json (per-example samples go to their own files)."""
        summary = {"task": self.task, "num_fewshot": self.num_fewshot, "examples": self.examples,
                   "metrics": self.metrics, "seconds": round(self.seconds, 2)}
        return summary | ({"prompting": self.prompting} if self.prompting else {})


def _aggregate(per_example: dict[str, list[float]]) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    for name, values in per_example.items():
        metrics[name] = mean(values)
        stderr = mean_stderr(values)
        metrics[f"{name}_stderr"] = None if math.isnan(stderr) else stderr
    return metrics


def evaluate_task(
    lm: LanguageModel,
    task: Task,
    limit: int | None = None,
    num_fewshot: int = 0,
    seed: int = 1234,
    data_path: str | os.PathLike | None = None,
    batch_tokens: int = 4096,
    max_new_tokens: int = 256,
    fewshot_path: str | os.PathLike | None = None,
    chat: bool = False,
) -> TaskResult:
    """Score `lm` on the first `limit` examples of `task` with `num_fewshot` shots per prompt.

    Shots come from `fewshot_path` if given, else from the task's few-shot pool (`fewshot_pool`). With
    `chat`, a generation task's prompt is the model's chat template with the shots as earlier turns.
    """
    if chat:
        check_chat(task)
    started = time.perf_counter()
    docs = load_docs(task, data_path, limit)
    pool = fewshot_pool(task, data_path, fewshot_path) if num_fewshot else []
    if pool and held_out_pool(task, data_path, fewshot_path):
        check_disjoint(task, docs, pool)
    shots = [sample_shots(task, pool, doc, i, num_fewshot, seed) for i, doc in enumerate(docs)]
    per_example: dict[str, list[float]] = {}
    samples: list[dict[str, Any]] = []

    if task.kind == "generate":
        room = max(1, lm.max_length - max_new_tokens)
        prompts = [chat_prompt(task, doc, s, lm.tokenizer, room) if chat else build_contexts(task, doc, s)[0]
                   for doc, s in zip(docs, shots)]
        outputs = generate_greedy(lm, prompts, task.stop, max_new_tokens, desc=task.name)
        for doc, output in zip(docs, outputs):
            matches = gsm8k_scores(output, doc.target, task.answer_pattern)
            for name, value in matches.items():
                per_example.setdefault(name, []).append(value)
            samples.append({"generation": output, "reference": doc.target, **matches})
    else:
        contexts = [build_contexts(task, doc, s) for doc, s in zip(docs, shots)]
        requests = [requests_for(task, doc, ctx) for doc, ctx in zip(docs, contexts)]
        flat = [r for rs in requests for r in rs]
        with Progress(total=len(flat), desc=task.name, unit="req") as progress:
            scores = loglikelihood(lm, flat, batch_tokens, progress)
        offset = 0
        for doc, rs in zip(docs, requests):
            own = scores[offset : offset + len(rs)]
            offset += len(rs)
            lls = [s.logprob for s in own]
            if task.kind == "loglikelihood":
                values = {"acc": float(own[0].is_greedy), "loglikelihood": lls[0]}
                samples.append({"loglikelihood": lls[0], "is_greedy": own[0].is_greedy})
            else:
                result = score_choices(lls, doc.choices, doc.gold)
                values = {"acc": result.acc, "acc_norm": result.acc_norm}
                samples.append({"loglikelihoods": lls, "gold": doc.gold, "pred": result.pred,
                                "pred_norm": result.pred_norm})
            for name, value in values.items():
                if name in task.metrics or name == "loglikelihood":
                    per_example.setdefault(name, []).append(value)

    metrics = _aggregate({k: v for k, v in per_example.items() if k != "loglikelihood"})
    if "perplexity" in task.metrics:
        # The harness's perplexity of a word-prediction task: exp of the mean negative log-likelihood.
        metrics["perplexity"] = math.exp(-mean(per_example["loglikelihood"]))
    return TaskResult(task.name, num_fewshot, len(docs), metrics, time.perf_counter() - started, samples)


def _runs(task_names: list[str], prompting: list[str] | None, num_fewshot: int
          ) -> list[tuple[str, Task, int, str | None]]:
    """(results key, task definition, shots, technique) for every evaluation to run."""
    if not prompting:
        return [(name, get_task(name), num_fewshot, None) for name in task_names]
    techniques = [get_technique(name) for name in prompting]
    runs = []
    for name in task_names:
        for technique in techniques:
            if technique.chain_of_thought and get_task(name).cot_variant is None and len(techniques) > 1:
                continue  # multiple choice has no worked solutions: its cot cell stays empty
            task, shots = resolve(technique, get_task(name), num_fewshot)
            runs.append((f"{name}/{technique.name}", task, shots, technique.name))
    return runs


def evaluate_models(
    models: list[str],
    task_names: list[str],
    out_dir: str | os.PathLike,
    limit: int | None = None,
    num_fewshot: int = 0,
    seed: int = 1234,
    data_paths: dict[str, str] | None = None,
    perplexity_file: str | None = None,
    stride: int | None = None,
    batch_tokens: int = 4096,
    max_new_tokens: int = 256,
    save_samples: bool = False,
    prompting: list[str] | None = None,
    fewshot_paths: dict[str, str] | None = None,
    chat: bool = False,
) -> dict[str, Any]:
    """Evaluate each model on each task (and the perplexity file), writing results after every step.

    With `prompting` (technique names, see `llmlab.eval.prompting`), every task runs once per technique
    and its results are kept as "TASK/TECHNIQUE"; the report then compares the techniques.
    Re-running with the same settings and output directory skips what results.json already holds,
    so an interrupted evaluation continues where it stopped.
    """
    data_paths, fewshot_paths = data_paths or {}, fewshot_paths or {}
    runs = _runs(task_names, prompting, num_fewshot)
    if chat:
        for _, task, _, _ in runs:
            check_chat(task)
    settings = {"tasks": task_names, "limit": limit, "num_fewshot": num_fewshot, "seed": seed,
                "data": data_paths, "perplexity_file": perplexity_file, "stride": stride}
    if prompting or fewshot_paths or chat:  # older results files lack these keys and stay resumable
        settings |= {"prompting": prompting, "fewshot_data": fewshot_paths, "chat": chat,
                     "max_new_tokens": max_new_tokens}
    out_dir = Path(out_dir)
    results = load_results(out_dir / "results.json")
    if results is None or results["settings"] != settings:
        results = new_results(settings)
    texts = read_texts(perplexity_file) if perplexity_file else None
    for spec in models:
        entry = model_entry(results, display_name(spec), str(spec))
        todo = [run for run in runs if run[0] not in entry["tasks"]]
        if not todo and (texts is None or entry["perplexity"]):
            continue
        lm = load_language_model(spec)
        for key, task, shots, technique in todo:
            base = key.split("/")[0]
            result = evaluate_task(lm, task, limit, shots, seed, data_paths.get(base), batch_tokens, max_new_tokens,
                                   fewshot_paths.get(base), chat)
            result.prompting = technique
            entry["tasks"][key] = result.to_dict()
            if save_samples:
                slug = entry["name"].replace("/", "_")
                with atomic_write(out_dir / "samples" / slug / f"{key.replace('/', '.')}.jsonl") as f:
                    f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in result.samples)
            write_results(out_dir, results)
        if texts is not None and not entry["perplexity"]:
            ppl = perplexity(lm, texts, stride=stride, batch_tokens=batch_tokens)
            entry["perplexity"] = {"file": str(perplexity_file), "stride": stride or lm.max_length, **ppl.to_dict()}
        write_results(out_dir, results)
    write_results(out_dir, results)
    return results
