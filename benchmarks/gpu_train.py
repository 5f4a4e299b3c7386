"""GPU training throughput: llmlab's Trainer, llmlab's model in a bare step, and transformers, in one run.

For each shape (GPT-2 124M, and SmolLM2-135M's Llama shape with GQA) three sides train the same model
(the same weights, copied with `llmlab.model.hf.to_transformers`) on the same random tokens, each with
bf16 autocast, `torch.compile` and fused AdamW:

- `trainer`: `llmlab.train.Trainer`, the loop `llmlab train` runs (prefetch, schedule, clipping,
  metrics read only where it logs);
- `bare`: llmlab's GPT in the plainest step (forward with targets, backward, clip, step);
- `transformers`: GPT2LMHeadModel / LlamaForCausalLM (sdpa attention) in the same plain step.

The sides take turns in paired rounds (alternating who goes first) and each round times `--steps`
steps after a CUDA sync. Printed: tokens/s per side (median of rounds), the ratios trainer/bare (the
loop's overhead; target >= 0.97) and bare/transformers, trainer/transformers (Llama target >= 1.1),
and MFU against the datasheet bf16 peak and against the bf16 matmul speed measured in this run.

    python benchmarks/gpu_train.py                         # on a CUDA machine: both shapes, ~5 minutes
    python benchmarks/gpu_train.py --shapes gpt2 --json gpu.json
    python benchmarks/gpu_train.py --device cpu --small --no-compile --rounds 1 --steps 2   # does it run?
    python benchmarks/gpu_train.py --device cpu --small --no-compile --dtype float32 --context 256 \
        --micro-batch 8 --rounds 10 --steps 4                 # the Trainer's overhead on a CPU

Without CUDA (and without --device cpu) it says so and exits 0: there is nothing to measure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SHAPES = {"gpt2": "gpt2", "llama": "smollm2-135m"}


def plain_step(model, optimizer, batch, amp, llmlab_model: bool) -> None:
    with amp():
        if llmlab_model:
            _, loss = model(batch["input_ids"], targets=batch["targets"])
        else:  # targets are already shifted, as llmlab's are
            loss = model(input_ids=batch["input_ids"], labels=batch["targets"], shift_labels=batch["targets"]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(shape: str, args, device: torch.device, measured: float, datasheet: float | None) -> dict:
    """The three sides on one shape, in paired rounds: tokens/s, their ratios and MFU."""
    from llmlab.model import GPT, preset
    from llmlab.model.hf import to_transformers
    from llmlab.train import TrainConfig, Trainer, WindowBatches
    from llmlab.train.data import Segment
    from llmlab.train.hardware import autocast
    from llmlab.train.optim import param_groups

    amp_dtype = getattr(torch, args.dtype)
    amp = lambda: autocast(device, None if amp_dtype == torch.float32 else amp_dtype)  # noqa: E731
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    overrides = dict(n_layers=2, d_model=128, n_heads=4, n_kv_heads=None) if args.small else {}
    cfg = preset(SHAPES[shape], context_length=args.context, dropout=0.0, **overrides)
    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 4_000_000, dtype=np.int64).astype(np.uint32)

    def batches() -> WindowBatches:
        return WindowBatches([Segment(tokens, 0, len(tokens))], args.context, args.micro_batch, seed=0)

    reference = GPT(cfg)
    hf = to_transformers(reference).train().to(device)
    bare = GPT(cfg).to(device)
    bare.load_state_dict(reference.state_dict())
    out = Path(tempfile.mkdtemp(prefix="llmlab-gpu-bench-"))
    tcfg = TrainConfig(out_dir=str(out), device=str(device), dtype=args.dtype, compile=args.compile,
                       lr=6e-4, warmup_steps=0, max_steps=10**6, checkpoint_every=10**6, eval_every=10**6,
                       log_every=10**6, micro_batch=args.micro_batch, context_length=args.context,
                       sample_tokens=0)
    trainer = Trainer(tcfg, reference, batches())
    bare_opt = torch.optim.AdamW(param_groups(bare, 0.1), lr=6e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    hf_opt = torch.optim.AdamW(param_groups(hf, 0.1), lr=6e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    bare_run = torch.compile(bare) if args.compile else bare
    hf_run = torch.compile(hf) if args.compile else hf
    feeds = {"bare": batches(), "transformers": batches()}
    done = 0

    def run_trainer(n: int) -> None:
        nonlocal done
        done += n
        trainer.fit(until_step=done)

    def runner(model, optimizer, feed, llmlab_model):
        def run(n: int) -> None:
            for _ in range(n):
                batch = {k: v.contiguous().to(device, non_blocking=True) for k, v in feed.next_batch().items()}
                plain_step(model, optimizer, batch, amp, llmlab_model)
        return run

    sides = {"trainer": run_trainer, "bare": runner(bare_run, bare_opt, feeds["bare"], True),
             "transformers": runner(hf_run, hf_opt, feeds["transformers"], False)}
    for run in sides.values():  # compile and warm up
        run(3)
    sync()
    order = list(sides)
    rates: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for side in order if r % 2 == 0 else order[::-1]:
            sync()
            started = time.perf_counter()
            sides[side](args.steps)
            sync()
            rates[side].append(args.steps * args.micro_batch * args.context / (time.perf_counter() - started))
    flops = reference.flops_per_token(args.context)
    median = {k: statistics.median(v) for k, v in rates.items()}
    row = {"params": reference.num_params(), "flops_per_token": flops,
           "tokens_per_second": {k: round(v) for k, v in median.items()},
           "trainer_over_bare": round(median["trainer"] / median["bare"], 3),
           "bare_over_transformers": round(median["bare"] / median["transformers"], 3),
           "trainer_over_transformers": round(median["trainer"] / median["transformers"], 3),
           "mfu_measured_peak": {k: round(flops * v / measured, 3) for k, v in median.items()}}
    if datasheet:
        row["mfu_datasheet_peak"] = {k: round(flops * v / datasheet, 3) for k, v in median.items()}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default="gpt2,llama", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per side per round")
    parser.add_argument("--small", action="store_true", help="2 layers of width 128: checks the script, measures nothing")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="autocast precision (float32: the loop's overhead on a CPU)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (pass --device cpu --small to check the script runs)")
        return 0
    os.environ.setdefault("LLMLAB_PROGRESS", "0")

    from llmlab.train.hardware import GPU_PEAK_BF16, cpu_name, measure_matmul_flops

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    datasheet = next((v for k, v in GPU_PEAK_BF16.items() if k in name), None) if args.dtype == "bfloat16" else None
    measured = measure_matmul_flops(size=8192 if device.type == "cuda" else 512, seconds=2.0, dtype=getattr(torch, args.dtype),
                                    device=device)
    results = {"machine": {"device": name, "torch": torch.__version__,
                           "transformers": __import__("transformers").__version__,
                           f"{args.dtype}_matmul_measured_tflops": round(measured / 1e12, 3),
                           "bf16_datasheet_tflops": datasheet and round(datasheet / 1e12, 1)},
               "micro_batch": args.micro_batch, "context": args.context, "rounds": args.rounds,
               "steps_per_round": args.steps, "compile": args.compile, "shapes": {}}

    for shape in args.shapes.split(","):
        row = measure(shape, args, device, measured, datasheet)
        results["shapes"][shape] = row
        print(f"{shape} ({row['params'] / 1e6:.0f}M params): "
              + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in row["tokens_per_second"].items())
              + f"; trainer/bare {row['trainer_over_bare']:.3f}x, bare/transformers {row['bare_over_transformers']:.3f}x,"
              f" trainer/transformers {row['trainer_over_transformers']:.3f}x;"
              f" trainer MFU {100 * row['mfu_measured_peak']['trainer']:.1f}% of measured"
              + (f", {100 * row['mfu_datasheet_peak']['trainer']:.1f}% of datasheet" if datasheet else ""))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
