"""Reinforcement learning from rewards: GRPO on checkable tasks, PPO against a reward model.

The policy (usually an SFT checkpoint) samples answers to prompts; a reward scores them (the built-in
tasks' verifier: 1 for an exact match, or a reward model from `llmlab reward train`); the policy is
pushed toward better-than-expected answers with a clipped policy-gradient loss while a KL term keeps it
near the frozen reference (the starting model). GRPO samples --group-size answers per prompt and needs no
critic; PPO learns a value head and uses GAE. Progress shows reward, KL (nats per answer token), entropy
and clip fraction; the report plots them. Full or LoRA (the reference is then the base without the
adapter), resumable exactly like every other stage.

Data: "tasks", or JSONL with a "prompt" per line and optionally an "answer" to check (a DPO preference
file's prompts serve as they are, with --reward-model).

examples:
  llmlab rl --algo grpo --init-from runs/demo/sft --data tasks --out runs/demo/grpo
  llmlab rl --algo ppo --init-from runs/demo/sft --data pairs.jsonl --reward-model runs/demo/reward --out runs/demo/ppo
  llmlab rl --algo ppo --init-from runs/demo/sft --data tasks --target-kl 2 --lora-rank 8 --out runs/demo/ppo-lora
"""

from __future__ import annotations

import argparse

from llmlab.cli.posttrain import add_common_arguments, add_system_argument, common_config, launch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        data_help='JSONL of {"prompt", "answer"?}, or "tasks" for the built-in checkable tasks',
        eval_help='held-out JSONL of {"prompt", "answer"?}: exact match and/or --eval-reward-model\'s mean reward',
    )
    parser.add_argument("--algo", choices=("grpo", "ppo"), default="grpo", help="the RL algorithm (default grpo)")
    parser.add_argument("--reward-model", help="score answers with this reward model instead of the tasks' verifier")
    parser.add_argument("--eval-reward-model", help="a separately trained reward model for the held-out mean reward")
    parser.add_argument("--prompts-per-round", type=int, default=8, help="prompts sampled per rollout")
    parser.add_argument("--group-size", type=int, help="answers per prompt (GRPO default 4, PPO default 1)")
    parser.add_argument("--rollout-epochs", type=int, help="passes over each rollout (GRPO default 1, PPO default 4)")
    parser.add_argument("--clip", type=float, default=0.2, help="clip the ratio pi/pi_old to [1-clip, 1+clip]")
    parser.add_argument("--beta", type=float, help="KL coefficient (GRPO default 0.04, PPO default 0.05)")
    parser.add_argument("--target-kl", type=float, help="PPO: adapt beta toward this KL per answer (nats)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the rollouts")
    parser.add_argument("--task-families", help="with --data tasks: comma-separated families to train and score on "
                                                "(e.g. arithmetic; default all)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="longest answer sampled or scored")
    add_system_argument(parser)


def run(args: argparse.Namespace) -> int:
    from llmlab.train.rl import RLOptions, rl

    config, values = common_config(args, args.algo)
    options = RLOptions(**values, algo=args.algo, reward_model=args.reward_model,
                        eval_reward_model=args.eval_reward_model, prompts_per_round=args.prompts_per_round,
                        group_size=args.group_size, rollout_epochs=args.rollout_epochs, clip=args.clip,
                        beta=args.beta, target_kl=args.target_kl, temperature=args.temperature,
                        max_new_tokens=args.max_new_tokens, system=args.system,
                        task_families=tuple(args.task_families.split(",")) if args.task_families else None)
    return launch(rl, config, options, args)
