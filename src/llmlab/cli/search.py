"""Search a retrieval index and print the best passages with their scores.

  llmlab search runs/demo/index "How do I parse JSON?" -k 5
  llmlab search runs/demo/index "gzip" --mode bm25
"""

from __future__ import annotations

import argparse
import textwrap


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="index directory made by llmlab index")
    parser.add_argument("query", help="what to look for")
    parser.add_argument("-k", type=int, default=5, help="passages to show (default: 5)")
    parser.add_argument("--mode", choices=["hybrid", "bm25", "dense"], default="hybrid",
                        help="BM25, embeddings, or both fused by reciprocal rank (default: hybrid)")
    parser.add_argument("--chars", type=int, default=300, help="characters of each passage to show (default: 300)")


def run(args: argparse.Namespace) -> int:
    from llmlab.retrieve import Index

    index = Index.open(args.index)
    passages = index.search(args.query, k=args.k, mode=args.mode)
    if not passages:
        print("no passage matches")
    for n, p in enumerate(passages, start=1):
        ranks = f"bm25 #{p.bm25_rank or '-'}, dense #{p.dense_rank or '-'}"
        print(f"[{n}] {p.score:.4f}  {p.title} — {p.url}  ({ranks})")
        print(textwrap.indent(textwrap.shorten(" ".join(p.text.split()), args.chars), "    "))
    return 0
