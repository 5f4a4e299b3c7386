"""The course's efficiency techniques, measured on the CPU demo data (Shakespeare, llmlab BPE, 4,096 tokens).

- Mixture of experts: a dense model against the same model whose MLPs are 4 experts, 2 per token, each
  half as wide, so both pass every token through the same number of MLP weights (equal active
  parameters); equal steps and tokens (1,000 by default: at 300 the two are within seed noise). Target:
  the MoE's validation loss is lower.
- Distillation: a student trained on the data alone against the same student (same seed, steps and
  batches) distilled from a larger teacher trained on the same shards. Target: the distilled
  student's validation loss is lower.

Every run is an ordinary llmlab run under --root (resumable; a finished one is reused).

    .venv/bin/python benchmarks/efficiency.py               # ~25 minutes on 2 quiet cores
    .venv/bin/python benchmarks/efficiency.py --steps 40 --moe-steps 40    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_demo import shakespeare_shards  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="bench-data/efficiency")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each distillation run")
    parser.add_argument("--moe-steps", type=int, default=1000, help="optimizer steps of the dense and MoE runs")
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("LLMLAB_PROGRESS", "0")

    from llmlab.train import TrainConfig, pretrain
    from llmlab.train.distill import distill
    from llmlab.train.resume import TRAINER_JSON, resolve_latest

    root = Path(args.root)
    shards = shakespeare_shards(Path("bench-data/train"))

    def config(name: str, steps: int, **kw) -> TrainConfig:
        values = dict(shards=str(shards), out_dir=str(root / name), context_length=256, micro_batch=8,
                      max_steps=steps, warmup_steps=steps // 10, eval_every=steps, checkpoint_every=steps,
                      eval_tokens=65536, sample_tokens=0, threads=2, seed=0, device="cpu")
        values.update(kw)
        return TrainConfig(**values)

    def run(name: str, steps: int, train=pretrain, **kw) -> dict:
        cfg = config(name, steps, **{k: v for k, v in kw.items() if k not in ("teacher", "alpha", "temperature")})
        latest = resolve_latest(root / name / "checkpoints")
        if latest is not None and json.loads((latest / TRAINER_JSON).read_text()).get("step") == steps:
            metrics = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
            return next(m for m in reversed(metrics) if "val_loss" in m)
        extra = {k: kw[k] for k in ("teacher", "alpha", "temperature") if k in kw}
        result = train(cfg, resume=latest is not None, **extra)
        return result.last_eval

    results = {}
    dense = run(f"dense-{args.moe_steps}", args.moe_steps, depth=2, model={"d_ff": 512})
    moe = run(f"moe-{args.moe_steps}", args.moe_steps, depth=2,
              model={"d_ff": 256, "n_experts": 4, "experts_per_token": 2})
    results["moe"] = {"dense_val_loss": dense["val_loss"], "moe_val_loss": moe["val_loss"]}
    teacher = run("teacher", args.teacher_steps, depth=4)
    hard = run("student-hard", args.steps, depth=2)
    soft = run("student-distilled", args.steps, train=distill, depth=2, teacher=str(root / "teacher"),
               alpha=0.5, temperature=2.0)
    results["distillation"] = {"teacher_val_loss": teacher["val_loss"], "hard_label_val_loss": hard["val_loss"],
                               "distilled_val_loss": soft["val_loss"]}
    print(json.dumps(results, indent=2))
    print(f"\nMoE 4 experts top-2 vs dense at equal active parameters, {args.moe_steps} steps: validation loss "
          f"{moe['val_loss']:.3f} vs {dense['val_loss']:.3f} (target: lower)")
    print(f"distilled vs hard-label student, {args.steps} steps: {soft['val_loss']:.3f} vs {hard['val_loss']:.3f} "
          f"(teacher {teacher['val_loss']:.3f}; target: lower)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
