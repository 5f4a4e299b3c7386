"""Training throughput: llmlab's Trainer vs a plain PyTorch loop around transformers.GPT2LMHeadModel.

Both train the same GPT-2-style model (same width, depth, heads, context, vocabulary; learned positions,
LayerNorm, GELU, tied embeddings) on the same token shards (Shakespeare, llmlab BPE), with the same
batches, AdamW hyperparameters, weight-decay groups and gradient clipping, in fp32. The two run in
paired rounds in one process: each round times `--steps` steps of one loop and then of the other
(alternating which goes first) and gives that round's ratio, so a burst of load from other programs
lands on one pair rather than on one side. The ratio to quote is the median of the per-round ratios,
printed with their min, max and count. MFU is llmlab's median per-round tokens/s times the model's
FLOPs per token, over the best fp32 matmul speed measured here between rounds.

    .venv/bin/python benchmarks/train.py                      # about a minute on 2 quiet cores
    .venv/bin/python benchmarks/train.py --rounds 40          # the figure in docs/benchmarks.md, ~7 minutes
    .venv/bin/python benchmarks/train.py --rounds 2 --steps 3  # quick look

Targets on CPU: llmlab >= 1.1x the transformers loop, MFU >= 65%.
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

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_demo import shakespeare_shards  # noqa: E402


def hf_model(cfg):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(hf_cfg)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="bench-data/train", help="where the tokenizer and shards are cached")
    parser.add_argument("--d-model", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (each times both loops back to back)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per loop per round")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("LLMLAB_PROGRESS", "0")

    from llmlab.model import GPT, from_depth
    from llmlab.tokenizer.shards import read_shards
    from llmlab.train import TrainConfig, Trainer, WindowBatches
    from llmlab.train.data import split_stream
    from llmlab.train.hardware import cpu_name, measure_matmul_flops
    from llmlab.train.optim import param_groups

    shards = read_shards(shakespeare_shards(Path(args.data)))
    vocab = int(shards.meta["vocab_size"])
    cfg = from_depth(args.d_model // 64, vocab, args.context).replace(n_layers=args.layers)
    train_segments, _ = split_stream(shards.arrays, 0.02)
    lr, betas, wd, clip = 1e-3, (0.9, 0.95), 0.1, 1.0

    def batches():
        return WindowBatches(train_segments, args.context, args.micro_batch, seed=0)

    # llmlab: the real Trainer (fused AdamW, its batch source, logging), no evaluation or checkpoints in timing.
    torch.manual_seed(0)
    out = Path(tempfile.mkdtemp(prefix="llmlab-train-bench-"))
    tcfg = TrainConfig(out_dir=str(out), lr=lr, beta1=betas[0], beta2=betas[1], weight_decay=wd, grad_clip=clip,
                       warmup_steps=0, max_steps=10**6, checkpoint_every=10**6, log_every=10**6, peak_flops=1.0,
                       micro_batch=args.micro_batch)
    trainer = Trainer(tcfg, GPT(cfg), batches())
    n_params = trainer.gpt.num_params()

    # transformers: a plain loop with the same optimizer settings and batches.
    torch.manual_seed(0)
    hf = hf_model(cfg).train()
    hf_opt = torch.optim.AdamW(param_groups(hf, wd), lr=lr, betas=betas)
    hf_batches = batches()

    def hf_steps(n: int) -> list[float]:
        losses = []
        for _ in range(n):
            b = hf_batches.next_batch()
            x, y = b["input_ids"].contiguous(), b["targets"].contiguous()
            out = hf(input_ids=x, labels=y, shift_labels=y)  # targets are already shifted
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), clip)
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
        return losses

    tokens_per_step = args.micro_batch * args.context
    step = 0

    def llmlab_steps(n: int) -> list[float]:
        nonlocal step
        step += n
        # The Trainer reads losses from the device only where it logs; with log_every this large that is
        # the last step of each fit() call, which then returns every step's loss since the last read.
        losses = [loss for _, loss in trainer.fit(until_step=step).losses]
        if len(losses) != n:
            raise RuntimeError(f"Trainer.fit returned {len(losses)} losses for {n} steps")
        return losses

    def timed(run) -> tuple[float, list[float]]:
        started = time.perf_counter()
        losses = run(args.steps)
        return args.steps * tokens_per_step / (time.perf_counter() - started), losses

    llmlab_steps(1), hf_steps(1)  # warm-up: allocator, kernels
    sides = (("llmlab", llmlab_steps), ("transformers", hf_steps))
    load_start = os.getloadavg()
    rounds: list[dict[str, float | str]] = []
    peaks = [measure_matmul_flops()]
    losses = {}
    for r in range(args.rounds):
        rate = {}
        for name, run in sides if r % 2 == 0 else sides[::-1]:  # both back to back, alternating who is first
            rate[name], losses[name] = timed(run)
        rounds.append({**rate, "ratio": rate["llmlab"] / rate["transformers"], "first": "llmlab" if r % 2 == 0 else "transformers"})
        peaks.append(measure_matmul_flops())
        print(f"round {r + 1}: llmlab {rate['llmlab']:,.0f} tok/s, transformers {rate['transformers']:,.0f} tok/s, "
              f"ratio {rounds[-1]['ratio']:.2f}x ({rounds[-1]['first']} first)")

    peak = max(peaks)
    ratios = [r["ratio"] for r in rounds]
    ratio = statistics.median(ratios)
    llm, ref = (statistics.median(r[name] for r in rounds) for name in ("llmlab", "transformers"))
    flops_per_token = trainer.gpt.flops_per_token(args.context)
    mfu = flops_per_token * llm / peak
    result = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "model": {"params": n_params, "d_model": cfg.d_model, "layers": cfg.n_layers, "heads": cfg.n_heads,
                  "context": args.context, "vocab": vocab, "micro_batch": args.micro_batch,
                  "flops_per_token": flops_per_token},
        "rounds": args.rounds, "steps_per_round": args.steps,
        "ratio": round(ratio, 3),  # median of the per-round llmlab / transformers ratios
        "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
        # The side timed second can pay for what the first left behind (e.g. freed memory to fault in again):
        # the median ratio of the rounds each side went first shows how much order matters here.
        "ratio_by_first": {side: round(statistics.median(r["ratio"] for r in rounds if r["first"] == side), 3)
                           for side in ("llmlab", "transformers") if any(r["first"] == side for r in rounds)},
        "tokens_per_second_median": {"llmlab": round(llm, 1), "transformers": round(ref, 1)},
        "fp32_matmul_peak_gflops": round(peak / 1e9, 1),
        "llmlab_mfu": round(mfu, 3),
        "per_round": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rounds],
        "last_losses": {k: round(v[-1], 4) for k, v in losses.items()},
    }
    print(json.dumps(result, indent=2))
    print(f"\nllmlab / transformers: {ratio:.2f}x, median of {len(ratios)} paired rounds "
          f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x; target >= 1.1x; by who went first: "
          f"{', '.join(f'{k} {v:.2f}x' for k, v in result['ratio_by_first'].items())}); "
          f"median rates llmlab {llm:,.0f} tok/s, transformers {ref:,.0f} tok/s; "
          f"MFU {100 * mfu:.0f}% of {peak / 1e9:.0f} GFLOP/s measured fp32 peak (target >= 65%); "
          f"load average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
