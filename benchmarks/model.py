"""Forward + backward time of llmlab's GPT versus Hugging Face `transformers` on CPU.

The same config, the same weights (copied with `llmlab.model.hf.to_transformers`) and the same batch go
through both; each step is `loss = model(x, targets); loss.backward()` (transformers' logits go through
F.cross_entropy, as its own `labels=` path does). The two models are timed in pairs, one step of each
back to back (alternating which goes first), so that noise from other processes lands on a pair rather
than on one side; the ratio llmlab / transformers (target: <= 0.9) is the median of the pairs' ratios,
with their min and max, and each side's median time is shown beside it. Each config runs in a fresh
process: the C allocator's state
left by one config (how much freed memory it keeps instead of returning to the OS) otherwise changes
how many page faults the next one pays, and with it the ratio by several percent. On a shared machine
the ratio of one such run still moves by +-4% as the machine's speed drifts, so each config runs
`--rounds` times (3 by default), each in its own process; the table shows the round with the median
ratio and lists every round's ratio.

Two clocks: wall time, and the process's CPU time. On a machine shared with other jobs, wall time
with several threads is dominated by threads waiting for each other; with `--threads 1` the CPU time
measures the work itself and is the steadier comparison.

    python benchmarks/model.py                          # both configs, torch's default threads
    python benchmarks/model.py --threads 1 --steps 10   # one thread: compare CPU time
    python benchmarks/model.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

from llmlab.model import GPT, GPTConfig
from llmlab.model.hf import to_transformers

CONFIGS = {
    # GPT-2 family: learned positions, LayerNorm, GELU (tanh), biases, tied head.
    "gpt2-style": GPTConfig(vocab_size=8192, context_length=512, n_layers=6, n_heads=6, d_model=384),
    # Llama family: RoPE, RMSNorm, SwiGLU, GQA, no biases, untied head.
    "llama-style": GPTConfig(
        vocab_size=8192, context_length=512, n_layers=6, n_heads=6, n_kv_heads=2, d_model=384, d_ff=1024,
        positions="rope", activation="swiglu", norm="rmsnorm", bias=False, tie_embeddings=False,
    ),
}


def step_llmlab(model, x, y):
    _, loss = model(x, y)
    loss.backward()


def step_hf(model, x, y):
    logits = model(input_ids=x).logits
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    loss.backward()


def timed(fn, model, x, y) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward + backward."""
    model.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.process_time()
    fn(model, x, y)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(name: str, config: GPTConfig, batch: int, seq: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    ours = GPT(config).train()
    theirs = to_transformers(ours).train()
    x = torch.randint(0, config.vocab_size, (batch, seq))
    y = torch.randint(0, config.vocab_size, (batch, seq))
    for _ in range(warmup):
        timed(step_llmlab, ours, x, y)
        timed(step_hf, theirs, x, y)
    a, b = [], []
    for i in range(steps):  # a pair per step, back to back, alternating which model goes first
        if i % 2 == 0:
            a.append(timed(step_llmlab, ours, x, y))
            b.append(timed(step_hf, theirs, x, y))
        else:
            b.append(timed(step_hf, theirs, x, y))
            a.append(timed(step_llmlab, ours, x, y))
    wa, wb = (statistics.median(t[0] for t in r) for r in (a, b))
    ca, cb = (statistics.median(t[1] for t in r) for r in (a, b))
    wall_ratios = [ta[0] / tb[0] for ta, tb in zip(a, b)]
    cpu_ratios = [ta[1] / tb[1] for ta, tb in zip(a, b)]
    return {
        "config": name, "params": ours.num_params(), "batch": batch, "seq": seq, "steps": steps,
        "threads": torch.get_num_threads(),
        "llmlab_ms": 1000 * wa, "transformers_ms": 1000 * wb,
        "ratio": statistics.median(wall_ratios), "ratio_min": min(wall_ratios), "ratio_max": max(wall_ratios),
        "llmlab_cpu_ms": 1000 * ca, "transformers_cpu_ms": 1000 * cb,
        "cpu_ratio": statistics.median(cpu_ratios), "cpu_ratio_min": min(cpu_ratios), "cpu_ratio_max": max(cpu_ratios),
        "llmlab_tok_s": batch * seq / wa, "transformers_tok_s": batch * seq / wb,
    }


def bench_with_threads(threads: int | None, name: str, *args) -> dict:
    if threads:
        torch.set_num_threads(threads)
    return bench(name, CONFIGS[name], *args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--rounds", type=int, default=3, help="fresh-process runs per config; the median is reported")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}")
    rows = []
    for name in args.configs:
        rounds = []
        for _ in range(args.rounds):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
                rounds.append(fresh.submit(bench_with_threads, args.threads, name, args.batch, args.seq,
                                           args.steps, args.warmup).result())
        rounds.sort(key=lambda r: r["ratio"])
        row = dict(rounds[len(rounds) // 2], rounds=[r["ratio"] for r in rounds])
        rows.append(row)
    print("\n| config | params | batch x seq | threads | llmlab ms | transformers ms | ratio (target <= 0.9) "
          "| its pairs, min-max | all rounds, sorted | CPU ms llmlab / transformers | CPU ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|")
    for r in rows:
        every = ", ".join(f"{x:.2f}" for x in r["rounds"])
        print(f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['batch']}x{r['seq']} | {r['threads']} | "
              f"{r['llmlab_ms']:.0f} | {r['transformers_ms']:.0f} | {r['ratio']:.2f}x | "
              f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f} ({r['steps']} pairs) | {every} | "
              f"{r['llmlab_cpu_ms']:.0f} / {r['transformers_cpu_ms']:.0f} | {r['cpu_ratio']:.2f}x |")
    print(f"\nload average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
