"""The main job: from a crawl to a chat, end to end, on a laptop CPU.

With no options it renders Python's standard-library documentation with pydoc, serves it on
127.0.0.1, crawls it, cleans it, trains a BPE tokenizer and a small transformer sized for the time
budget, fine-tunes it on questions about the documentation, evaluates before/after, indexes the pages
for retrieval, compares SmolLM2-135M's answers without and with their passages (RAG), writes
runs/quickstart/report.md and starts the playground on SmolLM2 answering from the index, with sources. Interrupt it at any point: the same command
continues where it stopped.

    llmlab quickstart                      # about 20 minutes on 2 CPU cores
    llmlab quickstart --minutes 8 --no-serve
    llmlab quickstart --url https://docs.example.org/ --out runs/mysite
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="run directory (default runs/quickstart)")
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="time budget for all stages; training is sized to fit it (default 20)")
    parser.add_argument("--url", default=None, help="crawl this site instead of the embedded pydoc site")
    parser.add_argument("--source", nargs="+", default=[], metavar="PATH",
                        help="WARC / JSONL / Parquet / text files to use instead of crawling")
    parser.add_argument("--max-pages", type=int, default=400, help="pages to render and crawl (default 400)")
    parser.add_argument("--recipe", default="documentation",
                        help="cleaning recipe: documentation (default), fineweb, or a TOML path")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (default 4096)")
    parser.add_argument("--context-length", type=int, default=256, help="model context window (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling data and initialising models")
    parser.add_argument("--force", action="store_true", help="redo every stage instead of continuing")
    parser.add_argument("--no-serve", action="store_true", help="stop after the report instead of starting the playground")
    parser.add_argument("--port", type=int, default=8000, help="playground port (default 8000)")


def run(args: argparse.Namespace) -> int:
    from llmlab.quickstart.pipeline import Quickstart, QuickstartConfig
    from llmlab.quickstart.stages import headline

    config = QuickstartConfig(
        out=args.out, minutes=args.minutes, url=args.url, source=args.source, max_pages=args.max_pages,
        recipe=args.recipe, vocab_size=args.vocab_size, context_length=args.context_length, seed=args.seed,
        force=args.force,
    )
    quickstart = Quickstart(config)
    report = quickstart.run_all()
    print(f"\nreport: {report}\n{headline(quickstart.state)}")
    if args.no_serve:
        return 0
    from llmlab.cli import main

    index = ["--index", f"quickstart={args.out / 'index'}"] if (args.out / "index").is_dir() else []
    return main(["serve", "--models", str(args.out), "--port", str(args.port), *index])
