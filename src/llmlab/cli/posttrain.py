"""The options every post-training command (sft, dpo) shares, and how a run of one is launched."""

from __future__ import annotations

import argparse
import json
import sys


def add_common_arguments(parser: argparse.ArgumentParser, data_help: str, eval_help: str) -> None:
    """The options SFT and DPO share."""
    parser.add_argument("--init-from", dest="init_from",
                        help="the model to start from: a checkpoint or run directory, a .gguf file, or smollm2-135m")
    parser.add_argument("--data", help=data_help)
    parser.add_argument("--eval-data", dest="eval_data", help=eval_help)
    parser.add_argument("--out", dest="out_dir", help="output directory for checkpoints, metrics and the report")
    parser.add_argument("--tokenizer", help="tokenizer.json to use instead of the starting checkpoint's own")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the training data (default 2; sets the steps)")
    parser.add_argument("--steps", dest="max_steps", type=int, help="optimizer steps to train (instead of --epochs)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: a tenth of the from-scratch rate; LoRA: the full rate)")
    parser.add_argument("--micro-batch", dest="micro_batch", type=int, help="examples per forward/backward")
    parser.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank instead of every weight")
    parser.add_argument("--lora-alpha", type=float, help="LoRA scale numerator: updates are scaled by alpha / rank (default 2 x rank)")
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the LoRA branch's input")
    parser.add_argument("--lora-targets", help="comma-separated linear layers to adapt, by name or suffix "
                        "(default: qkv,proj,up,down = every matrix in the blocks)")
    parser.add_argument("--qlora", action="store_true",
                        help="QLoRA: hold the adapted matrices' frozen base in 4-bit NormalFloat (about 1/7 of fp32)")
    parser.add_argument("--tasks-train", type=int, default=2000, help="with --data tasks: training examples to draw")
    parser.add_argument("--tasks-eval", type=int, default=100, help="with --data tasks: held-out examples to score")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--recipe", help="a TOML file of TrainConfig values (applied over the post-training defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any TrainConfig field, e.g. --set eval_every=50 --set warmup_steps=10")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoints/latest (exactly: same data order, optimizer and RNG state)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def add_system_argument(parser: argparse.ArgumentParser) -> None:
    """--system: the system message of every conversation trained on, sampled or scored (SFT and RL)."""
    parser.add_argument("--system", help="system message before every prompt, the same in training and scoring "
                                         "(default: the chat template's own; \"\" for an empty one, the shortest)")


def common_config(args: argparse.Namespace, default_out: str):
    """(TrainConfig, option values) from the shared arguments."""
    from llmlab.train.posttrain import lora_from_options, posttrain_config

    explicit = {k: getattr(args, k) for k in ("init_from", "tokenizer", "max_steps", "lr", "micro_batch", "device")}
    config = posttrain_config(args.recipe, args.overrides, out_dir=args.out_dir or default_out, **explicit)
    if not args.data:
        from llmlab.errors import ConfigError

        raise ConfigError("no training data", hint="pass --data FILE.jsonl, or --data tasks for the built-in tasks")
    epochs = args.epochs if args.epochs is not None else (None if args.max_steps else 2.0)
    values = dict(data=args.data, eval_data=args.eval_data, epochs=epochs,
                  lora=lora_from_options(args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets,
                                         args.qlora),
                  tasks_train=args.tasks_train, tasks_eval=args.tasks_eval)
    return config, values


def print_config(config, options) -> None:
    print(json.dumps({"train": config.to_dict(), "options": options.to_dict()}, indent=2, default=str))


def print_outcome(result, out_dir: str) -> None:
    final = {k: round(v, 4) for k, v in result.last_eval.items() if isinstance(v, float)}
    print(f"trained to step {result.step}: {final}", file=sys.stderr)
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    print(f"report:     {out_dir}/report.md")


def launch(train, config, options, args: argparse.Namespace) -> int:
    """Print the config (--print-config) or run `train` (sft or dpo), closing any process group after."""
    if args.print_config:
        print_config(config, options)
        return 0
    from llmlab.train.distributed import shutdown

    try:
        result = train(config, options, resume=args.resume)
    finally:
        shutdown()
    print_outcome(result, config.out_dir)
    return 0
