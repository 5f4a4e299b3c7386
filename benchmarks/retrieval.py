"""Benchmark: retrieval on Python's own documentation, and SmolLM2-135M's answers with and without it.

Builds a corpus of pydoc's plain-text page for each public standard-library module (the same
documentation the quickstart crawls), indexes it with `build_index`, and measures:

  index    chunks/s for embedding (all-MiniLM-L6-v2, torch, --dtype) and for BM25, from the build report;
  dtype    float32 vs bfloat16 embedding on --dtype-chunks of the index's chunks, alternating in one run:
           chunks/s of each, the speed-up, and the cosine between the two vectors of each chunk;
  recall   recall@1/5/10 of BM25, dense and hybrid on the quickstart's docstring questions
           (`build_instructions`), where a hit is any passage from the module's page;
  latency  query latency (median, p95) at ~100k chunks: the real chunks repeated with perturbed text
           and vectors (real vector + small noise, renormalised), written straight into a store;
  rag      SmolLM2-135M-Instruct on held-out (or, with --rag-split dev, training) docstring questions, greedy, without and with the top
           passages in the prompt: exact match and chrF as the quickstart's `evaluate` computes them.

    PYTHONPATH=src .venv/bin/python benchmarks/retrieval.py index dtype recall latency rag --rag-questions 100 --rag-variants 3:400,5:600 --rag-dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import random
import re
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from llmlab.retrieve import Embedder, Index, build_index, rag_messages
from llmlab.retrieve.chunking import DEFAULT_OVERLAP, DEFAULT_PIECES
from llmlab.retrieve.prompt import INSTRUCTION
from llmlab.retrieve.store import Store


def pydoc_corpus(out: Path) -> Path:
    """documents.parquet of pydoc's text page for each public stdlib module (cached in `out`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pydoc

    from llmlab.quickstart.instructions import _import_quietly
    from llmlab.quickstart.site import public_stdlib_modules

    path = out / "documents.parquet"
    if path.exists():
        return path
    rows = []
    for name in public_stdlib_modules():
        module = _import_quietly(name)
        if module is None:
            continue
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                text = pydoc.render_doc(module, renderer=pydoc.plaintext)
            except Exception:  # noqa: BLE001 - a module pydoc cannot render is left out
                continue
        rows.append({"text": text, "url": f"pydoc:{name}", "title": f"{name} module"})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def questions(documents: Path):
    import pyarrow.parquet as pq

    from llmlab.quickstart.instructions import build_instructions

    modules = [u.split(":", 1)[1] for u in pq.read_table(documents, columns=["url"]).column("url").to_pylist()]
    return build_instructions(modules, seed=0)


def dev_questions(train, n: int):
    """`n` training questions drawn with a fixed seed: a dev split that never touches the held-out ones."""
    return random.Random(1).sample(train, min(n, len(train)))


def bench_index(documents: Path, index_dir: Path, embedder: Embedder, chunk_tokens: int, overlap_tokens: int) -> dict:
    import shutil

    shutil.rmtree(index_dir, ignore_errors=True)
    return build_index(documents, index_dir, embedder=embedder, chunk_size=chunk_tokens, chunk_overlap=overlap_tokens)


def bench_dtype(index_dir: Path, n: int, rounds: int = 3) -> dict:
    """Embedding speed and agreement, float32 vs bfloat16, on `n` of the index's chunks: the two
    alternate round by round in one process, so both see the same machine load."""
    store = Store(index_dir)
    texts = [t for _, t in store.db.execute("SELECT id, text FROM chunks ORDER BY id")][:: max(1, store.count() // n)][:n]
    store.close()
    embedders = {d: Embedder(dtype=d) for d in ("float32", "bfloat16")}
    out: dict = {"chunks": len(texts), "rounds": rounds}
    speeds: dict = {d: [] for d in embedders}
    vectors = {}
    for _ in range(rounds):
        for dtype, embedder in embedders.items():
            started = time.perf_counter()
            vectors[dtype] = embedder.embed(texts)
            speeds[dtype].append(len(texts) / (time.perf_counter() - started))
    for dtype in embedders:
        out[f"{dtype}_chunks_per_s"] = [round(v, 1) for v in speeds[dtype]]
    out["bf16_speedup"] = [round(b / f, 2) for b, f in zip(speeds["bfloat16"], speeds["float32"])]
    cosine = (vectors["float32"] * vectors["bfloat16"]).sum(axis=1)
    out["cosine_min"], out["cosine_mean"] = round(float(cosine.min()), 5), round(float(cosine.mean()), 5)
    out["load_after"] = open("/proc/loadavg").read().split()[:3]
    return out


def bench_recall(index: Index, qas, ks=(1, 5, 10)) -> dict:
    out = {"questions": len(qas)}
    for mode in ("bm25", "dense", "hybrid"):
        hits = {k: 0 for k in ks}
        for qa in qas:
            gold = f"pydoc:{qa.subject.split('.')[0]}"
            urls = [p.url for p in index.search(qa.question, k=max(ks), mode=mode)]
            for k in ks:
                hits[k] += gold in urls[:k]
        out[mode] = {f"recall@{k}": round(hits[k] / len(qas), 3) for k in ks}
    return out


def bench_latency(index_dir: Path, work: Path, embedder: Embedder, target: int, queries: list[str]) -> dict:
    """Query latency on a store grown to `target` chunks from perturbed copies of the real ones."""
    import shutil

    from llmlab.retrieve.bm25 import Bm25
    from llmlab.retrieve.chunking import Chunk
    from llmlab.retrieve.store import BM25_DIR, replace_directory

    big = work / "index-100k"
    if not (big / "index.sqlite").exists():
        shutil.rmtree(big, ignore_errors=True)
        shutil.copytree(index_dir, big)
        store = Store(big)
        rows = list(store.db.execute("SELECT c.url, c.title, c.text, v.embedding FROM chunks c JOIN vectors v ON v.rowid = c.id"))
        rng = np.random.default_rng(0)
        copy, have = 0, len(rows)
        while have < target:
            copy += 1
            batch, vectors = [], []
            for url, title, text, blob in rows[: target - have]:
                words = text.split()
                rng.shuffle(words[: len(words) // 4])  # a perturbed copy: not identical text
                batch.append(Chunk(f"copy{copy}-{have + len(batch)}", f"{url}#copy{copy}", title, " ".join(words), 0))
                v = np.frombuffer(blob, dtype=np.float32) + rng.normal(0, 0.02, 384).astype(np.float32)
                vectors.append(v / np.linalg.norm(v))
            store.add(batch, np.stack(vectors))
            have += len(batch)
        store.bump_generation()
        started = time.perf_counter()
        bm25 = Bm25.build(store.texts())
        bm25_s = time.perf_counter() - started
        replace_directory(lambda tmp: bm25.save(tmp, store.generation), big / BM25_DIR)
        store.close()
        (work / "bm25-100k.json").write_text(json.dumps({"bm25_build_s": round(bm25_s, 2)}))
    started = time.perf_counter()
    index = Index.open(big, embedder=embedder)
    open_s = time.perf_counter() - started
    out = {"chunks": index.size, "open_s": round(open_s, 2), **json.loads((work / "bm25-100k.json").read_text())}
    # torch threads: on a loaded machine two threads that wait on each other cost more than they give
    # for a ten-token query, so the latency is measured with each.
    for threads in (2, 1):
        torch.set_num_threads(threads)
        row = out[f"{threads}_threads"] = {}
        for mode in ("bm25", "dense", "hybrid"):
            index.search(queries[0], k=5, mode=mode)  # warm up (the first dense search loads the vectors)
            times = []
            for q in queries:
                started = time.perf_counter()
                index.search(q, k=5, mode=mode)
                times.append((time.perf_counter() - started) * 1000)
            row[mode] = {"median_ms": round(statistics.median(times), 1),
                         "p95_ms": round(sorted(times)[int(0.95 * (len(times) - 1))], 1)}
        started = time.perf_counter()
        for q in queries:
            embedder.embed([q])
        row["query_embedding_ms"] = round((time.perf_counter() - started) * 1000 / len(queries), 1)
    torch.set_num_threads(2)
    return out


_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")


def _answer_all(engine, prompts: list[list[int]], params, refs: list[str]) -> tuple[dict, list[str]]:
    from llmlab.eval.text_metrics import chrf, exact_match

    started = time.perf_counter()
    answers = [c.text.strip() for c in engine.generate(prompts, params)]
    seconds = time.perf_counter() - started
    # The [n] markers are the citations the prompt asks for; the docstring reference has none.
    plain = [_CITATION.sub("", a).strip() for a in answers]
    return {
        "exact_match": round(sum(exact_match(a, r) for a, r in zip(plain, refs)) / len(refs), 3),
        "chrf": round(chrf(plain, refs), 2),
        "chrf_with_markers": round(chrf(answers, refs), 2),
        "seconds": round(seconds, 1),
        "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts)),
    }, answers


def bench_rag(index: Index, pool, n: int, variants: list[tuple[int, int]], instruction: str, dtype: str,
              threads: int, max_new_tokens: int = 48) -> dict:
    """chrF on the first `n` questions of `pool` without passages, then with the top k passages within `budget`
    tokens for each (k, budget)."""
    from llmlab.infer import Engine, SamplingParams, load_model
    from llmlab.infer.packed import pack_model, packing_available
    from llmlab.tokenizer.chat import render_chat

    qas = pool[:n]
    model, tok = load_model("smollm2-135m", dtype=torch.bfloat16 if dtype == "bf16" else None)
    if dtype == "bf16" and packing_available():
        pack_model(model)
    torch.set_num_threads(threads)  # one thread: greedy answers do not depend on it, and it is steadier under load
    engine = Engine(model, tok)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    refs = [qa.answer for qa in qas]
    limit = model.config.context_length - 1
    out: dict = {"questions": len(qas), "model_dtype": dtype, "threads": threads, "instruction": instruction,
                 "load_before": open("/proc/loadavg").read().split()[:3]}
    plain = [render_chat([{"role": "user", "content": qa.question}], tok, add_generation_prompt=True,
                         max_tokens=limit).ids for qa in qas]
    out["without"], without = _answer_all(engine, plain, params, refs)
    print(json.dumps({"without": out["without"]}), flush=True)
    found = {qa.question: index.search(qa.question, k=max(k for k, _ in variants)) for qa in qas}
    for k, budget in variants:
        prompts, used_counts = [], []
        for qa in qas:
            messages, used = rag_messages([{"role": "user", "content": qa.question}], found[qa.question][:k],
                                          lambda s: len(tok.encode_ordinary(s)), budget, instruction)
            used_counts.append(len(used))
            prompts.append(render_chat(messages, tok, add_generation_prompt=True, max_tokens=limit).ids)
        row, answers = _answer_all(engine, prompts, params, refs)
        row["mean_passages_used"] = round(sum(used_counts) / len(used_counts), 2)
        row["chrf_gain"] = round(row["chrf"] - out["without"]["chrf"], 2)
        out[f"with k={k} budget={budget}"] = row
        print(json.dumps({f"with k={k} budget={budget}": row}), flush=True)
    out["samples"] = [{"question": qa.question, "reference": qa.answer, "without": a, "with (last variant)": b}
                      for qa, a, b in list(zip(qas, without, answers))[:6]]
    out["load_after"] = open("/proc/loadavg").read().split()[:3]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="+", choices=["index", "dtype", "recall", "latency", "rag"])
    parser.add_argument("--dtype", default="auto", help="embedding dtype for the index part (auto, float32, bfloat16)")
    parser.add_argument("--dtype-chunks", type=int, default=300)
    parser.add_argument("--chunk-tokens", type=int, default=DEFAULT_PIECES, help="word pieces per chunk (index part)")
    parser.add_argument("--overlap-tokens", type=int, default=DEFAULT_OVERLAP)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for embedding (index, recall)")
    parser.add_argument("--work", default="/tmp/llmlab-bench-retrieval")
    parser.add_argument("--recall-questions", type=int, default=400)
    parser.add_argument("--latency-chunks", type=int, default=100_000)
    parser.add_argument("--rag-questions", type=int, default=10)
    parser.add_argument("--rag-split", choices=["held-out", "dev"], default="held-out",
                        help="dev: questions drawn (seeded) from the training questions, to choose settings on "
                             "before the held-out questions are answered once")
    parser.add_argument("--rag-variants", default="3:400",
                        help="comma-separated PASSAGES:TOKENS settings compared against one run without RAG")
    parser.add_argument("--rag-dtype", choices=["fp32", "bf16"], default="fp32", help="SmolLM2's precision")
    parser.add_argument("--rag-threads", type=int, default=1)
    parser.add_argument("--rag-instruction", default=INSTRUCTION)
    args = parser.parse_args()
    work = Path(args.work)
    torch.set_num_threads(args.threads)
    documents = pydoc_corpus(work)
    index_dir = work / "index"
    embedder = Embedder(dtype=args.dtype)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
                     "load": open("/proc/loadavg").read().split()[:3]}
    if "index" in args.parts or not (index_dir / "index.sqlite").exists():
        report = results["index"] = bench_index(documents, index_dir, embedder, args.chunk_tokens, args.overlap_tokens)
        print(json.dumps(report, indent=1), flush=True)
        print(f"embedding: {report['embed_chunks_per_s']} chunks/s, "
              f"{report['documents'] / report['embed_seconds']:.2f} docs/s ({report['new_chunks']} chunks of <= "
              f"{args.chunk_tokens} pieces, {report['dtype']}, {torch.get_num_threads()} torch threads, "
              f"load {' '.join(results['load'])} before, {' '.join(open('/proc/loadavg').read().split()[:3])} after)",
              flush=True)
    if "dtype" in args.parts:
        results["dtype"] = bench_dtype(index_dir, args.dtype_chunks)
        print(json.dumps(results["dtype"], indent=1), flush=True)
    index = Index.open(index_dir, embedder=embedder)
    train, held_out = questions(documents)
    if "recall" in args.parts:
        qas = random.Random(0).sample(train + held_out, min(args.recall_questions, len(train) + len(held_out)))
        results["recall"] = bench_recall(index, qas)
        print(json.dumps(results["recall"], indent=1), flush=True)
    if "latency" in args.parts:
        queries = [qa.question for qa in held_out[:100]]
        results["latency"] = bench_latency(index_dir, work, embedder, args.latency_chunks, queries)
        print(json.dumps(results["latency"], indent=1), flush=True)
    if "rag" in args.parts:
        variants = [tuple(int(x) for x in v.split(":")) for v in args.rag_variants.split(",")]
        qas = held_out if args.rag_split == "held-out" else dev_questions(train, args.rag_questions)
        results["rag"] = bench_rag(index, qas, args.rag_questions, variants, args.rag_instruction,
                                   args.rag_dtype, args.rag_threads)
        results["rag"]["split"] = args.rag_split
        print(json.dumps(results["rag"], indent=1), flush=True)
    (work / f"results-{'-'.join(args.parts)}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
