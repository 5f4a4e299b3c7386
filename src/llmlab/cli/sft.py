"""Supervised fine-tuning on chat data: full fine-tuning or LoRA, resumable like pretraining.

Data is JSONL, one conversation per line: {"instruction": ..., "input"?: ..., "response": ...} or
{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}; only the
assistant's tokens are trained. `--data tasks` uses llmlab's built-in checkable tasks (arithmetic,
sorting, reversing, counting letters, following a format) and scores exact match on their held-out split.
Checkpoints are ordinary llmlab checkpoints (with LoRA: the merged model, plus the adapter alone in
checkpoints/step_*/adapter/), so `llmlab chat OUT` talks to the result.

examples:
  llmlab sft --init-from runs/demo/pretrain --data tasks --out runs/demo/sft
  llmlab sft --init-from runs/demo/pretrain --data chat.jsonl --eval-data qa.jsonl --epochs 3 --out runs/demo/sft
  llmlab sft --init-from runs/demo/pretrain --data tasks --lora-rank 8 --out runs/demo/sft-lora
  llmlab sft --init-from runs/demo/pretrain --data tasks --out runs/demo/sft --resume
  llmlab sft --export-tasks data/tasks      # write the built-in tasks as JSONL to look at or edit
"""

from __future__ import annotations

import argparse

from llmlab.cli.posttrain import add_common_arguments, add_system_argument, common_config, launch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        data_help='JSONL conversations ({"instruction","input"?,"response"} or {"messages": [...]}), or "tasks"',
        eval_help='JSONL of {"instruction", "response"} scored by exact match at each evaluation',
    )
    add_system_argument(parser)
    parser.add_argument("--export-tasks", metavar="DIR",
                        help="write the built-in tasks (SFT and preference JSONL, train and held-out) to DIR and exit")


def run(args: argparse.Namespace) -> int:
    if args.export_tasks:
        from llmlab.train.checkable_tasks import export

        for path in export(args.export_tasks, args.tasks_train, args.tasks_eval):
            print(path)
        return 0
    from llmlab.train.posttrain import PostTrainOptions
    from llmlab.train.sft import sft

    config, values = common_config(args, "sft")
    return launch(sft, config, PostTrainOptions(**values, system=args.system), args)
