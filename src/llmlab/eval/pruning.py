"""`llmlab prune`: prune a model, measure what it cost, save the smaller (or sparser) checkpoint.

The perplexity on the given texts is measured before and after, and optionally along a sweep of
amounts (the sparsity -> perplexity curve, as PNG). Structured pruning can be followed by a short
recovery fine-tune on token shards (the ordinary pretraining loop, started from the pruned model);
unstructured pruning cannot, since training would refill the zeros.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from llmlab.errors import ConfigError
from llmlab.eval.models import LanguageModel
from llmlab.eval.perplexity import perplexity
from llmlab.files import atomic_path, write_json, write_text
from llmlab.model import GPT
from llmlab.model.checkpoint import save_checkpoint
from llmlab.model.prune import input_norms, magnitude_prune, prune_heads, prune_neurons, sparsity, wanda_prune

METHODS = ("magnitude", "magnitude-layer", "wanda", "neurons", "heads")
UNSTRUCTURED = ("magnitude", "magnitude-layer", "wanda")


def calibration_batches(tokenizer: Any, texts: list[str], window: int, n: int = 16) -> list[torch.Tensor]:
    """Up to `n` windows of `window` token ids cut from `texts`, for `input_norms`."""
    ids = [i for text in texts for i in tokenizer.encode_ordinary(text)]
    windows = [ids[s : s + window] for s in range(0, len(ids) - window + 1, window)][:n]
    if not windows:
        raise ConfigError(f"the calibration texts hold fewer than {window} tokens", hint="pass more text (--calibrate)")
    return [torch.tensor([w]) for w in windows]


def apply(model: GPT, method: str, amount: float, norms: dict[str, torch.Tensor] | None = None) -> tuple[GPT, dict[str, Any]]:
    """The pruned model (a copy for unstructured pruning too) and what was removed; `norms` (from
    `input_norms` on calibration text) are required by wanda and sharpen neurons and heads."""
    if method not in METHODS:
        raise ConfigError(f"method={method!r}; choose one of {', '.join(METHODS)}")
    if method == "wanda" and norms is None:
        raise ConfigError("wanda scores weights by their inputs on calibration text", hint="pass --calibrate FILE")
    try:
        if method in UNSTRUCTURED:
            pruned = copy.deepcopy(model)
            if method == "wanda":
                stats = wanda_prune(pruned, amount, norms)
            else:
                stats = magnitude_prune(pruned, amount, "layer" if method == "magnitude-layer" else "global")
            return pruned, {"sparsity": stats["all"]}
        pruned, info = (prune_neurons if method == "neurons" else prune_heads)(model, amount, norms)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return pruned, {k: v for k, v in info.items() if k != "kept_per_layer"}


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
    recover: Callable[[Path], GPT] | None = None, calibration: list[str] | None = None,
) -> PruneResult:
    """Prune `model`, write the checkpoint, report.md and (with `sweep`) prune_curve.png into `out`.
    `calibration` texts give the activation statistics (wanda; optional for neurons and heads)."""
    if recover is not None and method in UNSTRUCTURED:
        raise ConfigError("a recovery fine-tune would refill the zeros of unstructured pruning",
                          hint="recover after --method neurons or heads")
    norms = None
    if calibration:
        window = min(256, model.config.context_length)
        norms = input_norms(model, calibration_batches(tokenizer, calibration, window))
    out = Path(out)

    def ppl(m: GPT) -> float:
        lm = LanguageModel(model=m.eval(), tokenizer=tokenizer, name=name)
        return perplexity(lm, texts, show_progress=False).perplexity

    pruned, removed = apply(model, method, amount, norms)
    result = PruneResult(method, amount, (model.num_params(), pruned.num_params()), sparsity(pruned), removed=removed,
                         calibrated=norms is not None)
    if texts:
        result.perplexity = (ppl(model), ppl(pruned))
        for a in sweep or []:
            result.curve.append((a, result.perplexity[0] if a == 0 else ppl(apply(model, method, a, norms)[0])))
    tokenizer_file = out / "tokenizer.json"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(tokenizer_file)
    save_checkpoint(out, pruned, tokenizer_file=tokenizer_file,
                    metadata={"pruned": {"from": name, "method": method, "amount": amount, **removed}})
    if recover is not None:
        recovered = recover(out)
        if texts:
            result.recovered_perplexity = ppl(recovered)
    if result.curve:
        _plot(result, out / "prune_curve.png")
    write_json(out / "prune.json", {**result.__dict__})
    write_text(out / "report.md", _report(result, name))
    return result


def _plot(result: PruneResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = zip(*result.curve)
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel("fraction pruned" + (" (sparsity)" if result.method in UNSTRUCTURED else f" ({result.method})"))
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.set_title(f"{result.method} pruning")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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
