"""Pruning SmolLM2-135M: what 50% unstructured sparsity costs in perplexity (one-shot and after a short
masked recovery fine-tune), and what removing 25% of the MLP neurons buys in decode speed.

Perplexity is measured on the openings of four of Shakespeare's plays (the `shakespeare` registry
package) with `llmlab.eval.perplexity`; the calibration statistics (Wanda's input norms, SparseGPT's
X^T X, the calibrated neuron scores) come from four other plays, and the recovery fine-tune reads
windows of eight further plays, none of them an evaluated one. The unpruned model gets the same
fine-tune, so that a gain from adapting to Shakespeare is not mistaken for recovery.

Decode speed: greedy batch-1 decoding with the KV cache, the original and the pruned model timed in
paired rounds (alternating who goes first), the ratio the median of the rounds' ratios; fp32, and bf16
with weights packed for oneDNN (`infer/packed.py`). Targets (issue 21): 50% sparsity costs <= 10%
perplexity; 25% of the MLP neurons pruned gives >= 1.15x decode speed.

    .venv/bin/python benchmarks/prune.py --skip speed quality   # Wanda, SparseGPT, recovery (~30 min)
    .venv/bin/python benchmarks/prune.py --skip quality recover --threads 1 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_demo import shakespeare_texts  # noqa: E402


def decode_tokens_per_second(model, tokens: int, prompt_len: int = 32) -> float:
    from llmlab.model import KVCache

    dtype = next(model.parameters()).dtype
    x = torch.zeros(1, prompt_len, dtype=torch.long)
    cache = KVCache(model.config, 1, prompt_len + tokens, dtype=dtype)
    with torch.no_grad():
        logits, _ = model(x, kv_cache=cache)
        started = time.perf_counter()
        for _ in range(tokens):
            logits, _ = model(logits[:, -1:].argmax(-1), kv_cache=cache)
    return tokens / (time.perf_counter() - started)


def paired_ratio(original, pruned, rounds: int, tokens: int) -> dict:
    """pruned / original decode speed: median and range over `rounds` rounds, alternating who goes first."""
    ratios = []
    for r in range(rounds):
        pair = [("original", original), ("pruned", pruned)]
        speed = {name: decode_tokens_per_second(m, tokens) for name, m in (pair if r % 2 == 0 else pair[::-1])}
        ratios.append(speed["pruned"] / speed["original"])
    return {"ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=6000, help="characters of each of 4 plays to score")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=48, help="decoded tokens per round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts to time decoding at")
    parser.add_argument("--recover-steps", type=int, default=30)
    parser.add_argument("--recover-batch", type=int, default=2, help="windows per recovery step")
    parser.add_argument("--recover-window", type=int, default=128, help="tokens per recovery window")
    parser.add_argument("--recover-lr", type=float, default=1e-4)
    parser.add_argument("--dtype", default="float32", help="recovery fine-tune precision (bfloat16: autocast)")
    parser.add_argument("--curve", help="also draw perplexity by sparsity for magnitude, Wanda and SparseGPT to this PNG")
    parser.add_argument("--curve-chars", type=int, default=1500, help="characters of each play scored for the curve")
    parser.add_argument("--skip", nargs="*", default=[], choices=["quality", "recover", "speed"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads[0])
    os.environ.setdefault("LLMLAB_PROGRESS", "0")

    from llmlab.eval.models import LanguageModel
    from llmlab.eval.perplexity import perplexity
    from llmlab.eval.pruning import apply, calibration_batches, fine_tune
    from llmlab.model.loading import load_model
    from llmlab.model.prune import input_grams, input_norms
    from llmlab.train import TrainConfig

    model, tokenizer = load_model("smollm2-135m")
    plays = shakespeare_texts()
    texts = [t[: args.chars] for t in plays[:4]]
    calibration = calibration_batches(tokenizer, [t[: args.chars] for t in plays[4:8]], 256)
    norms = input_norms(model, calibration)
    results: dict = {"perplexity": {}, "decode": {}, "load": [os.getloadavg()[0]]}

    def ppl(m) -> float:
        return perplexity(LanguageModel(m.eval(), tokenizer, "smollm2"), texts, show_progress=False).perplexity

    def record(name: str, value: float) -> None:
        results["perplexity"][name] = value
        print(f"{name}: perplexity {value:.2f} (load {os.getloadavg()[0]:.1f})", flush=True)

    if "quality" not in args.skip or "recover" not in args.skip:
        record("original", ppl(model))
        pruned = {"wanda": apply(model, "wanda", 0.5, norms)[0],
                  "sparsegpt": apply(model, "sparsegpt", 0.5, input_grams(model, calibration))[0]}
        for method, m in pruned.items():
            record(f"{method} 50%", ppl(m))
    if "quality" not in args.skip:
        for method in ("magnitude", "magnitude-layer"):
            record(f"{method} 50%", ppl(apply(model, method, 0.5)[0]))
        record("neurons 25%, weight norms", ppl(apply(model, "neurons", 0.25)[0]))
        record("neurons 25%", ppl(apply(model, "neurons", 0.25, norms)[0]))
    if "recover" not in args.skip:
        ids = np.array([i for t in plays[8:16] for i in tokenizer.encode_ordinary(t)], dtype=np.int64)
        trained = args.recover_steps * args.recover_batch * args.recover_window
        results["recover"] = {"available_tokens": len(ids), "trained_tokens": trained, "steps": args.recover_steps}
        print(f"recovery fine-tune: {args.recover_steps} steps x {args.recover_batch} x {args.recover_window} = "
              f"{trained:,} tokens drawn from {len(ids):,} of eight other plays", flush=True)
        for name, m, hold in [("original", model, False), *((f"{k} 50%", v, True) for k, v in pruned.items())]:
            with tempfile.TemporaryDirectory() as out:
                config = TrainConfig(out_dir=out, max_steps=args.recover_steps, warmup_steps=3, lr=args.recover_lr,
                                     micro_batch=args.recover_batch, context_length=args.recover_window,
                                     dtype=args.dtype, sample_tokens=0, eval_every=10**9, checkpoint_every=10**9,
                                     keep_checkpoints=1, threads=args.threads[0])
                tuned = fine_tune(copy.deepcopy(m), [ids], config, hold=hold)
            record(f"{name} + fine-tune", ppl(tuned))
    if args.curve:
        from llmlab.eval.pruning import plot_curves

        short = [t[: args.curve_chars] for t in plays[:4]]

        def short_ppl(m) -> float:
            return perplexity(LanguageModel(m.eval(), tokenizer, "smollm2"), short, show_progress=False).perplexity

        grams = input_grams(model, calibration)
        start = short_ppl(model)
        curves = {}
        for method, statistic in (("magnitude", None), ("wanda", norms), ("sparsegpt", grams)):
            curves[method] = [(0.0, start)] + [(a, short_ppl(apply(model, method, a, statistic)[0]))
                                               for a in (0.2, 0.4, 0.5, 0.6, 0.8)]
            print(f"curve {method}: " + ", ".join(f"{a:.1f} {p:.1f}" for a, p in curves[method]), flush=True)
        results["curve"] = curves
        plot_curves(curves, Path(args.curve), "sparsity of the blocks' matrices",
                    f"SmolLM2-135M, one-shot pruning ({args.curve_chars:,} characters of 4 plays)")
    if "speed" not in args.skip:
        from llmlab.infer.packed import pack_model

        smaller, info = apply(model, "neurons", 0.25, norms)
        results["decode"]["params"] = [model.num_params(), smaller.num_params()]
        results["decode"]["d_ff"] = [model.config.d_ff, smaller.config.d_ff]
        assert all(b.mlp.down.weight.shape[1] == info["kept"] for b in smaller.blocks)
        bf16 = {k: pack_model(copy.deepcopy(m).to(torch.bfloat16)) for k, m in (("original", model), ("pruned", smaller))}
        for threads in args.threads:
            torch.set_num_threads(threads)
            for label, pair in (("fp32", (model, smaller)), ("bf16 packed", (bf16["original"], bf16["pruned"]))):
                before = os.getloadavg()[0]
                r = paired_ratio(*pair, args.rounds, args.tokens)
                r["load"] = [before, os.getloadavg()[0]]
                results["decode"][f"{label}, {threads} thread(s)"] = r
                print(f"decode {label}, {threads} thread(s): {r['ratio']:.3f}x ({r['min']:.2f}-{r['max']:.2f}, "
                      f"{args.rounds} paired rounds), load {r['load'][0]:.1f}-{r['load'][1]:.1f}", flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
