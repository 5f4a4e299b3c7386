"""What every post-training stage (SFT, DPO, and any later one) shares around the one training loop.

A post-training run starts from a trained model (`init_from`), optionally with LoRA adapters, trains it
with the pretraining `Trainer` under fine-tuning numbers (a smaller learning rate, a few epochs, no
weight decay), scores exact match on held-out prompts at each evaluation, and leaves a report. The
stages differ in their data, loss and evaluation metrics only; those live in their own modules
(`sft.py`, `dpo.py`), which import this one and never each other.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from llmlab.errors import CheckpointError, ConfigError, InputError
from llmlab.infer.answers import chat_answers
from llmlab.model import suggested_lr
from llmlab.model.loading import load_model, resolve_checkpoint
from llmlab.train import checkable_tasks, hardware
from llmlab.train.config import TrainConfig, load_config, parse_override, recipe_path
from llmlab.train.distributed import DistInfo
from llmlab.train.examples import ExampleBatches, conversation, read_jsonl
from llmlab.train.loop import TrainResult, Trainer
from llmlab.train.lora import (LoRAConfig, add_lora, load_adapter, parameter_counts, save_adapter,
                               trainable_parameters)
from llmlab.train.report import run_title, write_report
from llmlab.train.resume import resolve_latest

# Fine-tuning numbers, under any recipe and overrides: few steps, gentle updates, frequent evaluation.
POSTTRAIN_DEFAULTS: dict[str, Any] = {
    "micro_batch": 16, "warmup_steps": 20, "min_lr_ratio": 0.1, "weight_decay": 0.0, "val_fraction": 0.05,
    "eval_every": 100, "checkpoint_every": 200, "log_every": 10, "sample_tokens": 0, "grad_accum": 1,
}


# --- configuration ---------------------------------------------------------------------------------------

@dataclass
class PostTrainOptions:
    """What a post-training stage adds to a TrainConfig: the data, how long, and full or LoRA fine-tuning."""

    data: str  # a JSONL file, or "tasks" for the built-in checkable tasks
    epochs: float | None = 2.0  # sets max_steps; None keeps the config's max_steps
    lora: LoRAConfig | None = None  # None: full fine-tuning
    adapter_name: str = "default"
    eval_data: str | None = None  # instruction/response JSONL scored by exact match at each evaluation
    tasks_train: int = 2000  # with data="tasks": training examples drawn
    tasks_eval: int = 100  # with data="tasks": held-out examples scored by exact match
    max_new_tokens: int = 24  # answer length for exact-match scoring
    # A system message before every conversation trained on, sampled or scored; None keeps the chat
    # template's own (SmolLM2's default system prompt), "" is the shortest (see `with_system`).
    system: str | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}",
                              hint="pass --epochs 1 or more, or --steps N to set the optimizer steps directly")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def posttrain_config(recipe: str | None = None, overrides: list[str] | dict[str, Any] | None = None,
                     out_dir: str = "sft", **explicit: Any) -> TrainConfig:
    """TrainConfig for post-training: POSTTRAIN_DEFAULTS <- recipe <- `key=value` overrides <- explicit values."""
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


def lora_from_options(rank: int | None, alpha: float | None, dropout: float, targets: str | None,
                      qlora: bool = False) -> LoRAConfig | None:
    """The CLI's LoRA flags as a LoRAConfig (None without a rank); alpha defaults to 2 x rank; `qlora`
    stores the adapted matrices' frozen base in NF4."""
    if rank is None:
        if qlora:
            raise ConfigError("QLoRA trains LoRA adapters: pass --lora-rank too")
        return None
    names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    return LoRAConfig(rank=rank, alpha=alpha if alpha is not None else 2.0 * rank, dropout=dropout,
                      quantize="nf4" if qlora else None, **({"targets": names} if names else {}))


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
        kind = "QLoRA (NF4 base)" if options.lora.quantize else "LoRA"
        notes.append(f"{kind} rank {options.lora.rank}, alpha {options.lora.alpha:g} on {len(layers)} matrices; "
                     "checkpoints hold the merged model, checkpoints/*/adapter/ the adapter alone")
        latest = resolve_latest(out_dir / "checkpoints") if resume else None
        if latest is not None:
            load_adapter(model, latest / "adapter", options.adapter_name)
    return Start(model, tokenizer, tokenizer_file, notes)


def default_lr(model: torch.nn.Module, lora: bool) -> float:
    """A tenth of the from-scratch rate for full fine-tuning; LoRA's few new weights take the full rate."""
    return suggested_lr(model.config) * (1.0 if lora else 0.1)


class PostTrainer(Trainer):
    """The pretraining loop itself; with LoRA, each checkpoint also keeps the adapter alone in adapter/.

    The adapter is written inside the checkpoint before it is renamed into place and `latest` moves, so
    a run killed while saving never points `latest` at a checkpoint without its adapter.
    """

    adapter_name: str | None = None

    def write_extra(self, directory: Path, step: int) -> None:
        if self.adapter_name is not None:
            save_adapter(self.gpt, directory / "adapter", self.adapter_name,
                         metadata={"step": step, "stage": self.stage})


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


# --- held-out exact match ---------------------------------------------------------------------------------

class ExactMatchEval:
    """Greedy answers to held-out prompts, scored by exact match; a few kept as samples."""

    def __init__(self, tokenizer, examples: Sequence[checkable_tasks.Example], max_new_tokens: int,
                 samples: int = 3, system: str | None = None) -> None:
        self.tokenizer, self.examples, self.max_new_tokens, self.samples = tokenizer, list(examples), max_new_tokens, samples
        self.system = system

    def __call__(self, model: torch.nn.Module) -> dict[str, Any]:
        if not self.examples:
            return {}
        prompts = [e.prompt for e in self.examples]
        answers = chat_answers(model, self.tokenizer, prompts, self.max_new_tokens, self.system)
        metrics: dict[str, Any] = checkable_tasks.score(self.examples, answers)
        metrics["samples"] = list(zip(prompts[: self.samples], answers[: self.samples]))
        return metrics


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


# --- the run and its report -------------------------------------------------------------------------------

@dataclass
class PostTraining:
    trainer: PostTrainer
    tokenizer: Any
    examples: int
    validation: int
    notes: list[str]


def write_posttrain_report(run: PostTraining, result: TrainResult, options: PostTrainOptions, title: str,
                           curves: Sequence[str] = ()) -> Path:
    """report.md and loss.png (and curves.png of the logged `curves`) for a post-training run."""
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
    notes = list(run.notes)
    if result.step < trainer.config.max_steps:
        notes.append(f"stopped at step {result.step} of {trainer.config.max_steps}; `--resume` continues it")
    config = {**trainer.config.to_dict(), "tokenizer": str(trainer.tokenizer_file),
              **{f"options.{k}": v for k, v in options.to_dict().items()}}
    return write_report(trainer.out_dir, run_title(title, trainer.out_dir, trainer.stage), config, model,
                        hardware.describe(trainer.device), trainer.throughput(result), final,
                        result.last_eval.get("samples"), notes, curves)
