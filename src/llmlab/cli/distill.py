"""Distil a teacher model into a smaller student on token shards.

The loss is alpha * CE(data) + (1 - alpha) * T^2 * KL(teacher^T || student^T) (Hinton et al. 2015). The
student is configured like `llmlab train` (recipe, --depth/--preset, --set ...) and gets the teacher's
vocabulary; the teacher (a checkpoint, a run directory, a .gguf file or smollm2-135m) must use the
tokenizer that wrote the shards. Resumes exactly with --resume.

examples:
  llmlab distill --teacher runs/demo/pretrain --shards runs/demo/shards --depth 2 --out runs/demo/distill
  llmlab distill --teacher smollm2-135m --shards runs/smol/shards --depth 4 --alpha 0.2 --temperature 2
"""

from __future__ import annotations

import argparse

from llmlab.cli import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="the teacher: checkpoint, run directory, .gguf or smollm2-135m")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the data's cross-entropy (default 0.5)")
    parser.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of both models (default 2)")
    train.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from llmlab.train.distill import distill
    from llmlab.train.distributed import shutdown

    config = train.resolve_config(args)
    if config is None:
        return 0
    try:
        result = distill(config, args.teacher, args.alpha, args.temperature, resume=args.resume)
    finally:
        shutdown()
    train.print_result(result, config)
    return 0
