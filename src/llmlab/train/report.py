"""What a finished (or stopped) run leaves to read: `loss.png` and `report.md` beside `metrics.jsonl`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from llmlab.files import atomic_path, write_text
from llmlab.progress import read_metrics


def plot_loss(metrics_path: Path, png_path: Path) -> bool:
    """Training loss per logged step and validation loss per evaluation; False when there is nothing to plot."""
    records = read_metrics(metrics_path) if metrics_path.exists() else []
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r and "step" in r]
    if not train and not val:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def plot_curves(metrics_path: Path, png_path: Path, keys: Sequence[str]) -> bool:
    """One panel per logged metric in `keys` (e.g. an RL run's reward, KL, entropy and clip fraction)
    against the optimizer step; False when none of them was logged."""
    records = read_metrics(metrics_path) if metrics_path.exists() else []
    series = {k: [(r["step"], r[k]) for r in records if k in r and "step" in r] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 3), dpi=120, squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items()):
        ax.plot(*zip(*points), linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"`{v}`" if isinstance(v, (list, dict)) else str(v)


def run_title(kind: str, out_dir: str | Path, stage: str) -> str:
    """"Pretraining report: demo" for runs/demo/pretrain: a stage's directory is named after the stage,
    so the run it belongs to is the name that tells one report from another."""
    path = Path(out_dir).resolve()
    run = path.parent.name if path.name == stage and path.parent.name else path.name
    return f"{kind} report: {run}"


def write_report(
    out_dir: Path,
    title: str,
    config: dict[str, Any],
    model: dict[str, Any],
    hardware: dict[str, Any],
    throughput: dict[str, Any],
    final: dict[str, Any],
    samples: list[tuple[str, str]] | None = None,
    notes: list[str] | None = None,
    curves: Sequence[str] = (),
) -> Path:
    """Write report.md (and loss.png, and curves.png of the `curves` metrics) into `out_dir`."""
    has_plot = plot_loss(out_dir / "metrics.jsonl", out_dir / "loss.png")
    has_curves = bool(curves) and plot_curves(out_dir / "metrics.jsonl", out_dir / "curves.png", curves)
    parts = [f"# {title}", "", f"Run directory: `{out_dir}`", ""]
    parts += ["## Final numbers", "", _table([(k, _fmt(v)) for k, v in final.items()]), ""]
    if has_plot:
        parts += ["![loss curve](loss.png)", ""]
    if has_curves:
        parts += ["![training curves](curves.png)", ""]
    parts += ["## Throughput", "", _table([(k, _fmt(v)) for k, v in throughput.items()]), ""]
    parts += ["## Model", "", _table([(k, _fmt(v)) for k, v in model.items()]), ""]
    parts += ["## Hardware", "", _table([(k, _fmt(v)) for k, v in hardware.items()]), ""]
    if samples:
        parts += ["## Samples", ""]
        for prompt, text in samples:
            parts += [f"**{prompt!r}** →", "", "```", (prompt + text).strip(), "```", ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    parts += ["## Configuration", "", _table([(k, _fmt(v)) for k, v in config.items()]), ""]
    path = out_dir / "report.md"
    write_text(path, "\n".join(parts))
    return path
