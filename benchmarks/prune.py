"""Pruning SmolLM2-135M: what 50% unstructured sparsity costs in perplexity, and what removing 25% of the
MLP neurons buys in decode speed.

Perplexity is measured on the openings of four of Shakespeare's plays (the `shakespeare` registry
package) with `llmlab.eval.perplexity`; the activation statistics of Wanda and of the calibrated
neuron scores come from four other plays. Decode speed: greedy batch-1 decoding
with the KV cache, the original and the pruned model timed in paired rounds (alternating who goes
first), the ratio the median of the rounds' ratios. Targets (issue 21): 50% magnitude sparsity costs
<= 10% perplexity; 25% of the MLP neurons pruned gives >= 1.15x decode speed.

    .venv/bin/python benchmarks/prune.py                 # ~5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_demo import shakespeare_texts  # noqa: E402


def decode_tokens_per_second(model, tokens: int, prompt_len: int = 32) -> float:
    from llmlab.model import KVCache

    x = torch.zeros(1, prompt_len, dtype=torch.long)
    cache = KVCache(model.config, 1, prompt_len + tokens)
    with torch.no_grad():
        logits, _ = model(x, kv_cache=cache)
        started = time.perf_counter()
        for _ in range(tokens):
            logits, _ = model(logits[:, -1:].argmax(-1), kv_cache=cache)
    return tokens / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=6000, help="characters of each of 4 plays to score")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=48, help="decoded tokens per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("LLMLAB_PROGRESS", "0")

    from llmlab.eval.models import LanguageModel
    from llmlab.eval.perplexity import perplexity
    from llmlab.eval.pruning import apply, calibration_batches
    from llmlab.model.loading import load_model
    from llmlab.model.prune import input_norms

    model, tokenizer = load_model("smollm2-135m")
    plays = shakespeare_texts()
    texts = [t[: args.chars] for t in plays[:4]]
    norms = input_norms(model, calibration_batches(tokenizer, [t[: args.chars] for t in plays[4:8]], 256))

    def ppl(m) -> float:
        return perplexity(LanguageModel(m.eval(), tokenizer, "smollm2"), texts, show_progress=False).perplexity

    base = ppl(model)
    results = {"perplexity": {"original": base}, "decode": {}}
    for method in ("magnitude", "magnitude-layer", "wanda"):
        pruned, info = apply(model, method, 0.5, norms)
        results["perplexity"][f"{method} 50%"] = ppl(pruned)
        print(f"{method} 50% (sparsity {info['sparsity']:.3f}): perplexity {base:.2f} -> "
              f"{results['perplexity'][f'{method} 50%']:.2f}")
    results["perplexity"]["neurons 25%, weight norms"] = ppl(apply(model, "neurons", 0.25)[0])
    smaller, info = apply(model, "neurons", 0.25, norms)
    results["perplexity"]["neurons 25%"] = ppl(smaller)
    ratios = []
    for r in range(args.rounds):
        pair = [("original", model), ("pruned", smaller)]
        speed = {name: decode_tokens_per_second(m, args.tokens) for name, m in (pair if r % 2 == 0 else pair[::-1])}
        ratios.append(speed["pruned"] / speed["original"])
    results["decode"] = {"ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                         "params": [model.num_params(), smaller.num_params()]}
    print(f"neurons 25% (d_ff {info['d_ff']} -> {info['kept']}): perplexity {base:.2f} -> "
          f"{results['perplexity']['neurons 25%']:.2f} calibrated "
          f"({results['perplexity']['neurons 25%, weight norms']:.2f} by weight norms); decode {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f}, {args.rounds} paired rounds); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
