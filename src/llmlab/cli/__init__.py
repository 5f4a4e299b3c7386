"""The `llmlab` command: one subcommand per pipeline stage.

Each subcommand lives in its own module `llmlab.cli.<name>` exposing `add_arguments(parser)` and
`run(args) -> int`. Only the chosen subcommand's module is imported, so `llmlab --help` stays fast and
a stage's heavy dependencies load only when that stage runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llmlab import __version__
from llmlab.errors import LlmlabError

# name -> (module, one-line summary); the order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "crawl": ("llmlab.cli.crawl", "Crawl a website politely (robots.txt, resumable) into raw pages."),
    "clean": ("llmlab.cli.clean", "Extract, filter, deduplicate and scrub pages into a Parquet table."),
    "tokenizer": ("llmlab.cli.tokenizer", "Train, inspect and compare tokenizers; encode text into token shards."),
    "train": ("llmlab.cli.train", "Pretrain a transformer on token shards (resumable, DDP/FSDP via torchrun)."),
    "sft": ("llmlab.cli.sft", "Supervised fine-tuning on chat data (full or LoRA)."),
    "dpo": ("llmlab.cli.dpo", "Direct preference optimisation on (prompt, chosen, rejected) pairs."),
    "distill": ("llmlab.cli.distill", "Distil a teacher model into a smaller student on token shards."),
    "prune": ("llmlab.cli.prune", "Prune a model (magnitude, MLP neurons, attention heads) and measure the cost."),
    "reward": ("llmlab.cli.reward", "Train a reward model on preference pairs, or score answers with one."),
    "rl": ("llmlab.cli.rl", "Reinforcement learning from rewards: GRPO on checkable tasks, PPO with a reward model."),
    "index": ("llmlab.cli.index", "Build a retrieval index (BM25 + embeddings) from cleaned documents."),
    "search": ("llmlab.cli.search", "Search a retrieval index: the best passages for a query, with scores."),
    "generate": ("llmlab.cli.generate", "Generate text from a checkpoint with any decoding strategy."),
    "chat": ("llmlab.cli.chat", "Chat with a model in the terminal."),
    "eval": ("llmlab.cli.eval", "Perplexity, multiple-choice benchmarks and generation metrics."),
    "serve": ("llmlab.cli.serve", "Web playground and OpenAI-compatible API."),
    "estimate": ("llmlab.cli.estimate", "Parameters, memory, FLOPs, cost and Chinchilla-optimal sizes."),
    "quickstart": ("llmlab.cli.quickstart", "The whole pipeline end to end, from a crawl to a chat."),
}


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmlab",
        description="llmlab: build a language model from a web crawl to a chat.",
    )
    parser.add_argument("--version", action="version", version=f"llmlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        module = importlib.import_module(COMMANDS[name][0]) if name == selected else None
        description = (module.__doc__ or summary) if module else summary
        p = sub.add_parser(
            name,
            help=summary,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected not in COMMANDS:
        selected = None
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except LlmlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; re-run the same command to continue where it stopped.", file=sys.stderr)
        return 130
