"""`llmlab prune`: prune a model, measure what it cost, save the smaller (or sparser) checkpoint.

The perplexity on the given texts is measured before and after, and optionally along a sweep of
amounts (the sparsity -> perplexity curve, as PNG). Any pruning can be followed by a short recovery
fine-tune on tokens (`fine_tune`: the ordinary training loop, started from the pruned model); after
unstructured pruning the zeros are held at zero through every optimizer step, so the sparsity stays.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from llmlab.errors import ConfigError
from llmlab.eval.models import LanguageModel
from llmlab.eval.perplexity import perplexity
from llmlab.files import atomic_path, write_json, write_text
from llmlab.model import GPT
from llmlab.model.checkpoint import save_checkpoint
from llmlab.model.prune import (hold_zeros, input_grams, input_norms, magnitude_prune, prune_heads, prune_neurons,
                                sparsegpt_prune, sparsity, wanda_prune)
from llmlab.train.config import TrainConfig

METHODS = ("magnitude", "magnitude-layer", "wanda", "sparsegpt", "neurons", "heads")
UNSTRUCTURED = ("magnitude", "magnitude-layer", "wanda", "sparsegpt")
CALIBRATED = ("wanda", "sparsegpt")  # need calibration text


def calibration_batches(tokenizer: Any, texts: list[str], window: int, n: int = 16) -> list[torch.Tensor]:
    """Up to `n` windows of `window` token ids cut from `texts`, for `calibration_statistics`."""
    ids = [i for text in texts for i in tokenizer.encode_ordinary(text)]
    windows = [ids[s : s + window] for s in range(0, len(ids) - window + 1, window)][:n]
    if not windows:
        raise ConfigError(f"the calibration texts hold fewer than {window} tokens", hint="pass more text (--calibrate)")
    return [torch.tensor([w]) for w in windows]


def calibration_statistics(model: GPT, method: str, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """What `apply` needs from calibration text: X^T X per layer for sparsegpt, input norms otherwise."""
    return input_grams(model, batches) if method == "sparsegpt" else input_norms(model, batches)


def apply(model: GPT, method: str, amount: float, calibration: dict[str, torch.Tensor] | None = None) -> tuple[GPT, dict[str, Any]]:
    """The pruned model (a copy for unstructured pruning too) and what was removed. `calibration` is
    `calibration_statistics` on calibration text: required by wanda and sparsegpt, sharper for neurons
    and heads."""
    if method not in METHODS:
        raise ConfigError(f"method={method!r}; choose one of {', '.join(METHODS)}")
    if method in CALIBRATED and calibration is None:
        raise ConfigError(f"{method} scores weights by their inputs on calibration text", hint="pass --calibrate FILE")
    try:
        if method in UNSTRUCTURED:
            pruned = copy.deepcopy(model)
            if method == "wanda":
                stats = wanda_prune(pruned, amount, calibration)
            elif method == "sparsegpt":
                stats = sparsegpt_prune(pruned, amount, calibration)
            else:
                stats = magnitude_prune(pruned, amount, "layer" if method == "magnitude-layer" else "global")
            return pruned, {"sparsity": stats["all"]}
        pruned, info = (prune_neurons if method == "neurons" else prune_heads)(model, amount, calibration)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return pruned, {k: v for k, v in info.items() if k != "kept_per_layer"}


def fine_tune(model: GPT, tokens: list[np.ndarray], config: TrainConfig, hold: bool = False,
              tokenizer_file: str | os.PathLike | None = None) -> GPT:
    """Train `model` in place for `config.max_steps` on random windows of `config.context_length` (at
    most the model's) from the token arrays, with the ordinary training loop (checkpoints under `config.out_dir`); with `hold`
    the blocks' zeros stay exactly zero (the recovery fine-tune of an unstructured prune)."""
    from llmlab.train.data import Segment, WindowBatches
    from llmlab.train.loop import Trainer

    window = min(config.context_length, model.config.context_length)
    batches = WindowBatches([Segment(a, 0, len(a)) for a in tokens], window, config.micro_batch,
                            seed=config.seed, sampling=config.sampling)
    trainer = Trainer(config, model, batches, tokenizer_file=tokenizer_file, stage="recover")
    handle = hold_zeros(trainer.gpt, trainer.optimizer) if hold else None
    try:
        trainer.fit()
    finally:
        if handle is not None:
            handle.remove()
    return trainer.gpt.eval()


@dataclass
class PruneResult:
    method: str
    amount: float
    parameters: tuple[int, int]  # before, after
    sparsity: float  # of the blocks' matrices, after
    perplexity: tuple[float, float] | None = None  # before, after
    recovered_perplexity: float | None = None
    curve: list[tuple[float, float]] = field(default_factory=list)  # (amount, perplexity)
    removed: dict[str, Any] = field(default_factory=dict)
    calibrated: bool = False


def prune_checkpoint(
    model: GPT, tokenizer: Any, name: str, out: str | os.PathLike, method: str, amount: float,
    texts: list[str] | None = None, sweep: list[float] | None = None,
    recover: Callable[[GPT, Path, bool], GPT] | None = None, calibration: list[str] | None = None,
) -> PruneResult:
    """Prune `model`, write the checkpoint, report.md and (with `sweep`) prune_curve.png into `out`.
    `calibration` texts give the activation statistics (wanda, sparsegpt; optional for neurons and
    heads). `recover(pruned, out, hold_zeros)` fine-tunes the pruned model and returns it."""
    statistics = None
    if calibration:
        window = min(256, model.config.context_length)
        statistics = calibration_statistics(model, method, calibration_batches(tokenizer, calibration, window))
    out = Path(out)

    def ppl(m: GPT) -> float:
        lm = LanguageModel(model=m.eval(), tokenizer=tokenizer, name=name)
        return perplexity(lm, texts, show_progress=False).perplexity

    pruned, removed = apply(model, method, amount, statistics)
    result = PruneResult(method, amount, (model.num_params(), pruned.num_params()), sparsity(pruned), removed=removed,
                         calibrated=statistics is not None)
    if texts:
        result.perplexity = (ppl(model), ppl(pruned))
        for a in sweep or []:
            result.curve.append((a, result.perplexity[0] if a == 0 else ppl(apply(model, method, a, statistics)[0])))
    tokenizer_file = out / "tokenizer.json"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(tokenizer_file)
    save_checkpoint(out, pruned, tokenizer_file=tokenizer_file,
                    metadata={"pruned": {"from": name, "method": method, "amount": amount, **removed}})
    if recover is not None:
        recovered = recover(copy.deepcopy(pruned), out, method in UNSTRUCTURED)
        if texts:
            result.recovered_perplexity = ppl(recovered)
    if result.curve:
        _plot(result, out / "prune_curve.png")
    write_json(out / "prune.json", {**result.__dict__})
    write_text(out / "report.md", _report(result, name))
    return result


def plot_curves(curves: dict[str, list[tuple[float, float]]], path: Path, xlabel: str, title: str) -> None:
    """One line of perplexity (log scale) by amount pruned per method, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        xs, ys = zip(*curve)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot(result: PruneResult, path: Path) -> None:
    xlabel = "fraction pruned" + (" (sparsity)" if result.method in UNSTRUCTURED else f" ({result.method})")
    plot_curves({result.method: result.curve}, path, xlabel, f"{result.method} pruning")


def _report(r: PruneResult, name: str) -> str:
    lines = [f"# Pruning report: {name}", "", f"- method: {r.method}, amount {r.amount}"
             + (", scored with calibration text" if r.calibrated else ""),
             f"- parameters: {r.parameters[0]:,} -> {r.parameters[1]:,}",
             f"- zeros among the blocks' weights: {100 * r.sparsity:.1f}%"]
    lines += [f"- {k}: {v}" for k, v in r.removed.items() if k != "sparsity"]
    if r.perplexity:
        change = 100 * (r.perplexity[1] / r.perplexity[0] - 1)
        lines.append(f"- perplexity: {r.perplexity[0]:.3f} -> {r.perplexity[1]:.3f} ({change:+.1f}%)")
    if r.recovered_perplexity is not None:
        lines.append(f"- after the recovery fine-tune: {r.recovered_perplexity:.3f}")
    if r.curve:
        lines += ["", "| amount | perplexity |", "|---:|---:|", *(f"| {a:.2f} | {p:.3f} |" for a, p in r.curve),
                  "", "![perplexity by amount](prune_curve.png)"]
    return "\n".join(lines) + "\n"
