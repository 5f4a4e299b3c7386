"""Prune a model: unstructured magnitude pruning, or structured pruning of MLP neurons or attention heads.

Writes the pruned checkpoint (smaller for neurons and heads, sparser for magnitude), report.md and,
with --curve, the perplexity at every amount from 0 to 0.9 as prune_curve.png. With --recover-steps
and --shards, the prune is followed by a short fine-tune that lets the model adapt (after unstructured
pruning the zeros stay zero through it).

examples:
  llmlab prune smollm2-135m --method sparsegpt --amount 0.5 --calibrate train.parquet --text held_out.parquet \
      --out runs/pruned --curve
  llmlab prune runs/demo/pretrain --method neurons --amount 0.25 --out runs/demo/pruned \\
      --recover-steps 100 --shards runs/demo/shards --text runs/demo/clean/documents.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmlab.eval.pruning import METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a checkpoint or run directory, a .gguf file, or smollm2-135m")
    parser.add_argument("--out", required=True, help="directory for the pruned checkpoint and its report")
    parser.add_argument("--method", choices=METHODS, default="magnitude",
                        help="magnitude (one global threshold), magnitude-layer (per matrix), wanda (|w| x "
                             "input norm, per row), sparsegpt (per row, the rest of the row corrected), "
                             "neurons, heads")
    parser.add_argument("--amount", type=float, default=0.5, help="fraction of weights / neurons / heads to remove")
    parser.add_argument("--text", help="texts to measure perplexity on (.txt, or records with a 'text' field)")
    parser.add_argument("--limit", type=int, default=20, help="use the first N texts (default 20)")
    parser.add_argument("--calibrate", help="texts whose activations score the weights (wanda, sparsegpt; sharper neurons/heads)")
    parser.add_argument("--curve", action="store_true", help="also measure perplexity at amounts 0, 0.1, ..., 0.9")
    parser.add_argument("--recover-steps", type=int, default=0, help="fine-tune this many steps after pruning")
    parser.add_argument("--shards", help="token shards for the recovery fine-tune")
    parser.add_argument("--recover-lr", type=float, default=1e-4, help="peak learning rate of the recovery fine-tune")


def run(args: argparse.Namespace) -> int:
    from llmlab.errors import ConfigError
    from llmlab.eval.models import display_name
    from llmlab.eval.pruning import prune_checkpoint
    from llmlab.eval.records import read_texts
    from llmlab.model.loading import load_model

    recover = None
    if args.recover_steps:
        if not args.shards:
            raise ConfigError("--recover-steps needs --shards (the token shards to fine-tune on)")

        def recover(pruned, directory: Path, hold_zeros: bool):
            from llmlab.eval.pruning import fine_tune
            from llmlab.train import TrainConfig
            from llmlab.train.data import open_shards

            config = TrainConfig(shards=args.shards, out_dir=str(directory / "recover"), max_steps=args.recover_steps,
                                 warmup_steps=0, lr=args.recover_lr, sample_tokens=0, eval_every=args.recover_steps,
                                 checkpoint_every=args.recover_steps)
            return fine_tune(pruned, open_shards(args.shards).arrays, config, hold_zeros, directory / "tokenizer.json")

    model, tokenizer = load_model(args.model)
    texts = read_texts(args.text)[: args.limit] if args.text else None
    sweep = [round(0.1 * i, 1) for i in range(10)] if args.curve else None
    if args.curve and not texts:
        raise ConfigError("--curve needs --text (the texts to measure perplexity on)")
    calibration = read_texts(args.calibrate)[: args.limit] if args.calibrate else None
    r = prune_checkpoint(model, tokenizer, display_name(args.model), args.out, args.method, args.amount, texts,
                         sweep, recover, calibration)
    print(f"parameters {r.parameters[0]:,} -> {r.parameters[1]:,}, {100 * r.sparsity:.1f}% zeros in the blocks")
    if r.perplexity:
        print(f"perplexity {r.perplexity[0]:.3f} -> {r.perplexity[1]:.3f}"
              + (f", {r.recovered_perplexity:.3f} after recovery" if r.recovered_perplexity is not None else ""))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
