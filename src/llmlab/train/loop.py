"""The training loop, shared by pretraining and post-training.

Per optimizer step: set the learning rate, run `grad_accum` micro-batches (forward under autocast, loss,
backward), clip the global gradient norm, step AdamW, then log, evaluate and checkpoint on schedule.

What varies between stages plugs in; the loop itself does not change:
  - `batches`:  any `BatchSource` (dicts of tensors; `targets` may hold -100 to mask positions),
  - `loss_fn`:  `(model, batch) -> loss` or `(loss, {metric: tensor or float})`; default: the model's
                cross-entropy,
  - `evaluate`: `(model, step) -> {metric: value, "samples": [...]}` run every `eval_every` steps.

The host never waits for the device inside a step. Losses, gradient norms and metrics stay on the
device until a step that logs, evaluates or saves; there they are read in one transfer, which is also
where speed is measured (time between two such points, evaluation and saving left out). A step whose
gradients are not finite is skipped by the fused AdamW kernel itself (`found_inf`), so a NaN never
reaches the weights even though it is noticed only at the next of those points, where the run stops.

With `time_limit_s` the run ends on a deadline instead of a step count: the learning-rate schedule
follows the fraction of the time spent, and the last step leaves room for the final evaluation and
checkpoint, so a slower machine trains fewer steps but finishes its schedule on time.
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
from llmlab.model.nf4 import expanded_weights
from llmlab.model.transformer import plain_head
from llmlab.progress import Progress, read_metrics
from llmlab.train import resume as ckpt
from llmlab.train import hardware
from llmlab.train.config import TrainConfig
from llmlab.train.data import BatchSource
from llmlab.train.distributed import DistInfo, barrier, mean_across, setup_process, wrap_model
from llmlab.train.prefetch import Prefetcher
from llmlab.train.optim import build_optimizer, lr_at, set_lr

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], "torch.Tensor | tuple[torch.Tensor, dict[str, Any]]"]
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
    tokens_per_second: float = 0.0  # steady state: the first stretch of steps (compilation, warm-up) left out
    mfu: float | None = None  # steady state, like tokens_per_second
    checkpoint: Path | None = None
    out_of_time: bool = False  # stopped by time_limit_s before max_steps


@dataclass
class Speed:
    """Tokens, model FLOPs and seconds of training steps, summed over stretches between two syncs."""

    tokens: int = 0
    flops: float = 0.0
    seconds: float = 0.0

    def add(self, other: "Speed") -> None:
        self.tokens += other.tokens
        self.flops += other.flops
        self.seconds += other.seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    @property
    def flops_per_second(self) -> float:
        return self.flops / max(self.seconds, 1e-9)


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
        self.config, self.grad_accum = config, grad_accum
        self.loss_fn, self.evaluate_fn, self.stage = loss_fn, evaluate, stage
        self.device, self.info = device, info
        self.amp_dtype = hardware.autocast_dtype(self.device, config.dtype)
        self.out_dir = Path(config.out_dir)
        self.checkpoints = self.out_dir / "checkpoints"
        self.tokenizer_file = tokenizer_file
        self.start_step = 0
        self.fsdp = self.info.enabled and config.distributed == "fsdp"
        self.last_eval: dict[str, Any] = {}
        self.elapsed = 0.0  # seconds spent in training steps, over every resumed part of the run
        self.wall_elapsed = 0.0  # wall-clock seconds of the run: steps, evaluations, checkpoints, start-up
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
        self.gpt.activation_checkpointing = config.activation_checkpointing
        self.lr = config.lr if config.lr is not None else _suggested(model)
        self.model = wrap_model(self.gpt, config.distributed, self.info, self.device)
        self.optimizer = build_optimizer(
            self.model, self.lr, config.weight_decay, (config.beta1, config.beta2), config.eps
        )
        # The fused AdamW kernel can skip a step on the device when told its gradients are not finite.
        self.skips_nonfinite = bool(self.optimizer.defaults.get("fused"))
        prefetch = config.prefetch if config.prefetch is not None else self.device.type == "cuda"
        self.batches: BatchSource = Prefetcher(batches, pin_memory=self.device.type == "cuda") if prefetch else batches
        if resume_from is not None:
            state = ckpt.load_trainer_checkpoint(resume_from, self.model, self.optimizer, self.info, self.fsdp)
            self.start_step = int(state["step"])
            self.batches.load_state_dict(state["data"])
            self.last_eval = state.get("last_eval", {})
            self.elapsed = float(state.get("elapsed", 0.0))
            self.wall_elapsed = float(state.get("wall_elapsed", self.elapsed))
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
        skips_head = self.loss_fn is lm_loss and plain_head(self.gpt.lm_head) and "targets" in batch
        through_head = int((batch["targets"] != -100).sum()) if skips_head else ids.numel()
        return body * ids.numel() + head * through_head

    def _forward_backward(self) -> tuple[torch.Tensor, dict[str, Any], int, int]:
        """Loss and metrics of one optimizer step's micro-batches (averaged, still on the device)."""
        total = torch.zeros((), device=self.device)
        extras: dict[str, Any] = {}
        tokens = flops = 0
        for micro in range(self.grad_accum):
            cpu_batch = self.batches.next_batch()
            flops += self._model_flops(cpu_batch)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in cpu_batch.items()}
            tokens += batch["input_ids"].numel()
            # Under DDP only the last micro-batch all-reduces the gradients; the others accumulate locally.
            sync = micro == self.grad_accum - 1 or not self.info.enabled or self.fsdp
            with (nullcontext() if sync else self.model.no_sync()):
                with hardware.autocast(self.device, self.amp_dtype):
                    out = self.loss_fn(self.model, batch)
                loss, metrics = out if isinstance(out, tuple) else (out, {})
                (loss / self.grad_accum).backward()
            total += loss.detach()
            for k, v in metrics.items():
                v = v.detach() if isinstance(v, torch.Tensor) else float(v)
                extras[k] = extras.get(k, 0.0) + v / self.grad_accum
        return total / self.grad_accum, extras, tokens, flops

    def _step(self, step: int, time_fraction: float | None) -> tuple[torch.Tensor, float, dict[str, Any], int, int]:
        """One optimizer step: (loss, lr, metrics, tokens, FLOPs); loss and metrics stay on the device."""
        cfg = self.config
        lr = lr_at(step, self.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio, time_fraction)
        set_lr(self.optimizer, lr)
        loss, extras, tokens, flops = self._forward_backward()
        # Clipping at infinity changes nothing but still measures the norm, which the guard below needs.
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP returns a replicated DTensor; its local value is the norm
            grad_norm = grad_norm.full_tensor()
        if self.skips_nonfinite:
            # The norm comes from the all-reduced gradients, so every process skips the same steps.
            self.optimizer.found_inf = (~torch.isfinite(grad_norm)).float()
        else:  # a kernel that cannot skip: look now, before the update
            self._check_finite([(step + 1, float(mean_across(loss, self.info)), {"grad_norm": float(grad_norm)})])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, lr, {"grad_norm": grad_norm, **extras}, tokens * self.info.world, flops * self.info.world

    def _read(self, pending: list[tuple[int, torch.Tensor, dict[str, Any]]]) -> list[tuple[int, float, dict[str, float]]]:
        """The pending steps' losses (averaged over processes) and metrics as numbers: one device sync."""
        losses = mean_across(torch.stack([loss.float() for _, loss, _ in pending]), self.info)
        keys = sorted({k for _, _, extras in pending for k in extras})
        cells = [extras.get(k, float("nan")) for _, _, extras in pending for k in keys]
        values = _numbers([*losses.unbind(), *cells])
        n, width = len(pending), len(keys)
        return [(step, values[i], dict(zip(keys, values[n + i * width : n + (i + 1) * width])))
                for i, (step, _, _) in enumerate(pending)]

    def _check_finite(self, steps: list[tuple[int, float, dict[str, float]]]) -> None:
        for step, loss, extras in steps:
            if not math.isfinite(loss):
                self._diverged(f"the training loss became {loss} at step {step}")
            if not math.isfinite(extras.get("grad_norm", 0.0)):
                self._diverged(f"the gradient norm became {extras['grad_norm']} at step {step}")

    def _diverged(self, what: str) -> None:
        """Stop without saving: that step's update was skipped (or never made), and `latest` still names
        the last good checkpoint."""
        self.optimizer.zero_grad(set_to_none=True)
        last = ckpt.resolve_latest(self.checkpoints)
        raise TrainingDiverged(
            f"{what}; stopped without saving that state" + (f" (last good checkpoint: {last})" if last else ""),
            hint="lower lr or raise warmup_steps, keep grad_clip on, then --resume from the last checkpoint",
        )

    # --- the run ------------------------------------------------------------------------------------

    def fit(self, until_step: int | None = None) -> TrainResult:
        """Train from the current step to `max_steps` or the time limit (or stop after `until_step`)."""
        cfg, info = self.config, self.info
        end = min(cfg.max_steps, until_step or cfg.max_steps)
        limit = cfg.time_limit_s
        metrics_path = self.out_dir / "metrics.jsonl"
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if metrics_path.exists():  # keep only what the checkpoint being continued had logged
                _truncate_metrics(metrics_path, self.start_step)
        result = TrainResult(step=self.start_step, last_eval=dict(self.last_eval))
        if limit is None:
            bar = Progress(total=cfg.max_steps, desc=self.stage, unit="step", initial=self.start_step,
                           metrics_path=metrics_path if info.is_main else None, disable=None if info.is_main else True)
        else:  # the bar fills with time: the deadline, not the step count, ends this run
            bar = Progress(total=round(limit), desc=self.stage, unit="s", initial=min(round(self.wall_elapsed), round(limit)),
                           metrics_path=metrics_path if info.is_main else None, disable=None if info.is_main else True,
                           bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s [{elapsed}<{remaining}{postfix}]")
        pending: list[tuple[int, torch.Tensor, dict[str, Any]]] = []
        logged: list[tuple[int, float, dict[str, float]]] = []
        stretch, logged_speed, steady, first = Speed(), Speed(), Speed(), Speed()
        reserve = 0.0  # seconds the last evaluation + checkpoint took: kept free before a deadline
        started, wall_at_start = time.perf_counter(), self.wall_elapsed
        stretch_start = shown = started
        result.out_of_time = limit is not None and self.wall_elapsed >= limit
        try:
            step = self.start_step
            while step < end and not (limit is not None and self.wall_elapsed >= limit):
                fraction = None if limit is None else self.wall_elapsed / limit
                try:
                    loss, lr, extras, tokens, flops = self._step(step, fraction)
                except torch.cuda.OutOfMemoryError as e:
                    raise _oom_advice(cfg, self.grad_accum) from e
                step += 1
                pending.append((step, loss, extras))
                stretch.tokens, stretch.flops = stretch.tokens + tokens, stretch.flops + flops
                self.tokens_seen += tokens
                self.flops_done += flops
                now = time.perf_counter()
                self.wall_elapsed = wall_at_start + now - started
                per_step = (now - stretch_start) / len(pending)
                out_of_time = limit is not None and self.wall_elapsed + per_step + reserve >= limit
                final = step == cfg.max_steps or out_of_time
                log_now = step % cfg.log_every == 0 or step == end or out_of_time
                eval_now = self.evaluate_fn is not None and (step % cfg.eval_every == 0 or final)
                save_now = step % cfg.checkpoint_every == 0 or final
                bar.update(1 if limit is None else now - shown)
                shown = now
                if not (log_now or eval_now or save_now):
                    continue
                # A sync point: read the pending numbers, then time the stretch of steps that led here.
                numbers = self._read(pending)
                stretch.seconds = time.perf_counter() - stretch_start
                pending = []
                self._check_finite(numbers)
                result.losses += [(s, loss) for s, loss, _ in numbers]
                result.step = step
                logged += numbers
                logged_speed.add(stretch)
                self.elapsed += stretch.seconds
                (first if first.seconds == 0 else steady).add(stretch)
                stretch = Speed()
                if log_now:  # loss and speed averaged over the steps since the last log line
                    mfu = self._mfu(logged_speed.flops_per_second)
                    means = {k: sum(e[k] for _, _, e in logged) / len(logged) for k in logged[-1][2]}
                    bar.record(step=step, loss=round(sum(l for _, l, _ in logged) / len(logged), 5), lr=lr,
                                    tok_s=round(logged_speed.tokens_per_second, 1),
                                    mfu=None if mfu is None else round(mfu, 4), **{k: round(v, 5) for k, v in means.items()})
                    logged, logged_speed = [], Speed()
                paused = time.perf_counter()
                if eval_now:
                    self.last_eval = self._evaluate(step)
                    result.last_eval = self.last_eval
                    if self.last_eval and info.is_main:
                        bar.log(step=step, **{k: v for k, v in self.last_eval.items() if k != "samples"})
                        for prompt, text in self.last_eval.get("samples", []):
                            bar.bar.write(f"  sample: {prompt!r} -> {text!r}")
                if save_now:
                    self.wall_elapsed = wall_at_start + time.perf_counter() - started
                    result.checkpoint = self.save(step)
                stretch_start = time.perf_counter()
                if eval_now or save_now:  # what the final evaluation and checkpoint will take, at least
                    took = stretch_start - paused
                    reserve = took if (eval_now and save_now) else max(reserve, took)
                if out_of_time:
                    result.out_of_time = True
                    break
        finally:
            bar.close()
            self.wall_elapsed = wall_at_start + time.perf_counter() - started
        self.start_step = result.step  # a later fit() continues from here
        speed = steady if steady.seconds > 0 else first  # steady state: the first stretch held compilation
        result.tokens_per_second = speed.tokens_per_second
        result.mfu = self._mfu(speed.flops_per_second)
        return result

    def throughput(self, result: TrainResult) -> dict[str, Any]:
        """The report's speed section: steady-state tokens/s and MFU (the first stretch of steps, which
        holds compilation and warm-up, left out), beside the run's wall-clock totals."""
        mfu = "n/a" if result.mfu is None else f"{100 * result.mfu:.1f}% of {self.peak / 1e9:.1f} GFLOP/s ({self.peak_source})"
        return {
            "tokens_per_second": round(result.tokens_per_second, 1),
            "mfu": mfu,
            "tokens_per_second_overall": round(self.tokens_seen / max(self.wall_elapsed, 1e-9), 1),
            "tokens_seen": self.tokens_seen,
            "train_time_s": round(self.elapsed, 1),
            "wall_time_s": round(self.wall_elapsed, 1),
            "processes": self.info.world,
            "precision": str(self.amp_dtype or torch.float32).removeprefix("torch."),
        }

    def _mfu(self, flops_per_second: float) -> float | None:
        """Model FLOP/s of all processes as a fraction of their peak."""
        return flops_per_second / (self.peak * self.info.world) if self.peak else None

    def _evaluate(self, step: int) -> dict[str, Any]:
        # Evaluation must not move the training RNG, or a resumed run would diverge from an uninterrupted one.
        devices = [self.device] if self.device.type == "cuda" else []
        with (torch.random.fork_rng(devices=devices), torch.no_grad(), hardware.autocast(self.device, self.amp_dtype),
              expanded_weights(self.gpt)):  # QLoRA: dequantize the NF4 base once per evaluation, not per pass
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
            "wall_elapsed": self.wall_elapsed,
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


def _numbers(values: list[Any]) -> list[float]:
    """Floats from a mix of numbers and device scalars, with one transfer for all the tensors."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    read = iter(torch.stack([t.float().reshape(()) for t in tensors]).tolist()) if tensors else iter(())
    return [next(read) if isinstance(v, torch.Tensor) else float(v) for v in values]


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
