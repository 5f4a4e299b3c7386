"""Clean raw pages into a table of documents: URL filter, text extraction, language ID, quality
filters, deduplication and PII redaction, as a recipe lists them (default: FineWeb's).

Inputs are WARC files (the crawler's crawl/pages.warc.gz, Common Crawl WARC/WET), JSONL or Parquet
with a `text` or `html` field and a `url`, or text/HTML files and directories. Writes
documents.parquet, removed.parquet (every dropped document with its step and reason), stats.json,
stats.md and lengths.png into --out. A run that is killed resumes when started again with the same
arguments (finished pages are saved under --out/checkpoint every 30 s).

  llmlab clean runs/demo/crawl/pages.warc.gz --out runs/demo/clean
  llmlab clean dump.jsonl --out clean --recipe documentation --workers 2
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="WARC, JSONL, Parquet or text files, or directories of them")
    parser.add_argument("--out", required=True, help="output directory (e.g. runs/NAME/clean)")
    parser.add_argument(
        "--recipe", default="fineweb",
        help="a shipped recipe (fineweb, documentation) or the path of a .toml recipe (default: fineweb)",
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--limit", type=int, default=None, help="stop after reading this many documents")
    parser.add_argument("--batch-size", type=int, default=32, help="documents per batch handed to a worker (default: 32)")
    parser.add_argument(
        "--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
        help="save finished work under OUT/checkpoint this often; a rerun after a kill resumes (default: 30)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmlab.data.clean.pipeline import clean

    report = clean(args.inputs, args.out, args.recipe, args.workers, args.limit, args.batch_size, args.checkpoint_every)
    out = Path(args.out)
    print(
        f"kept {report['documents_out']} of {report['documents_in']} documents "
        f"({report['characters_out']:,} characters) in {report['seconds']} s"
    )
    for name in ("documents.parquet", "removed.parquet", "stats.md", "stats.json", "lengths.png"):
        print(f"  {out / name}")
    return 0
