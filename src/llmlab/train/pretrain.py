"""Pretraining assembled from the loop's parts: token-shard windows, the model's loss, the validation hook.

Every input is checked before the first step (shards present and consistent, tokenizer and vocabulary
matching the shards and the model), so a mistake costs seconds, not a training run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llmlab.errors import ConfigError, InputError
from llmlab.model import GPT, from_depth, load_checkpoint, preset
from llmlab.train import hardware
from llmlab.train.config import TrainConfig
from llmlab.train.data import WindowBatches, check_compatible, open_shards, split_stream, token_byte_lengths, validation_batches
from llmlab.train.distributed import DistInfo, setup_process
from llmlab.train.evaluation import PretrainEval
from llmlab.train.loop import LossFn, TrainResult, Trainer, accumulation_steps, lm_loss
from llmlab.train.optim import decay_names
from llmlab.train.report import run_title, write_report


TITLES = {"pretrain": "Pretraining", "distill": "Distillation"}


@dataclass
class Pretraining:
    trainer: Trainer
    evaluate: PretrainEval
    tokenizer_path: Path | None
    notes: list[str]


def find_tokenizer(config: TrainConfig) -> Path | None:
    """The tokenizer file: as configured, else beside the shards in the run-directory layout."""
    if config.tokenizer:
        path = Path(config.tokenizer)
        if not path.is_file():
            raise InputError(f"tokenizer file {path} does not exist", hint="pass the tokenizer.json that encoded the shards")
        return path
    shards = Path(config.shards)
    for candidate in (shards.parent / "tokenizer" / "tokenizer.json", shards / "tokenizer.json"):
        if candidate.is_file():
            return candidate
    return None


def build_model(config: TrainConfig, vocab_size: int) -> GPT:
    """The starting model: a checkpoint (`init_from`), a preset, or the depth dial sized to the shards' vocabulary."""
    torch.manual_seed(config.seed)
    if config.init_from:
        if config.model:
            raise ConfigError("model.* overrides cannot change a model loaded with init_from")
        return load_checkpoint(config.init_from).train()
    try:
        if config.preset:
            gpt_config = preset(config.preset, **config.model)
        else:
            overrides = {"vocab_size": vocab_size, **config.model}
            gpt_config = from_depth(config.depth, overrides.pop("vocab_size"), config.context_length, config.family)
            gpt_config = gpt_config.replace(**overrides) if overrides else gpt_config
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"bad model options: {e}") from e
    return GPT(gpt_config)


def _load_tokenizer(path: Path | None):
    if path is None:
        return None
    from llmlab.tokenizer import load_tokenizer

    return load_tokenizer(path)


def prepare(config: TrainConfig, resume: bool = False, info: DistInfo | None = None, loss_fn: LossFn = lm_loss,
            stage: str = "pretrain") -> Pretraining:
    """Check the inputs and build the trainer for a pretraining run (nothing is trained yet).
    `loss_fn` replaces the model's cross-entropy (distillation trains on the same windows this way)."""
    device, info = setup_process(config, info)
    shards = open_shards(config.shards)
    tokenizer_path = find_tokenizer(config)
    tokenizer = _load_tokenizer(tokenizer_path)
    notes: list[str] = []
    if tokenizer is None:
        notes.append("no tokenizer found: bits per byte and samples are skipped (pass tokenizer=...)")
    model = build_model(config, int(shards.meta["vocab_size"]))
    check_compatible(shards.meta, model.config.vocab_size, tokenizer, tokenizer_path)
    torch.manual_seed(config.seed + info.rank)  # dropout differs per process; initial weights do not
    seq_len = model.config.context_length
    grad_accum = accumulation_steps(config, seq_len, info.world)
    train_segments, val_segments = split_stream(shards.arrays, config.val_fraction)
    batches = WindowBatches(train_segments, seq_len, config.micro_batch, grad_accum, info.rank, info.world,
                            config.seed, config.sampling)
    val = validation_batches(val_segments, seq_len, config.micro_batch, config.eval_tokens)
    byte_lengths = token_byte_lengths(tokenizer, model.config.vocab_size) if tokenizer is not None else None
    fsdp = info.enabled and config.distributed == "fsdp"
    if fsdp:
        notes.append("samples are skipped under FSDP (the sharded model would need every process to sample)")
    evaluate = PretrainEval(
        val, device, byte_lengths, tokenizer, config.sample_prompts, config.sample_tokens,
        config.sample_temperature, config.seed, samples=info.is_main and not fsdp,
    )
    trainer = Trainer(config, model, batches, grad_accum=grad_accum, loss_fn=loss_fn,
                      evaluate=_main_only(evaluate, info, fsdp), info=info, device=device,
                      tokenizer_file=tokenizer_path, resume=resume, stage=stage)
    return Pretraining(trainer, evaluate, tokenizer_path, notes)


def _main_only(evaluate: PretrainEval, info: DistInfo, fsdp: bool):
    """Under DDP every process holds the whole model: only the main one needs to evaluate."""
    if not info.enabled or fsdp:
        return evaluate
    return lambda model, step: evaluate(model, step) if info.is_main else {}


def pretrain(config: TrainConfig, resume: bool = False, until_step: int | None = None) -> TrainResult:
    """Train on token shards as `config` says; writes checkpoints, metrics, loss.png and report.md."""
    run = prepare(config, resume=resume)
    trainer = run.trainer
    result = trainer.fit(until_step)
    if trainer.info.is_main:
        summarize(run, result)
    return result


def summarize(run: Pretraining, result: TrainResult) -> Path:
    """Write the run's report.md and loss.png."""
    trainer, cfg = run.trainer, run.trainer.config
    gpt = trainer.gpt
    decay, no_decay = decay_names(gpt)
    seq_len = gpt.config.context_length
    tokens_per_step = cfg.micro_batch * trainer.grad_accum * trainer.info.world * seq_len
    final = {"step": result.step, "train_loss": result.losses[-1][1] if result.losses else float("nan")}
    final.update({k: v for k, v in result.last_eval.items() if k != "samples"})
    throughput = {**trainer.throughput(result), "tokens_per_step": tokens_per_step}
    model = {
        "parameters": gpt.num_params(),
        "non_embedding_parameters": gpt.num_params(exclude_embeddings=True),
        "flops_per_token": gpt.flops_per_token(seq_len),
        "config": gpt.config.to_dict(),
        "weight_decay_on": f"{len(decay)} tensors (linear weights)",
        "no_weight_decay_on": f"{len(no_decay)} tensors (embeddings, norms, biases)",
        "chinchilla_tokens": f"{20 * gpt.num_params():,} (20 x params)",
    }
    notes = list(run.notes)
    if run.evaluate.note:
        notes.append(run.evaluate.note)
    if result.step < cfg.max_steps:
        notes.append(f"stopped at step {result.step} of {cfg.max_steps}; `--resume` continues it")
    config = {**cfg.to_dict(), "tokenizer": None if run.tokenizer_path is None else str(run.tokenizer_path)}
    return write_report(
        trainer.out_dir, run_title(TITLES.get(trainer.stage, "Pretraining"), trainer.out_dir, trainer.stage), config, model,
        hardware.describe(trainer.device), throughput, final, result.last_eval.get("samples"), notes,
    )
