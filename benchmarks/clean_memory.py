"""Peak memory of `clean` as the corpus grows: streaming (llmlab's `clean`) against holding every
document in lists (`run_pipeline`, which collects what `clean` streams, as the runner used to).

    .venv/bin/python benchmarks/clean_memory.py [--scales 1 10] [--workers 2]

The corpus is benchmarks/clean.py's 468 pages (8.2 MB of HTML) in WARC shards, repeated `scale`
times with a distinct URL and a distinct closing paragraph per copy (so exact dedup keeps them and
MinHash removes them as near-duplicates, the way re-crawled pages are). The recipe is FineWeb's, all
steps including dedup and PII, with resiliparse extraction (trafilatura would only make it slower).
Each run is a fresh Python process started by a parent that stays small (on Linux a child's
`ru_maxrss` starts from its parent's); its peak RSS is `ru_maxrss` of the main process and of the
largest worker process. Target: peak RSS at 10x <= 1.2x the peak at 1x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import clean as clean_bench  # noqa: E402  (benchmarks/clean.py: the pages and the WARC writer)


def recipe():
    from llmlab.data.clean.pipeline import Recipe, load_recipe

    base = load_recipe("fineweb")
    steps = [(n, {**s, "extractor": "resiliparse"} if n == "extract" else s) for n, s in base.steps]
    return Recipe("fineweb-resiliparse", steps)


def child(mode: str, warc_dir: Path, out: Path, workers: int) -> None:
    warcs = sorted(warc_dir.glob("*.warc.gz"))
    start = time.perf_counter()
    if mode == "stream":
        from llmlab.data.clean.pipeline import clean

        report = clean(warcs, out, recipe(), workers=workers)
        kept = report["documents_out"]
    else:
        from llmlab.data.clean.pipeline import run_pipeline
        from llmlab.data.clean.readers import read_documents

        kept = len(run_pipeline(read_documents(warcs), recipe().build(), workers=workers).kept)
    seconds = time.perf_counter() - start
    main_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"main_mb": main_kb / 1024, "worker_mb": worker_kb / 1024, "seconds": seconds, "kept": kept}))


def build_corpus(folder: Path, scale: int, workers: int) -> int:
    pages = clean_bench.build_pages()
    copies = [
        (f"{url}?copy={k}" if k else url, html.replace("</body>", f"<p>Copy {k} of this page, kept on mirror {k * 7919 % 1000}.</p></body>"))
        for k in range(scale) for url, html in pages
    ]
    clean_bench.write_warc_shards(copies, folder, shards=max(2, workers))
    return len(copies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="/tmp/llmlab-bench-clean-memory", help="scratch directory")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "WARC_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.out)
    if args.child:
        if args.child[0] == "build":
            build_corpus(Path(args.child[1]), int(Path(args.child[1]).name[1:]), args.workers)
        else:
            child(args.child[0], Path(args.child[1]), work / f"out-{Path(args.child[1]).name}", args.workers)
        return
    os.environ.setdefault("LLMLAB_PROGRESS", "0")
    print(f"load {os.getloadavg()[0]:.1f}")
    results = {}
    for scale in args.scales:
        folder = work / f"x{scale}"
        if not folder.is_dir():
            # In a process of its own: a child's ru_maxrss starts from its parent's at fork, and
            # rendering the pages takes more memory than cleaning them.
            subprocess.run([sys.executable, __file__, "--child", "build", str(folder), "--workers", str(args.workers)], check=True)
        size = sum(p.stat().st_size for p in folder.glob("*.warc.gz")) / 1e6
        for mode in ("stream", "lists"):
            line = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(folder), "--out", str(work), "--workers", str(args.workers)],
                check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]
            results[(mode, scale)] = r = json.loads(line)
            print(f"{scale:3d}x ({size:6.1f} MB of WARC) {mode:6s}: peak RSS main {r['main_mb']:7.1f} MB, "
                  f"largest worker {r['worker_mb']:6.1f} MB, {r['seconds']:6.1f} s, kept {r['kept']}")
    print(f"machine: {clean_bench.machine()}")  # imports torch: only after the children ran
    lo, hi = min(args.scales), max(args.scales)
    for mode in ("stream", "lists"):
        ratio = results[(mode, hi)]["main_mb"] / results[(mode, lo)]["main_mb"]
        print(f"{mode}: peak RSS of the main process at {hi}x / {lo}x = {ratio:.2f}" + ("  (target <= 1.2)" if mode == "stream" else ""))


if __name__ == "__main__":
    main()
