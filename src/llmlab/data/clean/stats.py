"""The cleaning report: documents and characters in/out per step, removal reasons, language mix, lengths.

`stats.json` is for programs (the quickstart reads it), `stats.md` for people, `lengths.png` shows the
distribution of kept document lengths.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmlab.data.clean.documents import Document
from llmlab.files import atomic_path, write_json, write_text


@dataclass
class StepStats:
    """Counters for one step, summed over batches (and workers)."""

    name: str
    kind: str
    docs_in: int = 0
    docs_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    seconds: float = 0.0
    reasons: Counter = field(default_factory=Counter)

    def add(self, other: "StepStats") -> None:
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.chars_in += other.chars_in
        self.chars_out += other.chars_out
        self.seconds += other.seconds
        self.reasons.update(other.reasons)


def doc_chars(doc: Document) -> int:
    """Characters a document carries: its HTML before extraction, its text after."""
    return len(doc.html) if doc.html is not None else len(doc.text)


@dataclass
class KeptSummary:
    """What the report needs of the kept documents, gathered as they are written (never all of them)."""

    lengths: list[int] = field(default_factory=list)
    languages: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)

    def add(self, docs: list[Document]) -> None:
        for d in docs:
            self.lengths.append(len(d.text))
            self.languages[d.metadata.get("language", "unknown")] += 1
            self.pii.update(d.metadata.get("pii", {}))


def build_report(recipe: str, inputs: list[str], steps: list[StepStats], kept: KeptSummary, seconds: float) -> dict:
    lengths = sorted(kept.lengths)
    docs_in = steps[0].docs_in if steps else len(lengths)
    return {
        "recipe": recipe,
        "inputs": inputs,
        "documents_in": docs_in,
        "documents_out": len(lengths),
        "characters_out": sum(lengths),
        "seconds": round(seconds, 3),
        "documents_per_second": round(docs_in / seconds, 2) if seconds > 0 else None,
        "steps": [{**asdict(s), "seconds": round(s.seconds, 3), "reasons": dict(s.reasons.most_common())} for s in steps],
        "languages": dict(kept.languages.most_common()),
        "length_percentiles": {
            f"p{q}": lengths[min(len(lengths) - 1, int(q / 100 * len(lengths)))] if lengths else 0
            for q in (10, 50, 90, 99)
        },
        "pii_redactions": dict(kept.pii),
    }


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render_markdown(report: dict) -> str:
    lines = [
        f"# Cleaning report ({report['recipe']} recipe)",
        "",
        f"{report['documents_in']} documents in, {report['documents_out']} kept "
        f"({_pct(report['documents_out'], report['documents_in'])}), {report['characters_out']:,} characters of text, "
        f"{report['seconds']} s ({report['documents_per_second']} documents/s).",
        "",
        "| step | kind | docs in | docs out | kept | chars in | chars out | seconds | top reasons |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in report["steps"]:
        reasons = ", ".join(f"{r} {n}" for r, n in list(s["reasons"].items())[:4]) or "-"
        lines.append(
            f"| {s['name']} | {s['kind']} | {s['docs_in']} | {s['docs_out']} | {_pct(s['docs_out'], s['docs_in'])} | "
            f"{s['chars_in']:,} | {s['chars_out']:,} | {s['seconds']} | {reasons} |"
        )
    lines += ["", "Characters are HTML before extraction and text after it.", "", "## Languages of kept documents", ""]
    lines += [f"- {lang}: {n}" for lang, n in report["languages"].items()] or ["- none"]
    lines += ["", "## Kept document lengths (characters)", ""]
    lines += [", ".join(f"{k} {v:,}" for k, v in report["length_percentiles"].items()), "", "![lengths](lengths.png)"]
    problems = report.get("input_problems", {}).get("counts")
    if problems:
        lines += ["", "## Damaged input skipped (--skip-bad-input)", ""] + [f"- {k}: {v}" for k, v in problems.items()]
    if report["pii_redactions"]:
        lines += ["", "## PII redactions", ""] + [f"- {k}: {v}" for k, v in report["pii_redactions"].items()]
    lines += ["", "Every removed document is in `removed.parquet` with its step and reason.", ""]
    return "\n".join(lines)


def plot_lengths(kept_lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [max(1, n) for n in kept_lengths]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if lengths:
        top = math.log10(max(lengths)) + 0.1
        bins = [10 ** (i * top / 40) for i in range(41)]
        ax.hist(lengths, bins=bins, color="#4c72b0")
        ax.set_xscale("log")
    ax.set_xlabel("characters per kept document")
    ax.set_ylabel("documents")
    ax.set_title(f"{len(lengths)} kept documents")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_report(out_dir: Path, report: dict, kept: KeptSummary) -> None:
    write_json(out_dir / "stats.json", report)
    write_text(out_dir / "stats.md", render_markdown(report))
    plot_lengths(kept.lengths, out_dir / "lengths.png")
