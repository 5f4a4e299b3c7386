"""Direct preference optimisation on (prompt, chosen, rejected) pairs, against a frozen reference.

Data is JSONL, one pair per line: {"prompt": ..., "chosen": ..., "rejected": ...}. The reference is the
starting model (usually an SFT checkpoint). Reported on held-out pairs: the DPO loss, the implicit reward
margin and accuracy, and the preference accuracy (how often the model itself gives the chosen answer the
higher log-probability). `--data tasks` uses the built-in checkable tasks, whose wrong answers are the
rejected side, and also scores exact match. Full or LoRA, resumable like pretraining.

examples:
  llmlab dpo --init-from runs/demo/sft --data tasks --out runs/demo/dpo
  llmlab dpo --init-from runs/demo/sft --data pairs.jsonl --eval-data held_out_pairs.jsonl --beta 0.1 --out runs/demo/dpo
  llmlab dpo --init-from runs/demo/sft --data tasks --lora-rank 8 --out runs/demo/dpo-lora --resume
"""

from __future__ import annotations

import argparse

from llmlab.cli.posttrain import add_common_arguments, common_config, launch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        data_help='JSONL of {"prompt", "chosen", "rejected"}, or "tasks" for the built-in tasks',
        eval_help="held-out preference JSONL (default: a --set val_fraction=... split of --data)",
    )
    parser.add_argument("--beta", type=float, default=0.1,
                        help="strength of the tie to the reference model (larger: the policy moves less)")
    parser.add_argument("--nll-weight", type=float, default=0.0,
                        help="add this times the chosen answers' per-token NLL to the loss (RPO); keeps them likely")


def run(args: argparse.Namespace) -> int:
    from llmlab.train.dpo import DPOOptions, dpo

    config, values = common_config(args, "dpo")
    return launch(dpo, config, DPOOptions(**values, beta=args.beta, nll_weight=args.nll_weight), args)
