"""Activation memory of one training step, with and without activation checkpointing, against the formula.

Each (config, mode) runs in a fresh process: the model is built, its gradients allocated, and then one
forward + backward runs; the activation memory is the peak during that step less the memory before
it (CPU: the process's peak resident set, `ru_maxrss`; CUDA: `torch.cuda.max_memory_allocated`). The
model takes its plain path (the one a GPU and `torch.compile` run, which keeps fp32 logits for the
loss as the formula assumes). Printed beside it: `llmlab.estimate.activation_bytes` (Korthikanti et
al. 2022, eq. 1, flash attention; with checkpointing, one input per layer plus one layer recomputed),
and the step time, since recomputing costs about one more forward pass.

    python benchmarks/activation_memory.py                  # CPU, fp32, two configs, ~1 minute
    python benchmarks/activation_memory.py --device cuda --batch 16 --seq-len 1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

CONFIGS = {
    "gpt2-style": dict(vocab_size=8192, context_length=1024, n_layers=6, n_heads=6, d_model=384),
    "llama-style": dict(vocab_size=8192, context_length=1024, n_layers=6, n_heads=6, n_kv_heads=2, d_model=384,
                        d_ff=1024, positions="rope", activation="swiglu", norm="rmsnorm", bias=False,
                        tie_embeddings=False),
}


def child(name: str, checkpointing: bool, args) -> dict:
    from llmlab.model import GPT, GPTConfig, transformer

    transformer.FUSED_ON_CPU = False
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**CONFIGS[name])).to(device).train()
    model.activation_checkpointing = checkpointing
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    x = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), device=device)

    def step() -> None:
        _, loss = model(x, targets=x.roll(-1, 1))
        loss.backward()

    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        activations = torch.cuda.max_memory_allocated() - before
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
        activations = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return {"activations": activations, "step_seconds": statistics.median(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the measured one")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "CHECKPOINTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] == "1", args)))
        return 0

    from llmlab.estimate import activation_bytes
    from llmlab.model import GPTConfig

    print(f"{args.device}, fp32, batch {args.batch} x {args.seq_len}, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| config | checkpointing | measured MB | formula MB | measured / formula | step s |")
    print("|---|---|---:|---:|---:|---:|")
    for name in CONFIGS:
        for checkpointing in (False, True):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", name, str(int(checkpointing))],
                                 check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            formula = activation_bytes(GPTConfig(**CONFIGS[name]), args.batch, args.seq_len, bytes_per_value=4,
                                       checkpointing=checkpointing)
            print(f"| {name} | {'yes' if checkpointing else 'no'} | {row['activations'] / 1e6:,.0f} | "
                  f"{formula / 1e6:,.0f} | {row['activations'] / formula:.2f} | {row['step_seconds']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
