"""One progress bar and metrics log for every long job.

`Progress` shows a bar with rate and ETA (through tqdm) and, when given a path, appends each metrics
update as one JSON line, so a run leaves a machine-readable record next to what the user watched.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3) and math.isfinite(value):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


class MetricsLog:
    """Append-only JSONL file; each record gets a wall-clock `time` field."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, **record: Any) -> None:
        record.setdefault("time", round(time.time(), 3))
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL metrics file, skipping a torn last line left by a killed process."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class Progress:
    """A progress bar with rate and ETA, plus an optional JSONL metrics log.

    Usage::

        with Progress(total=steps, desc="train", unit="step", metrics_path=run / "metrics.jsonl") as p:
            p.update(1, loss=2.31, lr=3e-4)
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        metrics_path: str | os.PathLike | None = None,
        disable: bool | None = None,
        bar_format: str | None = None,
    ) -> None:
        if disable is None:
            disable = os.environ.get("LLMLAB_PROGRESS", "1") == "0"
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            initial=initial,
            disable=disable,
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 10.0,
            file=sys.stderr,
            bar_format=bar_format,
        )
        self.metrics = MetricsLog(metrics_path) if metrics_path else None

    def update(self, n: int = 1, **metrics: Any) -> None:
        """Advance by `n`; show `metrics` beside the bar and append them to the log."""
        if metrics:
            self.bar.set_postfix({k: _fmt(v) for k, v in metrics.items()}, refresh=False)
            if self.metrics:
                self.metrics.write(**metrics)
        self.bar.update(n)

    def record(self, **metrics: Any) -> None:
        """Show `metrics` beside the bar and append them to the log, without moving the bar."""
        self.bar.set_postfix({k: _fmt(v) for k, v in metrics.items()}, refresh=False)
        if self.metrics:
            self.metrics.write(**metrics)

    def log(self, **metrics: Any) -> None:
        """Record metrics without moving the bar (e.g. an evaluation between steps)."""
        if self.metrics:
            self.metrics.write(**metrics)
        self.bar.write("  ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))

    def close(self) -> None:
        self.bar.close()
        if self.metrics:
            self.metrics.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
