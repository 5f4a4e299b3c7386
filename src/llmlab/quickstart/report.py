"""The quickstart's report: one markdown page with the headline numbers, timings and pictures."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from llmlab.files import RunDir, atomic_path, write_text  # noqa: E402
from llmlab.progress import read_metrics  # noqa: E402


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return lines + [""]


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _save(fig, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def plot_losses(run: RunDir, path: Path) -> str | None:
    panels = [(name, d / "metrics.jsonl") for name, d in (("pretraining", run.pretrain), ("SFT", run.sft))]
    panels = [(n, p) for n, p in panels if p.exists()]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (name, p) in zip(axes[0], panels):
        records = read_metrics(p)
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
        if train:
            ax.plot(*zip(*train), label="train", lw=1.2)
        if val:
            ax.plot(*zip(*val), "o-", label="validation", lw=1.2)
        ax.set(title=f"{name} loss", xlabel="step", ylabel="cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_cleaning(steps: list[dict[str, Any]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(steps) + 1.2))
    names = [s["step"] for s in steps][::-1]
    ax.barh(names, [s["in"] for s in steps][::-1], color="#d9d9d9", label="documents in")
    ax.barh(names, [s["out"] for s in steps][::-1], color="#3b7dd8", label="documents kept")
    ax.set(title="Cleaning, step by step", xlabel="documents")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_tokenizers(rows: list[dict[str, Any]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    names = [r["name"] for r in rows][::-1]
    ax.barh(names, [r["chars_per_token"] for r in rows][::-1], color="#5aa469")
    for y, r in enumerate(rows[::-1]):
        ax.text(r["chars_per_token"], y, f"  vocab {r['vocab_size']:,}, unk {r['unknown_rate']:.1%}", va="center", fontsize=8)
    ax.set(title="Characters per token on held-out documentation (higher = shorter sequences)", xlabel="chars/token")
    ax.set_xlim(0, max(r["chars_per_token"] for r in rows) * 1.6)
    return _save(fig, path)


def write_report(run: RunDir, state: dict[str, Any]) -> Path:
    stages = {k: v["summary"] for k, v in state["stages"].items()}
    seconds = {k: v["seconds"] for k, v in state["stages"].items()}
    figures = run.root / "figures"
    lines = [
        "# llmlab quickstart report",
        "",
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {platform.node() or 'this machine'} "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}. "
        f"Stages took {sum(seconds.values()) / 60:.1f} minutes in all.",
        "",
        "## Time per stage",
        "",
        *_table(("stage", "seconds"), [(k, f"{v:.0f}") for k, v in seconds.items()]),
    ]
    if "crawl" in stages:
        c = stages["crawl"]
        lines += ["## Crawl", "", f"Crawled {c['start_url']}: **{c['pages_stored']} pages** stored "
                  f"({c['bytes_stored']:,} bytes), URLs by state {c['urls_by_state']}. Details: `crawl/report.md`.", ""]
    if "clean" in stages:
        c = stages["clean"]
        lines += ["## Cleaning", "",
                  f"Recipe `{c['recipe']}`: {c['documents_in']} pages in, **{c['documents_out']} documents** "
                  f"({c['characters_out']:,} characters) out. Details: `clean/stats.md`.", "",
                  f"![cleaning]({'figures/' + plot_cleaning(c['steps'], figures / 'cleaning.png')})", "",
                  f"Of the {c['quality_candidates']} extracted pages that reached the quality filters, each recipe's "
                  "quality rules would keep:", "",
                  *_table(("recipe", "kept"), list(c["recipes_would_keep"].items()))]
    if "tokenizer" in stages:
        t = stages["tokenizer"]
        rows = t["comparison"]
        lines += ["## Tokenizer", "", f"Byte-level BPE with {t['vocab_size']:,} tokens; the shards hold "
                  f"**{t['tokens']:,} tokens** from {t['documents']} documents.", "",
                  *_table(("tokenizer", "vocab", "tokens", "chars/token", "unknown rate"),
                          [(r["name"], f"{r['vocab_size']:,}", f"{r['tokens']:,}", f"{r['chars_per_token']:.2f}",
                            f"{r['unknown_rate']:.2%}") for r in rows]),
                  f"![tokenizers]({'figures/' + plot_tokenizers(rows, figures / 'tokenizers.png')})", ""]
    if "pretrain" in stages:
        p = stages["pretrain"]
        final = p["final"]
        lines += ["## Pretraining", "",
                  f"Model: depth {p['depth']}, **{p['parameters']:,} parameters** ({p['sizing']}). "
                  f"{p['steps']} steps, {p['tokens_seen']:,} tokens ({p['tokens_seen'] / max(1, p['corpus_tokens']):.1f} "
                  f"passes over the corpus) at {p['tokens_per_second']:,} tokens/s.", "",
                  *_table(("validation loss", "perplexity", "bits per byte"),
                          [(_fmt(final.get("val_loss")), _fmt(final.get("val_ppl")), _fmt(final.get("val_bpb")))]),
                  "Details: `pretrain/report.md`.", ""]
        samples = p.get("samples") or []
        for prompt, text in samples.items() if isinstance(samples, dict) else samples:
            lines += [f"- `{prompt!r}` → `{text!r}`"]
        lines += [""]
    losses = plot_losses(run, figures / "loss.png")
    if losses:
        lines += [f"![loss curves](figures/{losses})", ""]
    if "sft" in stages:
        s = stages["sft"]
        lines += ["## Supervised fine-tuning", "",
                  f"{s['train_questions']} docstring questions (held out: {s['held_out_questions']}), {s['steps']} steps; "
                  f"final validation loss {_fmt(s['final'].get('val_loss'))}. Details: `sft/report.md`.", ""]
    if "eval" in stages:
        e = stages["eval"]
        labels = [k for k in e if k.startswith(("before", "after"))]
        lines += ["## Evaluation on held-out questions", "",
                  *_table(("model", "exact match", "BLEU", "chrF"),
                          [(k, f"{e[k]['exact_match']:.1%}", f"{e[k]['bleu']:.1f}", f"{e[k]['chrf']:.1f}") for k in labels]),
                  "### Sample answers", "",
                  *_table(("question", "reference", "before SFT", "after SFT"),
                          [(s["question"], s["reference"], s["before"][:120], s["after"][:120]) for s in e["samples"]])]
    if "index" in stages:
        i = stages["index"]
        lines += ["## Retrieval index", "",
                  f"{i['documents']} cleaned pages in {i['chunks']} passages of at most {i['chunk_size']} word pieces "
                  f"(BM25 + {i['model']} embeddings, {_fmt(i['embed_chunks_per_s'])} passages/s): `index/`.", ""]
    rag = stages.get("rag", {})
    if "rag" in rag:
        lines += ["## Answers from the crawl (RAG)", "",
                  f"SmolLM2-135M-Instruct on {rag['questions']} held-out questions, alone and with the index's best "
                  f"{rag['passages']} passages (at most {rag['passage_tokens']} tokens) before each question.", "",
                  *_table(("SmolLM2-135M", "exact match", "BLEU", "chrF"),
                          [(label, f"{rag[k]['exact_match']:.1%}", f"{rag[k]['bleu']:.1f}", f"{rag[k]['chrf']:.1f}")
                           for label, k in (("alone", "alone"), ("with RAG", "rag"))]),
                  *_table(("question", "reference", "alone", "with RAG", "sources"),
                          [(s["question"], s["reference"], s["alone"][:120], s["rag"][:160], " ".join(s["sources"]))
                           for s in rag["samples"]])]
    elif "skipped" in rag:
        lines += ["## Answers from the crawl (RAG)", "", f"Skipped: {rag['skipped']}.", ""]
    lines += ["## Try it", "", f"`llmlab serve --models {run.root} --index quickstart={run.root / 'index'}` (the "
              "quickstart starts it unless `--no-serve`; the playground opens on SmolLM2-135M answering from the "
              f"index), `llmlab chat smollm2-135m --index {run.root / 'index'}`, or `llmlab chat {run.sft}`.", ""]
    write_text(run.report, "\n".join(lines))
    return run.report
