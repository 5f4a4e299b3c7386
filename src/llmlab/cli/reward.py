"""Reward models: train one on preference pairs, or score answers with one.

`reward train` puts a scalar head on a model (usually an SFT checkpoint) and trains it with the
Bradley–Terry loss on the {"prompt", "chosen", "rejected"} JSONL that `llmlab dpo` reads, reporting the
held-out pairwise accuracy (how often the chosen answer scores higher). Checkpoints are ordinary llmlab
checkpoints with a value head; `llmlab rl --algo ppo --reward-model OUT` optimises a policy against one.

`reward score` reads JSONL lines of {"prompt", "response"} (adds "reward") or preference pairs (adds
"chosen_reward" and "rejected_reward", and prints the pairwise accuracy), and writes them to --out or stdout.

examples:
  llmlab reward train --init-from runs/demo/sft --data tasks --out runs/demo/reward
  llmlab reward train --init-from runs/demo/sft --data pairs.jsonl --eval-data held_out.jsonl --out runs/demo/reward
  llmlab reward score --model runs/demo/reward --data answers.jsonl --out scored.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

from llmlab.cli.posttrain import add_common_arguments, common_config, launch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="reward_command", metavar="SUBCOMMAND", required=True)
    train = sub.add_parser("train", help="train a reward model on preference pairs",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(
        train,
        data_help='JSONL of {"prompt", "chosen", "rejected"}, or "tasks" for the built-in tasks',
        eval_help="held-out preference JSONL (default: a --set val_fraction=... split of --data)",
    )
    score = sub.add_parser("score", help="score answers (or preference pairs) with a trained reward model")
    score.add_argument("--model", required=True, help="the reward model: a checkpoint or run directory")
    score.add_argument("--data", required=True,
                       help='JSONL of {"prompt", "response"} or of {"prompt", "chosen", "rejected"}')
    score.add_argument("--out", help="where to write the scored JSONL (default: stdout)")
    score.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")


def run(args: argparse.Namespace) -> int:
    if args.reward_command == "score":
        return _score(args)
    from llmlab.train.reward import RewardOptions, train_reward_model

    config, values = common_config(args, "reward")
    return launch(train_reward_model, config, RewardOptions(**values), args)


def _score(args: argparse.Namespace) -> int:
    from llmlab.errors import InputError
    from llmlab.train.checkable_tasks import write_jsonl
    from llmlab.train.examples import read_jsonl
    from llmlab.train.preferences import read_preferences
    from llmlab.train.reward_scores import load_reward_model, score_answers

    model, tokenizer = load_reward_model(args.model, device=args.device)
    records = [record for _, record in read_jsonl(args.data)]
    if not records:
        raise InputError(f"{args.data} holds nothing to score")
    if "chosen" in records[0]:
        records = read_preferences(args.data)
        prompts = [r["prompt"] for r in records]
        chosen = score_answers(model, tokenizer, prompts, [r["chosen"] for r in records])
        rejected = score_answers(model, tokenizer, prompts, [r["rejected"] for r in records])
        for r, c, w in zip(records, chosen, rejected):
            r.update(chosen_reward=c, rejected_reward=w)
        accuracy = sum(c > w for c, w in zip(chosen, rejected)) / len(records)
        print(f"pairwise accuracy: {accuracy:.4f} over {len(records)} pairs", file=sys.stderr)
    else:
        for where, r in read_jsonl(args.data):
            if not isinstance(r.get("prompt"), str) or not isinstance(r.get("response"), str):
                raise InputError(f'{where}: expected string fields "prompt" and "response"')
            if not r["prompt"].strip():
                raise InputError(f"{where}: the prompt is empty")
        rewards = score_answers(model, tokenizer, [r["prompt"] for r in records], [r["response"] for r in records])
        for r, value in zip(records, rewards):
            r["reward"] = value
    if args.out:
        print(write_jsonl(args.out, records))
    else:
        sys.stdout.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return 0
