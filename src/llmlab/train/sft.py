"""Supervised fine-tuning: teach a pretrained model to answer in the chat format.

    JSONL conversations -> chat template (ids + loss mask on the assistant's tokens)
                        -> right-padded batches (targets -100 on prompts and padding)
                        -> the pretraining loop (`Trainer`), full or LoRA, with a validation split

Two line forms are read: `{"instruction": ..., "input"?: ..., "response": ...}` (one exchange) and
`{"messages": [{"role": ..., "content": ...}, ...]}` (any conversation with at least one assistant turn).
`data="tasks"` trains on the built-in checkable tasks (`llmlab.train.checkable_tasks`) and scores exact match
on their held-out split at every evaluation.

Post-training differs from pretraining in its data and its numbers (a smaller learning rate, a few
epochs, no weight decay), not in its loop: the optimizer step, schedule, logging, checkpoints and exact
resume are the pretraining loop's.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from llmlab.errors import CheckpointError, ConfigError, InputError
from llmlab.train import hardware
from llmlab.train import checkable_tasks
from llmlab.train.resume import resolve_latest
from llmlab.train.config import TrainConfig, load_config, parse_override, recipe_path
from llmlab.train.distributed import DistInfo, init_distributed
from llmlab.train.loop import TrainResult, Trainer, lm_loss
from llmlab.train.lora import (LoRAConfig, add_lora, load_adapter, parameter_counts, save_adapter,
                               trainable_parameters)
from llmlab.train.report import write_report

IGNORE = -100
# Fine-tuning numbers, under any recipe and overrides: few steps, gentle updates, frequent evaluation.
POSTTRAIN_DEFAULTS: dict[str, Any] = {
    "micro_batch": 16, "warmup_steps": 20, "min_lr_ratio": 0.1, "weight_decay": 0.0, "val_fraction": 0.05,
    "eval_every": 100, "checkpoint_every": 200, "log_every": 10, "sample_tokens": 0, "grad_accum": 1,
}


# --- reading conversations ------------------------------------------------------------------------------

def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) per non-blank line; `where` is "file:line" for error messages."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no data file at {path}", hint="pass a JSONL file (one JSON object per line)")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where} is not valid JSON ({e.msg} at column {e.colno})",
                                 hint="each line must be one complete JSON object") from e
            if not isinstance(record, dict):
                raise InputError(f"{where} holds a {type(record).__name__}, not a JSON object")
            yield where, record


def conversation(record: dict[str, Any], where: str = "record") -> list[dict[str, str]]:
    """The messages of one line in either form, checked; InputError naming `where` otherwise."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                    or not isinstance(m.get("content"), str):
                raise InputError(f"{where}: message {i} must be {{\"role\": system|user|assistant, "
                                 f"\"content\": string}}, got {json.dumps(m)[:80]}")
        if not any(m["role"] == "assistant" for m in messages):
            raise InputError(f"{where}: the conversation has no assistant message, so nothing to learn from")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    missing = [k for k in ("instruction", "response") if not isinstance(record.get(k), str)]
    if missing:
        raise InputError(f"{where}: expected {{\"instruction\", \"input\"?, \"response\"}} or {{\"messages\"}}; "
                         f"{' and '.join(repr(k) for k in missing)} missing or not a string",
                         hint=f"keys found: {', '.join(record) or 'none'}")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise InputError(f"{where}: 'input' must be a string")
    user = record["instruction"] + (f"\n\n{extra}" if extra else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["response"]}]


def read_conversations(path: str | os.PathLike) -> list[list[dict[str, str]]]:
    out = [conversation(record, where) for where, record in read_jsonl(path)]
    if not out:
        raise InputError(f"{path} holds no conversations")
    return out


# --- examples, batches and the validation split -----------------------------------------------------------

def encode_conversation(messages: Sequence[dict[str, str]], tokenizer, max_tokens: int) -> dict[str, list[int]] | None:
    """Inputs and next-token targets of one conversation; targets are -100 except where the next token
    is one the assistant wrote. None when truncation left no assistant token to learn."""
    from llmlab.tokenizer.chat import render_chat

    rendered = render_chat(messages, tokenizer, max_tokens=max_tokens)
    labels = rendered.labels(IGNORE)
    example = {"input_ids": rendered.ids[:-1], "targets": labels[1:]}
    return example if any(t != IGNORE for t in example["targets"]) else None


def pad_batch(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row: padding comes after every real token, so causal attention never
    lets a real token see it, and its targets are -100."""
    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        targets[i, : len(r["targets"])] = torch.tensor(r["targets"])
    return {"input_ids": input_ids, "targets": targets}


def split_validation(items: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, validation): a seeded random `fraction` (at least one item) held out, the rest for training."""
    if len(items) < 2:
        raise InputError(f"{len(items)} usable example(s): need at least 2 (one to train on, one to validate)")
    order = np.random.default_rng([seed, 7]).permutation(len(items))
    n_val = min(len(items) - 1, max(1, round(len(items) * fraction)))
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in sorted(order[:n_val])]


class ExampleBatches:
    """A `BatchSource` of whole examples, reshuffled every epoch; a step's rows depend on (seed, step) only.

    Like the pretraining windows, the global batch of step s has micro_batch x grad_accum x world rows
    and process `rank` takes its slice, so a resumed run needs nothing but the step count.
    """

    def __init__(self, items: Sequence[Any], collate: Callable[[list[Any]], dict[str, torch.Tensor]],
                 micro_batch: int, grad_accum: int = 1, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if not items:
            raise InputError("no training examples")
        self.items, self.collate = list(items), collate
        self.micro_batch, self.grad_accum, self.seed, self.rank, self.world = micro_batch, grad_accum, seed, rank, world
        self.global_rows = micro_batch * grad_accum * world
        self.micro_step = 0
        self._order: tuple[int, np.ndarray] | None = None

    def steps_for(self, epochs: float) -> int:
        """Optimizer steps that show every example `epochs` times."""
        return max(1, math.ceil(epochs * len(self.items) / self.global_rows))

    def _item(self, g: int) -> Any:
        epoch, pos = divmod(g, len(self.items))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.items)))
        return self.items[self._order[1][pos]]

    def next_batch(self) -> dict[str, torch.Tensor]:
        step, m = divmod(self.micro_step, self.grad_accum)
        first = step * self.global_rows + (m * self.world + self.rank) * self.micro_batch
        self.micro_step += 1
        return self.collate([self._item(g) for g in range(first, first + self.micro_batch)])

    def state_dict(self) -> dict[str, Any]:
        return {"micro_step": self.micro_step, "seed": self.seed, "examples": len(self.items),
                "global_rows": self.global_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("examples", len(self.items)), ("global_rows", self.global_rows)):
            if state.get(key, mine) != mine:
                raise CheckpointError(f"the checkpoint was trained with {key}={state[key]}, this run has {mine}",
                                      hint="resume with the same data, seed and batch options as the interrupted run")
        self.micro_step = int(state["micro_step"])


# --- configuration ---------------------------------------------------------------------------------------

@dataclass
class PostTrainOptions:
    """What SFT and DPO add to a TrainConfig: the data, how long, and full or LoRA fine-tuning."""

    data: str  # a JSONL file, or "tasks" for the built-in checkable tasks
    epochs: float | None = 2.0  # sets max_steps; None keeps the config's max_steps
    lora: LoRAConfig | None = None  # None: full fine-tuning
    adapter_name: str = "default"
    eval_data: str | None = None  # instruction/response JSONL scored by exact match at each evaluation
    tasks_train: int = 2000  # with data="tasks": training examples drawn
    tasks_eval: int = 100  # with data="tasks": held-out examples scored by exact match
    max_new_tokens: int = 24  # answer length for exact-match scoring

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def posttrain_config(recipe: str | None = None, overrides: list[str] | dict[str, Any] | None = None,
                     out_dir: str = "sft", **explicit: Any) -> TrainConfig:
    """TrainConfig for SFT/DPO: POSTTRAIN_DEFAULTS <- recipe <- `key=value` overrides <- explicit values."""
    values: dict[str, Any] = {**POSTTRAIN_DEFAULTS, "out_dir": out_dir}
    if recipe:
        path = recipe_path(recipe)
        try:
            values.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"recipe {path} is not valid TOML: {e}") from e
    pairs = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    values.update(pairs)
    return load_config(None, values, **explicit)


def lora_from_options(rank: int | None, alpha: float | None, dropout: float, targets: str | None) -> LoRAConfig | None:
    """The CLI's LoRA flags as a LoRAConfig (None without a rank); alpha defaults to 2 x rank."""
    if rank is None:
        return None
    names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    return LoRAConfig(rank=rank, alpha=alpha if alpha is not None else 2.0 * rank, dropout=dropout,
                      **({"targets": names} if names else {}))


# --- the starting model -----------------------------------------------------------------------------------

@dataclass
class Start:
    model: torch.nn.Module
    tokenizer: Any
    tokenizer_file: Path
    notes: list[str] = field(default_factory=list)


def load_start(config: TrainConfig, options: PostTrainOptions, resume: bool) -> Start:
    """The model to fine-tune (from `init_from`), its tokenizer, and its LoRA adapter when asked for.

    A resumed LoRA run gets its adapter back from the latest checkpoint here, before the trainer loads
    that checkpoint's (merged) weights and checks they agree.
    """
    if not config.init_from:
        raise ConfigError("post-training starts from a trained model: pass init_from (--init-from)",
                          hint="e.g. --init-from runs/demo/pretrain, a checkpoint directory or smollm2-135m")
    if config.model:
        raise ConfigError("model.* overrides cannot change a model loaded with init_from")
    if config.tokens_per_step is not None:
        raise ConfigError("tokens_per_step does not apply to post-training: examples differ in length",
                          hint="set micro_batch and grad_accum (examples per step = micro_batch x grad_accum)")
    from llmlab.model.loading import load_model, resolve_checkpoint

    torch.manual_seed(config.seed)
    model, tokenizer = load_model(config.init_from, tokenizer=config.tokenizer)
    model.train()
    out_dir = Path(config.out_dir)
    if config.tokenizer:
        tokenizer_file = Path(config.tokenizer)
    else:
        try:
            tokenizer_file = resolve_checkpoint(config.init_from) / "tokenizer.json"
        except CheckpointError:  # an imported model (.gguf): keep its tokenizer beside the checkpoints
            tokenizer_file = out_dir / "tokenizer.json"
            tokenizer.save(tokenizer_file)
    notes = []
    if options.lora is not None:
        layers = add_lora(model, options.lora, options.adapter_name)
        notes.append(f"LoRA rank {options.lora.rank}, alpha {options.lora.alpha:g} on {len(layers)} matrices; "
                     "checkpoints hold the merged model, checkpoints/*/adapter/ the adapter alone")
        latest = resolve_latest(out_dir / "checkpoints") if resume else None
        if latest is not None:
            load_adapter(model, latest / "adapter", options.adapter_name)
    return Start(model, tokenizer, tokenizer_file, notes)


def default_lr(model: torch.nn.Module, lora: bool) -> float:
    """A tenth of the from-scratch rate for full fine-tuning; LoRA's few new weights take the full rate."""
    from llmlab.model import suggested_lr

    return suggested_lr(model.config) * (1.0 if lora else 0.1)


class PostTrainer(Trainer):
    """The pretraining loop itself; with LoRA, each checkpoint also keeps the adapter alone in adapter/."""

    adapter_name: str | None = None

    def save(self, step: int) -> Path | None:
        path = super().save(step)
        if path is not None and self.adapter_name is not None:
            save_adapter(self.gpt, path / "adapter", self.adapter_name, metadata={"step": step, "stage": self.stage})
        return path


def build_trainer(config: TrainConfig, options: PostTrainOptions, start: Start, batches: ExampleBatches,
                  loss_fn, evaluate, stage: str, resume: bool, info: DistInfo, device: torch.device) -> PostTrainer:
    if options.epochs is not None:
        config.max_steps = batches.steps_for(options.epochs)
    if config.lr is None:
        config.lr = default_lr(start.model, options.lora is not None)
    trainer = PostTrainer(config, start.model, batches, grad_accum=batches.grad_accum, loss_fn=loss_fn,
                          evaluate=evaluate, info=info, device=device, tokenizer_file=start.tokenizer_file,
                          resume=resume, stage=stage)
    trainer.adapter_name = options.adapter_name if options.lora is not None else None
    return trainer


# --- evaluation ------------------------------------------------------------------------------------------

@torch.no_grad()
def masked_loss(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean cross-entropy per trained (non -100) target token over all `batches`."""
    total, count = 0.0, 0
    for batch in batches:
        logits, _ = model(batch["input_ids"].to(device))
        targets = batch["targets"].to(device)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                       reduction="sum"))
        count += int((targets != IGNORE).sum())
    return total / max(1, count)


class ExactMatchEval:
    """Greedy answers to held-out prompts, scored by exact match; a few kept as samples."""

    def __init__(self, tokenizer, examples: Sequence[checkable_tasks.Example], max_new_tokens: int, samples: int = 3):
        self.tokenizer, self.examples, self.max_new_tokens, self.samples = tokenizer, list(examples), max_new_tokens, samples

    def __call__(self, model: torch.nn.Module) -> dict[str, Any]:
        if not self.examples:
            return {}
        prompts = [e.prompt for e in self.examples]
        answers = checkable_tasks.answer(model, self.tokenizer, prompts, self.max_new_tokens)
        metrics: dict[str, Any] = checkable_tasks.score(self.examples, answers)
        metrics["samples"] = list(zip(prompts[: self.samples], answers[: self.samples]))
        return metrics


class SFTEval:
    """The SFT evaluation hook: validation loss on assistant tokens, then exact match when there are answers."""

    def __init__(self, val_batches: list[dict[str, torch.Tensor]], device: torch.device, exact: ExactMatchEval) -> None:
        self.val_batches, self.device, self.exact = val_batches, device, exact

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        return {"val_loss": masked_loss(model, self.val_batches, self.device), **self.exact(model)}


def held_out_examples(options: PostTrainOptions, seed: int) -> list[checkable_tasks.Example]:
    """The examples scored by exact match: the tasks' held-out split, or `eval_data`'s single exchanges."""
    if options.data == "tasks":
        return checkable_tasks.generate(options.tasks_eval, "held_out", seed + 1)
    if not options.eval_data:
        return []
    out = []
    for where, record in read_jsonl(options.eval_data):
        messages = conversation(record, where)
        if len(messages) != 2 or messages[0]["role"] != "user":
            raise InputError(f"{where}: exact-match data must be one user message and one answer")
        out.append(checkable_tasks.Example(str(record.get("task", "data")), messages[0]["content"],
                                         messages[1]["content"], ""))
    return out


def conversations_for(options: PostTrainOptions, seed: int) -> list[list[dict[str, str]]]:
    if options.data == "tasks":
        records = checkable_tasks.sft_records(checkable_tasks.generate(options.tasks_train, "train", seed))
        return [conversation(r) for r in records]
    return read_conversations(options.data)


# --- the run ---------------------------------------------------------------------------------------------

@dataclass
class PostTraining:
    trainer: PostTrainer
    tokenizer: Any
    examples: int
    validation: int
    notes: list[str]


def setup_process(config: TrainConfig, info: DistInfo | None = None) -> tuple[torch.device, DistInfo]:
    """The device, process group and CPU thread count of a post-training run (SFT or DPO)."""
    device = hardware.resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = info or init_distributed(device.type)
    if config.threads:
        torch.set_num_threads(config.threads)
    return device, info


def pad_id(tokenizer) -> int:
    """Padding id: end-of-text when the tokenizer has one (padded positions are masked anyway)."""
    return tokenizer.eos_id if tokenizer.eos_id is not None else 0


def prepare_sft(config: TrainConfig, options: PostTrainOptions, resume: bool = False,
                info: DistInfo | None = None) -> PostTraining:
    """Read and encode the data, load the model (with LoRA if asked) and build the trainer; nothing trains yet."""
    device, info = setup_process(config, info)
    start = load_start(config, options, resume)
    limit = start.model.config.context_length + 1  # inputs are the ids but the last
    encoded = [encode_conversation(c, start.tokenizer, limit) for c in conversations_for(options, config.seed)]
    usable = [e for e in encoded if e is not None]
    notes = list(start.notes)
    if len(usable) < len(encoded):
        notes.append(f"{len(encoded) - len(usable)} conversations had no assistant token left after truncation to "
                     f"{limit - 1} tokens and were skipped")
    train, val = split_validation(usable, config.val_fraction, config.seed)
    pad = pad_id(start.tokenizer)
    collate = lambda rows: pad_batch(rows, pad)  # noqa: E731
    batches = ExampleBatches(train, collate, config.micro_batch, config.grad_accum or 1, config.seed,
                             info.rank, info.world)
    val_batches = [collate(val[i : i + config.micro_batch]) for i in range(0, len(val), config.micro_batch)]
    exact = ExactMatchEval(start.tokenizer, held_out_examples(options, config.seed), options.max_new_tokens)
    evaluate = SFTEval(val_batches, device, exact)
    trainer = build_trainer(config, options, start, batches, lm_loss, evaluate if info.is_main else None,
                            "sft", resume, info, device)
    return PostTraining(trainer, start.tokenizer, len(train), len(val), notes)


def sft(config: TrainConfig, options: PostTrainOptions, resume: bool = False,
        until_step: int | None = None) -> TrainResult:
    """Fine-tune `config.init_from` on `options.data`; writes checkpoints, metrics, loss.png and report.md."""
    run = prepare_sft(config, options, resume)
    result = run.trainer.fit(until_step)
    if run.trainer.info.is_main:
        write_posttrain_report(run, result, options, "Supervised fine-tuning")
    return result


def write_posttrain_report(run: PostTraining, result: TrainResult, options: PostTrainOptions, title: str) -> Path:
    """report.md and loss.png for an SFT or DPO run."""
    trainer = run.trainer
    gpt = trainer.gpt
    final: dict[str, Any] = {"step": result.step, "train_loss": result.losses[-1][1] if result.losses else float("nan")}
    final.update({k: v for k, v in result.last_eval.items() if k != "samples"})
    model: dict[str, Any] = {
        "started_from": trainer.config.init_from,
        "parameters": gpt.num_params(),
        "trainable_parameters": trainable_parameters(gpt),
        "training_examples": run.examples,
        "validation_examples": run.validation,
    }
    for row in parameter_counts(gpt):
        model[f"LoRA {row['module']}"] = f"r (d + k) = {row['r']} x ({row['d']} + {row['k']}) = {row['trainable']:,}"
    throughput = {
        "tokens_per_second": round(result.tokens_per_second, 1),
        "tokens_seen": trainer.tokens_seen,
        "train_time_s": round(trainer.elapsed, 1),
    }
    notes = list(run.notes)
    if result.step < trainer.config.max_steps:
        notes.append(f"stopped at step {result.step} of {trainer.config.max_steps}; `--resume` continues it")
    config = {**trainer.config.to_dict(), **{f"options.{k}": v for k, v in options.to_dict().items()}}
    return write_report(trainer.out_dir, f"{title} report: {Path(trainer.config.out_dir).name}", config, model,
                        hardware.describe(trainer.device), throughput, final, result.last_eval.get("samples"), notes)
