"""Clean raw pages into a table of documents: URL filter, text extraction, language ID, quality
filters, deduplication and PII redaction, as a recipe lists them (default: FineWeb's).

Inputs are WARC files (the crawler's crawl/pages.warc.gz, Common Crawl WARC/WET), JSONL or Parquet
with a `text` or `html` field and a `url`, or text/HTML files and directories; local paths or URLs
(s3://, https://, via fsspec), and Common Crawl path lists (warc.paths.gz, wet.paths.gz). Writes
documents.parquet, removed.parquet (every dropped document with its step and reason), stats.json,
stats.md and lengths.png into --out. A run that is killed resumes when started again with the same
arguments (finished pages are saved under --out/checkpoint every 30 s). Documents stream through in
batches, so memory stays flat however large the inputs are. Damaged input (a truncated .warc.gz, a
line that is not UTF-8) stops the run with its place; --skip-bad-input skips and counts it instead.
--executor ray runs the same recipe on Ray (a local Ray with --workers CPUs, or the cluster at
--ray-address), one task per input file or Parquet row-group range; the output is the same.

  llmlab clean runs/demo/crawl/pages.warc.gz --out runs/demo/clean
  llmlab clean dump.jsonl --out clean --recipe documentation --workers 2
  llmlab clean shards/ --out clean --executor ray --workers 2
  llmlab clean s3://commoncrawl/crawl-data/CC-MAIN-2024-10/segments/.../wet/...warc.wet.gz --out cc
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
    parser.add_argument("--workers", type=int, default=None, help="worker processes, or the local Ray's CPUs (default: all cores)")
    parser.add_argument(
        "--executor", choices=("local", "ray"), default="local",
        help="where the steps run: local processes, or Ray (needs the `ray` extra; default: local)",
    )
    parser.add_argument(
        "--ray-address", default=None, metavar="ADDRESS",
        help="with --executor ray: the Ray cluster to join, as `ray start --head` prints it (e.g. head:6379; "
             "ray://head:10001 with ray[client]; default: start a local Ray)",
    )
    parser.add_argument("--limit", type=int, default=None, help="stop after reading this many documents")
    parser.add_argument("--batch-size", type=int, default=32, help="documents per batch handed to a worker (default: 32)")
    parser.add_argument(
        "--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
        help="save finished work under OUT/checkpoint this often; a rerun after a kill resumes (default: 30)",
    )
    parser.add_argument(
        "--paths-base", default="https://data.commoncrawl.org/", metavar="URL",
        help="where the relative paths of a warc.paths.gz / wet.paths.gz list lie (e.g. s3://commoncrawl/ or a local mirror; default: %(default)s)",
    )
    parser.add_argument(
        "--skip-bad-input", action="store_true",
        help="skip damaged input (a truncated WARC tail, a non-UTF-8 or non-JSON line) and count it in the report, instead of stopping",
    )


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from llmlab.data.clean.pipeline import clean

    report = clean(
        args.inputs, args.out, args.recipe, args.workers, args.limit, args.batch_size, args.checkpoint_every,
        skip_bad_input=args.skip_bad_input, paths_base=args.paths_base, executor=args.executor,
        ray_address=args.ray_address,
    )
    out = Path(args.out)
    problems = report["input_problems"]
    for message in problems["examples"]:
        print(f"warning: skipped {message}", file=sys.stderr)
    if problems["counts"]:
        counts = ", ".join(f"{n} {kind}" for kind, n in problems["counts"].items())
        print(f"warning: skipped damaged input ({counts}); see stats.json 'input_problems'", file=sys.stderr)
    print(
        f"kept {report['documents_out']} of {report['documents_in']} documents "
        f"({report['characters_out']:,} characters) in {report['seconds']} s"
    )
    for name in ("documents.parquet", "removed.parquet", "stats.md", "stats.json", "lengths.png"):
        print(f"  {out / name}")
    return 0
