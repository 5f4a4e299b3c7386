"""Post-training gains, measured: pretrain a small GPT, then SFT, DPO, GRPO and PPO it on the built-in checkable tasks.

    .venv/bin/python benchmarks/posttrain.py              # runs/posttrain-bench/, about 9 minutes on 2 busy cores
    .venv/bin/python benchmarks/posttrain.py --lora-rank 16   # also a LoRA SFT from the same base
    .venv/bin/python benchmarks/posttrain.py --quick      # a short smoke run (numbers mean little)
    .venv/bin/python benchmarks/posttrain.py --grpo-task arithmetic --grpo-task-eval 65   # one-task GRPO on sums
    .venv/bin/python benchmarks/posttrain.py --grpo-base smollm2-135m   # only: GRPO on sums from SmolLM2-135M

1. Pretraining text: Shakespeare's plays (the `shakespeare` package) mixed with task-like text from the
   tasks' *training* split, written as plain "Question: ... Answer: ..." prose (no chat tokens).
2. An llmlab BPE tokenizer and token shards; a ~1M-parameter GPT pretrained with `llmlab.train`.
3. SFT on the tasks' training split in the chat format (full fine-tuning, optionally LoRA too).
4. DPO from the SFT model on (prompt, correct answer, wrong answer) pairs of the training split.
5. GRPO from the SFT model on the training prompts, rewarded by the tasks' verifier (exact match); and
   GRPO on one task family alone (--grpo-task, counting by default), SFT and it scored on that family's
   held-out prompts.
6. Two reward models from the SFT model on the same pairs (different seeds and draws): one rewards PPO
   from the SFT model, the other (the judge) scores the held-out answers of SFT, DPO and PPO.

Exact match is scored with greedy decoding on the held-out split (prompts that no training split can
contain); DPO's preference accuracy and reward margin on held-out pairs; GRPO's and PPO's KL to the
reference in nats per answer token (the mean of the last quarter of logged steps), their tokens/s and MFU
(sampling included in the step time). Results go to
OUT/results.json and OUT/results.md and are printed with the machine they ran on.

`--grpo-base smollm2-135m` runs another pipeline instead, from a base that can add some of the time: SFT
of SmolLM2-135M-Instruct (LoRA, then merged) on the arithmetic family's training sums, then GRPO from it
(a fresh LoRA adapter, so the reference is the SFT model), every prompt with an empty system message;
60 training sums are kept out of both as the dev split, scored every few GRPO steps; SFT and the best GRPO
step on dev are scored on the 65 held-out sums. Results go to OUT/smollm2/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

SIZES = {  # pretraining steps, SFT/DPO epochs, task examples (train, held-out, prose rounds), Shakespeare characters
    "full": dict(pretrain_steps=300, sft_epochs=6.0, dpo_epochs=1.0, n_train=2500, n_eval=250, prose_rounds=3,
                 text_chars=600_000, grpo_steps=300, grpo_task_steps=100, ppo_steps=120, reward_epochs=1.0),
    "quick": dict(pretrain_steps=60, sft_epochs=0.5, dpo_epochs=0.2, n_train=500, n_eval=50, prose_rounds=1,
                  text_chars=200_000, grpo_steps=8, grpo_task_steps=8, ppo_steps=8, reward_epochs=0.2),
}


def task_prose(examples) -> list[str]:
    """Task examples as plain documents, so the base model has seen the skills but never the chat format."""
    docs, chunk = [], []
    for e in examples:
        chunk.append(f"Question: {e.prompt}\nAnswer: {e.answer}\n")
        if len(chunk) == 20:
            docs.append("\n".join(chunk))
            chunk = []
    return docs + (["\n".join(chunk)] if chunk else [])


def build_corpus(root: Path, size: dict, seed: int) -> Path:
    """Tokenizer and shards for pretraining (reused when they exist); returns the shards directory."""
    from llmlab.tokenizer import load_tokenizer, train_bpe
    from llmlab.tokenizer.corpus import shakespeare_texts
    from llmlab.tokenizer.shards import write_shards
    from llmlab.train import checkable_tasks as tasks

    tok_path, shards = root / "tokenizer" / "tokenizer.json", root / "shards"
    if (shards / "meta.json").is_file() and tok_path.is_file():
        return shards
    text = "\n".join(shakespeare_texts())[: size["text_chars"]]
    plays = [text[i : i + 20_000] for i in range(0, len(text), 20_000)]
    # Other seeds than the SFT data's: the base learns the skills in prose, never in the chat format.
    prose = [doc for r in range(size["prose_rounds"])
             for doc in task_prose(tasks.generate(size["n_train"], "train", seed=seed + 100 + r))]
    docs = plays + prose
    tokenizer = train_bpe(docs, vocab_size=2048)
    tokenizer.save(tok_path)
    meta = write_shards(docs, tokenizer, shards)
    print(f"corpus: {len(plays)} Shakespeare chunks + {len(prose)} task-prose documents = {meta['tokens']:,} tokens; "
          f"tokenizer {load_tokenizer(tok_path).vocab_size} tokens")
    return shards


def pretrain_base(root: Path, shards: Path, steps: int, threads: int | None) -> Path:
    from llmlab.train import load_config, pretrain
    from llmlab.train.resume import resolve_latest

    out = root / "pretrain"
    latest = resolve_latest(out / "checkpoints") if (out / "checkpoints").exists() else None
    if latest is None or json.loads((latest / "config.json").read_text()).get("step") != steps:
        config = load_config(None, {
            "shards": str(shards), "out_dir": str(out), "depth": 2, "context_length": 128,
            "model": {"n_layers": 4}, "micro_batch": 32, "max_steps": steps, "warmup_steps": steps // 10,
            "lr": 3e-3, "eval_every": steps, "eval_tokens": 8192, "checkpoint_every": steps, "log_every": 25,
            "sample_tokens": 0, "threads": threads,
        })
        pretrain(config, resume=latest is not None)
    return out / "checkpoints" / "latest"


def posttrain_config(init_from: Path, out: Path, threads: int | None, **values):
    from llmlab.train.posttrain import posttrain_config as build

    return build(overrides={"init_from": str(init_from), "out_dir": str(out), "threads": threads, "eval_every": 10_000,
                            "checkpoint_every": 10_000, "log_every": 25, "warmup_steps": 10, **values})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/posttrain-bench", help="run directory (pretraining is reused)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline, not the gains")
    parser.add_argument("--lora-rank", type=int, help="also fine-tune a LoRA adapter of this rank from the base")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task data and the runs")
    parser.add_argument("--grpo-task", default="counting",
                        help="also run GRPO on this one task family, trained and scored on it alone ('none': skip)")
    parser.add_argument("--grpo-base", choices=["smollm2-135m"],
                        help="run only GRPO on arithmetic from this imported model (SFT'd briefly first)")
    parser.add_argument("--grpo-task-eval", type=int, default=180,
                        help="held-out prompts of --grpo-task scored for SFT and its GRPO (counting has 182, "
                             "arithmetic 65)")
    args = parser.parse_args()
    os.environ.setdefault("LLMLAB_PROGRESS", "0" if not sys.stderr.isatty() else "1")
    if args.grpo_base:
        return imported_base_grpo(args)

    from llmlab.files import write_json, write_text
    from llmlab.infer import load_model
    from llmlab.infer.answers import chat_answers
    from llmlab.train.reward import RewardOptions, train_reward_model
    from llmlab.train.reward_scores import load_reward_model, score_answers
    from llmlab.train import checkable_tasks as tasks
    from llmlab.train.dpo import DPOOptions, prepare_dpo
    from llmlab.train.posttrain import write_posttrain_report
    from llmlab.train.hardware import describe
    from llmlab.train.lora import LoRAConfig
    from llmlab.train.posttrain import PostTrainOptions
    from llmlab.train.sft import sft

    size = SIZES["quick" if args.quick else "full"]
    root = Path(args.out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    shards = build_corpus(root, size, args.seed)
    base_dir = pretrain_base(root, shards, size["pretrain_steps"], args.threads)
    timings["pretrain_s"] = time.perf_counter() - t0
    held_out = tasks.generate(size["n_eval"], "held_out", args.seed + 1)  # what SFT/DPO score, see sft.py
    base, tokenizer = load_model(base_dir)
    results: dict[str, dict] = {"base": tasks.evaluate(base, tokenizer, held_out)}

    common = dict(data="tasks", tasks_train=size["n_train"], tasks_eval=size["n_eval"])
    runs = [("sft", None, 1e-3)] + ([("sft_lora", LoRAConfig(rank=args.lora_rank, alpha=2 * args.lora_rank), 3e-3)]
                                    if args.lora_rank else [])
    for name, lora, lr in runs:
        t = time.perf_counter()
        out = sft(posttrain_config(base_dir, root / name, args.threads, lr=lr, seed=args.seed),
                  PostTrainOptions(epochs=size["sft_epochs"], lora=lora, **common))
        timings[f"{name}_s"] = time.perf_counter() - t
        results[name] = {k: v for k, v in out.last_eval.items() if k != "samples"}

    t = time.perf_counter()
    options = DPOOptions(epochs=size["dpo_epochs"], beta=0.1, nll_weight=1.0, **common)
    config = posttrain_config(root / "sft" / "checkpoints" / "latest", root / "dpo", args.threads, lr=1e-4,
                              seed=args.seed)
    run = prepare_dpo(config, options)
    with torch.no_grad():
        before = run.trainer.evaluate_fn(run.trainer.gpt.eval(), 0)
    run.trainer.gpt.train()
    out = run.trainer.fit()
    write_posttrain_report(run, out, options, "Direct preference optimisation")
    timings["dpo_s"] = time.perf_counter() - t
    results["sft_before_dpo"] = {k: v for k, v in before.items() if k != "samples"}
    results["dpo"] = {k: v for k, v in out.last_eval.items() if k != "samples"}

    sft_dir = root / "sft" / "checkpoints" / "latest"
    results["grpo"] = rl_run("grpo", sft_dir, root, args, size, timings, common)
    if args.grpo_task != "none":
        results.update(one_task_grpo(sft_dir, root, args, size, timings, common))
    for name, draw in (("reward", args.seed), ("judge", args.seed + 50)):  # the judge learns from other pairs
        t = time.perf_counter()
        reward = train_reward_model(posttrain_config(sft_dir, root / name, args.threads, lr=3e-4, seed=draw),
                                    RewardOptions(epochs=size["reward_epochs"], **common))
        timings[f"{name}_s"] = time.perf_counter() - t
        results[name] = {k: v for k, v in reward.last_eval.items() if k != "samples"}
    # beta 0.2 (the library's default is 0.05): a reward model trained on adjacent swaps only is easy to game,
    # and the stronger KL keeps PPO near the SFT model's answers (KL < 0.1 nats / token).
    results["ppo"] = rl_run("ppo", sft_dir, root, args, size, timings, common, reward_model=str(root / "reward"),
                            eval_reward_model=str(root / "judge"), beta=0.2)
    judge, judge_tok = load_reward_model(root / "judge")
    for name in ("sft", "dpo"):
        model, tok = load_model(root / name / "checkpoints" / "latest")
        answers = chat_answers(model, tok, [e.prompt for e in held_out], 24)
        rewards = score_answers(judge, judge_tok, [e.prompt for e in held_out], answers)
        results[name]["val_reward"] = sum(rewards) / len(rewards)

    machine = describe(torch.device("cpu"))
    summary = {"machine": machine, "sizes": size, "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "total_s": round(time.perf_counter() - t0, 1), "results": results}
    write_json(root / "results.json", summary)
    table = results_table(results)
    write_text(root / "results.md", f"# Post-training benchmark\n\n{table}\n\nmachine: {machine}\n\n"
                                    f"timings: {summary['timings_s']} (total {summary['total_s']} s)\n")
    print(table)
    print(f"\nmachine: {machine['cpu']} ({machine['cpu_cores']} cores, {machine['torch_threads']} torch threads), "
          f"torch {machine['torch']}")
    print(f"time: {summary['timings_s']}, total {summary['total_s']} s; details in {root / 'results.json'}")
    return 0


def rl_run(algo: str, sft_dir: Path, root: Path, args, size: dict, timings: dict, common: dict, name: str | None = None,
           lr: float | None = None, steps: int | None = None, **extra) -> dict:
    """GRPO or PPO from the SFT model; its final held-out numbers, KL per answer token, tokens/s and MFU."""
    from llmlab.progress import read_metrics
    from llmlab.train.rl import RLOptions, rl

    name = name or algo
    t = time.perf_counter()
    config = posttrain_config(sft_dir, root / name, args.threads, lr=lr or (1e-4 if algo == "grpo" else 5e-5),
                              seed=args.seed, max_steps=steps or size[f"{algo}_steps"], micro_batch=32, warmup_steps=5, log_every=5)
    options = RLOptions(algo=algo, epochs=None, prompts_per_round=16, group_size=8 if algo == "grpo" else 2,
                        **common, **extra)
    out = rl(config, options)
    timings[f"{name}_s"] = time.perf_counter() - t
    logged = [r for r in read_metrics(root / name / "metrics.jsonl") if "kl" in r]
    tail = logged[-max(1, len(logged) // 4):]
    result = {k: v for k, v in out.last_eval.items() if k != "samples"}
    result.update(kl_per_token=sum(r["kl"] for r in tail) / len(tail), reward=sum(r["reward"] for r in tail) / len(tail),
                  tokens_per_second=round(out.tokens_per_second, 1), mfu=out.mfu)
    return result


# A counting answer is a digit and the end token, so sharpening the right digit from p 0.5 to 0.9 costs
# ~0.2 nats per token: with the mixture run's beta 0.04 KL reached 0.2-0.3, beta 0.5 and lr 3e-5 keep it
# under 0.1. What the held-out score then measures, see docs/benchmarks.md (Post-training).
ONE_TASK_GRPO = dict(beta=0.5, lr=3e-5)


def one_task_grpo(sft_dir: Path, root: Path, args, size: dict, timings: dict, common: dict) -> dict[str, dict]:
    """GRPO trained on one task family's prompts only, and SFT and it scored on that family's held-out prompts:
    a mixture run spends most rollouts on tasks that never or always succeed (no signal in the group)."""
    from llmlab.infer import load_model
    from llmlab.train import checkable_tasks as tasks

    family = args.grpo_task
    # As many training prompts of the family as SFT saw; its held-out prompts, fewer in a quick run.
    one = dict(common, tasks_train=size["n_train"] // len(tasks.TASKS),
               tasks_eval=min(args.grpo_task_eval, size["n_eval"]) if args.quick else args.grpo_task_eval)
    held_out = tasks.generate(one["tasks_eval"], "held_out", args.seed + 1, (family,))
    sft_model, tokenizer = load_model(sft_dir)
    before = tasks.evaluate(sft_model, tokenizer, held_out)
    after = rl_run("grpo", sft_dir, root, args, size, timings, one, name=f"grpo_{family}", task_families=(family,),
                   steps=size["grpo_task_steps"], **ONE_TASK_GRPO)
    return {f"sft_{family}": before, f"grpo_{family}": after}


# From SmolLM2-135M. Every prompt has an empty system message: SmolLM2's template otherwise writes its
# default one, 20 of a 39-token prompt. GRPO samples at T 0.7, where answers look like the greedy ones
# the score counts (at T 1 the SFT model's samples were right on 21% of training sums, greedy on 62%);
# a fresh LoRA rank 16 on the merged SFT model keeps the reference (adapter off) = SFT. The dev sums are
# scored every `eval_every` steps and the best step on them is the one scored on the held-out sums.
IMPORTED_GRPO = {
    "full": dict(sft_steps=30, grpo_steps=64, prompts_per_round=8, group_size=8, eval_every=8),
    "quick": dict(sft_steps=2, grpo_steps=2, prompts_per_round=2, group_size=2, eval_every=1),
}
IMPORTED_GRPO_LOSS = dict(lr=5e-5, beta=0.1, temperature=0.7)
IMPORTED_SYSTEM = ""


def best_dev_step(metrics: list[dict]) -> tuple[int, float]:
    """(step, dev exact match) of the best evaluation; the earliest of equal ones (closest to SFT)."""
    evals = [r for r in metrics if "exact_match" in r]
    best = max(evals, key=lambda r: (r["exact_match"], -r["step"]))
    return int(best["step"]), float(best["exact_match"])


def imported_base_grpo(args) -> int:
    """SFT (LoRA, merged) then GRPO (LoRA) of an imported model on the arithmetic family; the best GRPO step
    on the dev sums and SFT scored on the held-out sums, and GRPO's KL per answer token up to that step."""
    from llmlab.files import write_json
    from llmlab.infer import load_model
    from llmlab.progress import read_metrics
    from llmlab.train import checkable_tasks as tasks
    from llmlab.train.hardware import describe
    from llmlab.train.lora import LoRAConfig
    from llmlab.train.posttrain import PostTrainOptions
    from llmlab.train.resume import step_dir
    from llmlab.train.rl import RLOptions, rl
    from llmlab.train.sft import sft

    size, root = IMPORTED_GRPO["quick" if args.quick else "full"], Path(args.out) / "smollm2"
    sums = tasks.generate(600, "train", args.seed, ("arithmetic",))  # 607 exist; the last 60 drawn are the dev split
    train, dev = sums[:540], sums[540:]
    held_out = tasks.generate(65, "held_out", args.seed + 1, ("arithmetic",))  # all the held-out sums
    files = {name: tasks.write_jsonl(root / f"{name}.jsonl", records) for name, records in (
        ("sft_train", tasks.sft_records(train)), ("sft_dev", tasks.sft_records(dev)),
        ("rl_train", [e.to_dict() for e in train]), ("rl_dev", [e.to_dict() for e in dev]))}
    timings, t = {}, time.perf_counter()
    steps = size["sft_steps"]
    sft_out = sft(posttrain_config(args.grpo_base, root / "sft", args.threads, lr=1e-3, seed=args.seed, max_steps=steps,
                                   micro_batch=8, warmup_steps=min(5, steps), eval_every=steps),
                  PostTrainOptions(data=str(files["sft_train"]), eval_data=str(files["sft_dev"]), epochs=None,
                                   lora=LoRAConfig(rank=8, alpha=16), max_new_tokens=6, system=IMPORTED_SYSTEM))
    timings["sft_s"] = time.perf_counter() - t
    sft_dir, t = root / "sft" / "checkpoints" / "latest", time.perf_counter()
    every = size["eval_every"]
    config = posttrain_config(sft_dir, root / "grpo", args.threads, lr=IMPORTED_GRPO_LOSS["lr"], seed=args.seed,
                              max_steps=size["grpo_steps"], micro_batch=size["prompts_per_round"] * size["group_size"] // 2,
                              grad_accum=2, warmup_steps=0, log_every=1, eval_every=every, checkpoint_every=every,
                              keep_checkpoints=0)
    rl(config, RLOptions(algo="grpo", data=str(files["rl_train"]), eval_data=str(files["rl_dev"]), epochs=None,
                         lora=LoRAConfig(rank=16, alpha=32), prompts_per_round=size["prompts_per_round"],
                         group_size=size["group_size"], beta=IMPORTED_GRPO_LOSS["beta"],
                         temperature=IMPORTED_GRPO_LOSS["temperature"], max_new_tokens=6, system=IMPORTED_SYSTEM))
    timings["grpo_s"] = time.perf_counter() - t
    metrics = read_metrics(root / "grpo" / "metrics.jsonl")
    step, dev_score = best_dev_step(metrics)
    logged = [r for r in metrics if "kl" in r and r["step"] <= step]
    tail = logged[-max(1, len(logged) // 4):]
    results = {"sft_dev": sft_out.last_eval.get("exact_match"), "best_step": step, "grpo_dev": dev_score,
               "dev_curve": {r["step"]: r["exact_match"] for r in metrics if "exact_match" in r},
               "kl_per_token": sum(r["kl"] for r in tail) / len(tail), "first_reward": logged[0]["reward"],
               "seconds_per_step": timings["grpo_s"] / size["grpo_steps"]}
    for name, directory in (("sft", sft_dir), ("grpo", step_dir(root / "grpo" / "checkpoints", step))):
        model, tokenizer = load_model(directory)
        results[name] = tasks.evaluate(model.eval(), tokenizer, held_out, max_new_tokens=6, system=IMPORTED_SYSTEM)
    gain = 100 * (results["grpo"]["exact_match"] - results["sft"]["exact_match"])
    summary = {"machine": describe(torch.device("cpu")), "sizes": size, **IMPORTED_GRPO_LOSS,
               "timings_s": {k: round(v, 1) for k, v in timings.items()}, "results": results}
    write_json(root / "results.json", summary)
    print(f"held-out sums ({len(held_out)}): SFT {results['sft']['exact_match']:.1%}, GRPO step {step} (best on dev, "
          f"{dev_score:.1%}) {results['grpo']['exact_match']:.1%} ({gain:+.1f} points; target +10), KL "
          f"{results['kl_per_token']:.4f} nats / answer token (target <= 0.1); details in {root / 'results.json'}")
    return 0


def results_table(results: dict[str, dict]) -> str:
    task_names = sorted(k.split("/", 1)[1] for k in results["base"] if k.startswith("exact_match/"))
    lines = ["| model | exact match | " + " | ".join(task_names) + " |", "|---|---|" + "---|" * len(task_names)]
    for name in ("base", "sft", "sft_lora", "dpo", "grpo", "ppo"):
        r = results.get(name)
        if r and "exact_match" in r:
            cells = " | ".join(f"{r.get(f'exact_match/{t}', float('nan')):.1%}" for t in task_names)
            lines.append(f"| {name} | {r['exact_match']:.1%} | {cells} |")
    before, after = results["sft_before_dpo"], results["dpo"]
    lines += ["", "| held-out pairs | before DPO (SFT model) | after DPO |", "|---|---|---|"]
    for key in ("val_preference_accuracy", "val_reward_accuracy", "val_reward_margin", "val_loss"):
        lines.append(f"| {key.removeprefix('val_')} | {before[key]:.4g} | {after[key]:.4g} |")
    lines += ["", "| RL run | KL (nats / answer token) | training reward | tokens/s | MFU |", "|---|---|---|---|---|"]
    for name in ("grpo", "ppo"):
        r = results[name]
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.2%}"
        lines.append(f"| {name} | {r['kl_per_token']:.4f} | {r['reward']:.4g} | {r['tokens_per_second']:,.0f} | {mfu} |")
    for name in [n for n in results if n.startswith("grpo_")]:
        family, before, after = name.removeprefix("grpo_"), results[f"sft_{name.removeprefix('grpo_')}"], results[name]
        lines += ["", f"| GRPO on {family} only | held-out {family} exact match | KL (nats / answer token) |",
                  "|---|---|---|", f"| SFT | {before['exact_match']:.1%} | 0 |",
                  f"| SFT + GRPO | {after['exact_match']:.1%} ({100 * (after['exact_match'] - before['exact_match']):+.1f} "
                  f"points) | {after['kl_per_token']:.4f} |"]
    lines += ["", "| held-out answers scored by the judge reward model | mean reward |", "|---|---|"]
    lines += [f"| {name} | {results[name]['val_reward']:.4f} |" for name in ("sft", "dpo", "ppo")]
    lines += ["", "| reward model (held-out pairs) | pairwise accuracy |", "|---|---|"]
    lines += [f"| {name} | {results[name]['val_accuracy']:.1%} |" for name in ("reward", "judge")]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
