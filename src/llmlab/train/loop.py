"""The training loop, shared by pretraining and post-training.

Per optimizer step: set the learning rate, run `grad_accum` micro-batches (forward under autocast, loss,
backward), clip the global gradient norm, step AdamW, then log, evaluate and checkpoint on schedule.

What varies between stages plugs in; the loop itself does not change:
  - `batches`:  any `BatchSource` (dicts of tensors; `targets` may hold -100 to mask positions),
  - `loss_fn`:  `(model, batch) -> loss` or `(loss, {metric: value})`; default: the model's cross-entropy,
  - `evaluate`: `(model, step) -> {metric: value, "samples": [...]}` run every `eval_every` steps.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from llmlab.errors import ConfigError, LlmlabError
from llmlab.files import write_text
from llmlab.model import GPT
from llmlab.progress import Progress, read_metrics
from llmlab.train import resume as ckpt
from llmlab.train import hardware
from llmlab.train.config import TrainConfig
from llmlab.train.data import BatchSource
from llmlab.train.distributed import DistInfo, barrier, mean_across, setup_process, wrap_model
from llmlab.train.optim import build_optimizer, lr_at, set_lr

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]
EvalFn = Callable[[GPT, int], dict[str, Any]]
MODEL_INPUTS = ("attention_mask", "position_ids")


class TrainingDiverged(LlmlabError):
    """The loss became NaN or infinite; the run stopped without writing the bad state."""


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that are not -100 (the model's own loss)."""
    extra = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    _, loss = model(batch["input_ids"], batch["targets"], **extra)
    return loss


@dataclass
class TrainResult:
    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, train loss) of this process's run
    last_eval: dict[str, Any] = field(default_factory=dict)
    tokens_per_second: float = 0.0
    mfu: float | None = None
    checkpoint: Path | None = None


def accumulation_steps(config: TrainConfig, seq_len: int, world: int) -> int:
    """Micro-batches per optimizer step: explicit `grad_accum`, or enough to reach `tokens_per_step`."""
    if config.grad_accum is not None:
        return config.grad_accum
    if config.tokens_per_step is None:
        return 1
    per_micro = config.micro_batch * seq_len * world
    if config.tokens_per_step % per_micro:
        raise ConfigError(
            f"tokens_per_step={config.tokens_per_step} is not a multiple of micro_batch x seq_len x processes "
            f"= {config.micro_batch} x {seq_len} x {world} = {per_micro}",
            hint=f"use a multiple of {per_micro}, e.g. {per_micro * max(1, round(config.tokens_per_step / per_micro))}",
        )
    return config.tokens_per_step // per_micro


class Trainer:
    """Owns the optimizer, schedule, precision, distribution, logging and checkpoints of one run.

    `model` is the plain GPT, built (and seeded) by the caller; the trainer moves it to the device and
    wraps it for DDP/FSDP/compile. `grad_accum` must match what `batches` was built for.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: GPT,
        batches: BatchSource,
        grad_accum: int = 1,
        loss_fn: LossFn = lm_loss,
        evaluate: EvalFn | None = None,
        info: DistInfo | None = None,
        device: torch.device | None = None,
        tokenizer_file: str | Path | None = None,
        resume: bool = False,
        stage: str = "pretrain",
    ) -> None:
        if device is None or info is None:
            default_device, info = setup_process(config, info)
            device = device or default_device
        self.config, self.batches, self.grad_accum = config, batches, grad_accum
        self.loss_fn, self.evaluate_fn, self.stage = loss_fn, evaluate, stage
        self.device, self.info = device, info
        self.amp_dtype = hardware.autocast_dtype(self.device, config.dtype)
        self.out_dir = Path(config.out_dir)
        self.checkpoints = self.out_dir / "checkpoints"
        self.tokenizer_file = tokenizer_file
        self.start_step = 0
        self.fsdp = self.info.enabled and config.distributed == "fsdp"
        self.last_eval: dict[str, Any] = {}
        self.elapsed = 0.0
        self.tokens_seen = 0
        self.flops_done = 0.0  # model FLOPs of the steps taken, for MFU

        resume_from = ckpt.resolve_latest(self.checkpoints)
        if resume_from is not None and not resume:
            raise ConfigError(
                f"{self.out_dir} already holds a run (latest checkpoint: {resume_from.name})",
                hint="pass --resume to continue it, or choose another output directory",
            )
        if resume_from is not None:
            loaded = ckpt.load_weights(resume_from, model.config)
            model.load_state_dict(loaded.state_dict())
        self.gpt = model.to(self.device).train()
        self.lr = config.lr if config.lr is not None else _suggested(model)
        self.model = wrap_model(self.gpt, config.distributed, self.info, self.device)
        self.optimizer = build_optimizer(
            self.model, self.lr, config.weight_decay, (config.beta1, config.beta2), config.eps
        )
        if resume_from is not None:
            state = ckpt.load_trainer_checkpoint(resume_from, self.model, self.optimizer, self.info, self.fsdp)
            self.start_step = int(state["step"])
            self.batches.load_state_dict(state["data"])
            self.last_eval = state.get("last_eval", {})
            self.elapsed = float(state.get("elapsed", 0.0))
            self.tokens_seen = int(state.get("tokens_seen", 0))
            # Checkpoints written before FLOPs were counted: every token as a full pretraining token.
            self.flops_done = float(state.get("flops_done", self.tokens_seen * model.flops_per_token()))
        if config.compile:
            self.model = torch.compile(self.model)
        self.peak, self.peak_source = (
            (config.peak_flops, "configured") if config.peak_flops else _cached_peak(self.device, self.amp_dtype)
        )

    # --- one optimizer step -----------------------------------------------------------------------

    def _model_flops(self, batch: dict[str, torch.Tensor]) -> int:
        """Training FLOPs of one micro-batch: 6N per position plus attention at the batch's width. The
        model's own loss sends only positions with a target through a plain head (SFT prompts and padding
        skip it); any other loss takes the logits of every position."""
        ids = batch["input_ids"]
        body = self.gpt.flops_per_token(ids.size(-1), head=False)
        head = self.gpt.flops_per_token(ids.size(-1)) - body
        skips_head = self.loss_fn is lm_loss and type(self.gpt.lm_head) is nn.Linear and "targets" in batch
        through_head = int((batch["targets"] != -100).sum()) if skips_head else ids.numel()
        return body * ids.numel() + head * through_head

    def _forward_backward(self) -> tuple[torch.Tensor, dict[str, float], int, int]:
        total = torch.zeros((), device=self.device)
        extras: dict[str, float] = {}
        tokens = flops = 0
        for micro in range(self.grad_accum):
            cpu_batch = self.batches.next_batch()
            flops += self._model_flops(cpu_batch)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in cpu_batch.items()}
            tokens += batch["input_ids"].numel()
            last = micro == self.grad_accum - 1
            sync = last or not self.info.enabled or self.fsdp
            with (nullcontext() if sync else self.model.no_sync()):
                with hardware.autocast(self.device, self.amp_dtype):
                    out = self.loss_fn(self.model, batch)
                loss, metrics = out if isinstance(out, tuple) else (out, {})
                (loss / self.grad_accum).backward()
            total += loss.detach()
            for k, v in metrics.items():
                extras[k] = extras.get(k, 0.0) + float(v) / self.grad_accum
        return total / self.grad_accum, extras, tokens, flops

    def _step(self, step: int) -> tuple[float, float, dict[str, float], int, int]:
        lr = lr_at(step, self.lr, self.config.warmup_steps, self.config.max_steps, self.config.min_lr_ratio)
        set_lr(self.optimizer, lr)
        loss, extras, tokens, flops = self._forward_backward()
        loss_value = mean_across(loss, self.info).item()
        if not math.isfinite(loss_value):
            self._diverged(f"the training loss became {loss_value} at step {step + 1}")
        grad_norm = float("nan")
        if self.config.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip))
            if not math.isfinite(grad_norm):
                self._diverged(f"the gradient norm became {grad_norm} at step {step + 1}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, lr, {"grad_norm": grad_norm, **extras}, tokens * self.info.world, flops * self.info.world

    def _diverged(self, what: str) -> None:
        """Stop before the bad update is applied; `latest` still names the last good checkpoint."""
        self.optimizer.zero_grad(set_to_none=True)
        last = ckpt.resolve_latest(self.checkpoints)
        raise TrainingDiverged(
            f"{what}; stopped without saving that state" + (f" (last good checkpoint: {last})" if last else ""),
            hint="lower lr or raise warmup_steps, keep grad_clip on, then --resume from the last checkpoint",
        )

    # --- the run ------------------------------------------------------------------------------------

    def fit(self, until_step: int | None = None) -> TrainResult:
        """Train from the current step to `max_steps` (or stop after `until_step`, e.g. to test resume)."""
        cfg, info = self.config, self.info
        end = min(cfg.max_steps, until_step or cfg.max_steps)
        metrics_path = self.out_dir / "metrics.jsonl"
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if metrics_path.exists():  # keep only what the checkpoint being continued had logged
                _truncate_metrics(metrics_path, self.start_step)
        result = TrainResult(step=self.start_step, last_eval=dict(self.last_eval))
        bar = Progress(total=cfg.max_steps, desc=self.stage, unit="step", initial=self.start_step,
                       metrics_path=metrics_path if info.is_main else None,
                       disable=None if info.is_main else True)
        window_tokens, window_flops, window_time, window_losses = 0, 0, 0.0, []
        try:
            for step in range(self.start_step, end):
                t0 = time.perf_counter()
                try:
                    loss, lr, extras, tokens, flops = self._step(step)
                except torch.cuda.OutOfMemoryError as e:
                    raise _oom_advice(cfg, self.grad_accum) from e
                dt = time.perf_counter() - t0
                done = step + 1
                self.elapsed += dt
                self.tokens_seen += tokens
                self.flops_done += flops
                window_tokens += tokens
                window_flops += flops
                window_time += dt
                window_losses.append(loss)
                result.losses.append((done, loss))
                result.step = done
                if done % cfg.log_every == 0 or done == end:
                    # Loss and speed are averaged over the steps since the last log line.
                    tok_s = window_tokens / max(window_time, 1e-9)
                    mfu = self._mfu(window_flops / max(window_time, 1e-9))
                    bar.update(1, step=done, loss=round(sum(window_losses) / len(window_losses), 5), lr=lr,
                               tok_s=round(tok_s, 1), mfu=None if mfu is None else round(mfu, 4),
                               **{k: round(v, 5) for k, v in extras.items()})
                    window_tokens, window_flops, window_time, window_losses = 0, 0, 0.0, []
                else:
                    bar.update(1)
                if self.evaluate_fn is not None and (done % cfg.eval_every == 0 or done == cfg.max_steps):
                    self.last_eval = self._evaluate(done)
                    result.last_eval = self.last_eval
                    if self.last_eval and info.is_main:
                        bar.log(step=done, **{k: v for k, v in self.last_eval.items() if k != "samples"})
                        for prompt, text in self.last_eval.get("samples", []):
                            bar.bar.write(f"  sample: {prompt!r} -> {text!r}")
                if done % cfg.checkpoint_every == 0 or done == cfg.max_steps:
                    result.checkpoint = self.save(done)
        finally:
            bar.close()
        self.start_step = result.step  # a later fit() continues from here
        result.tokens_per_second = self.tokens_seen / max(self.elapsed, 1e-9)
        result.mfu = self._mfu(self.flops_done / max(self.elapsed, 1e-9))
        return result

    def throughput(self, result: TrainResult) -> dict[str, Any]:
        """The report's speed section: tokens/s and MFU over the training steps, and what they ran on."""
        mfu = "n/a" if result.mfu is None else f"{100 * result.mfu:.1f}% of {self.peak / 1e9:.1f} GFLOP/s ({self.peak_source})"
        return {
            "tokens_per_second": round(result.tokens_per_second, 1),
            "mfu": mfu,
            "tokens_seen": self.tokens_seen,
            "train_time_s": round(self.elapsed, 1),
            "processes": self.info.world,
            "precision": str(self.amp_dtype or torch.float32).removeprefix("torch."),
        }

    def _mfu(self, flops_per_second: float) -> float | None:
        """Model FLOP/s of all processes as a fraction of their peak."""
        return flops_per_second / (self.peak * self.info.world) if self.peak else None

    def _evaluate(self, step: int) -> dict[str, Any]:
        # Evaluation must not move the training RNG, or a resumed run would diverge from an uninterrupted one.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), hardware.autocast(self.device, self.amp_dtype):
            self.gpt.eval()
            try:
                return dict(self.evaluate_fn(self.gpt, step))
            finally:
                self.gpt.train()

    def write_extra(self, directory: Path, step: int) -> None:
        """Files a stage adds to each checkpoint, written before it is renamed into place (none here)."""

    def save(self, step: int) -> Path | None:
        state = {
            "data": self.batches.state_dict(),
            "config": self.config.to_dict(),
            "stage": self.stage,
            "last_eval": {k: v for k, v in self.last_eval.items()},
            "elapsed": self.elapsed,
            "tokens_seen": self.tokens_seen,
            "flops_done": self.flops_done,
        }
        path = ckpt.save_trainer_checkpoint(
            self.checkpoints, step, self.model, self.optimizer, state, self.info, fsdp=self.fsdp,
            tokenizer_file=self.tokenizer_file, metadata={"stage": self.stage}, keep=self.config.keep_checkpoints,
            extra=lambda directory: self.write_extra(directory, step),
        )
        barrier(self.info)
        return path


def _suggested(model: GPT) -> float:
    from llmlab.model import suggested_lr

    return suggested_lr(model.config)


_PEAKS: dict[tuple[str, str], tuple[float, str]] = {}


def _cached_peak(device: torch.device, dtype: torch.dtype | None) -> tuple[float, str]:
    key = (str(device), str(dtype))
    if key not in _PEAKS:
        _PEAKS[key] = hardware.peak_flops(device, dtype)
    return _PEAKS[key]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records a killed run logged after the checkpoint being resumed, so the curve has no repeats."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


def _oom_advice(config: TrainConfig, grad_accum: int) -> LlmlabError:
    return ConfigError(
        f"out of device memory with micro_batch={config.micro_batch} at context {config.context_length}",
        hint=(f"halve micro_batch (--set micro_batch={max(1, config.micro_batch // 2)}) and double grad_accum "
              f"(--set grad_accum={grad_accum * 2}) to keep the tokens per step; or shorten context_length, "
              "or shard the model with distributed=fsdp under torchrun"),
    )
