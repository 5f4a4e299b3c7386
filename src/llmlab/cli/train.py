"""Pretrain a transformer on token shards.

Options come from TrainConfig's defaults, then a TOML recipe (--recipe), then --set key=value overrides,
then the explicit flags below. Runs resume exactly with --resume. Scale out with
`torchrun --nproc_per_node=N -m llmlab train ...` (DDP; --set distributed=fsdp shards the model).

examples:
  llmlab train --recipe cpu-demo --shards runs/demo/shards --out runs/demo/pretrain
  llmlab train --shards runs/demo/shards --depth 6 --steps 2000 --set lr=1e-3 --set micro_batch=16
  llmlab train --recipe cpu-demo --shards runs/demo/shards --out runs/demo/pretrain --resume
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="a TOML recipe: a path, or a shipped name (cpu-demo, gpt2-124m, tiny)")
    parser.add_argument("--shards", help="directory with meta.json and shard_*.bin from `llmlab tokenizer`")
    parser.add_argument("--out", dest="out_dir", help="output directory for checkpoints, metrics and the report")
    parser.add_argument("--tokenizer", help="tokenizer.json that encoded the shards (default: found beside them)")
    parser.add_argument("--depth", type=int, help="size dial for a from-scratch model (width = 64 x depth)")
    parser.add_argument("--preset", help="a named model configuration from llmlab.model.PRESETS instead of --depth")
    parser.add_argument("--init-from", dest="init_from", help="start from this checkpoint's weights")
    parser.add_argument("--steps", dest="max_steps", type=int, help="optimizer steps to train")
    parser.add_argument("--micro-batch", dest="micro_batch", type=int, help="sequences per forward/backward")
    parser.add_argument("--tokens-per-step", dest="tokens_per_step", type=int,
                        help="global tokens per optimizer step (sets gradient accumulation)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: suggested for the model's width)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any TrainConfig field, e.g. --set eval_every=100 --set model.dropout=0.1")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoints/latest (exactly: same data, optimizer and RNG state)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def resolve_config(args: argparse.Namespace):
    """The TrainConfig the flags describe; None after printing it for --print-config."""
    from llmlab.train.config import load_config

    explicit = {k: getattr(args, k) for k in (
        "shards", "out_dir", "tokenizer", "depth", "preset", "init_from", "max_steps", "micro_batch",
        "tokens_per_step", "lr", "device", "compile")}
    config = load_config(args.recipe, args.overrides, **explicit)
    if args.print_config:
        import json

        print(json.dumps(config.to_dict(), indent=2))
        return None
    return config


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if config is None:
        return 0
    from llmlab.train.distributed import shutdown
    from llmlab.train.pretrain import pretrain

    try:
        result = pretrain(config, resume=args.resume)
    finally:
        shutdown()
    print_result(result, config)
    return 0


def print_result(result, config) -> None:
    if result.checkpoint is not None:
        final = {k: round(v, 4) for k, v in result.last_eval.items() if isinstance(v, float)}
        print(f"trained to step {result.step}: {final}", file=sys.stderr)
        print(f"checkpoint: {result.checkpoint}")
        print(f"report:     {config.out_dir}/report.md")
