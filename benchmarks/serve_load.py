"""Load check for `llmlab serve`: 1, 8, 32 and 64 concurrent streaming clients against a tiny model.

Starts `llmlab serve` in its own process on 127.0.0.1 with a tiny random-weight checkpoint, then at each
load level opens that many streaming chat completions at once (each `--tokens` tokens, ignore_eos so
every answer has the same length). Checks that every stream completes (all tokens, finish_reason,
`data: [DONE]`, no error) and reports, per level, aggregate tokens/s (all tokens / wall time) and time
to first token p50/p95.

The peer is the same server built from another source tree (`--baseline-src`, e.g. the main checkout
before continuous batching, with its own flags in `--baseline-args`): both servers run side by side and
each round of each level runs on one then the other, alternating which goes first, so machine noise
lands on both. Aggregate tokens/s is the median over `--rounds`; TTFT percentiles pool every round.

    python benchmarks/serve_load.py                                   # this tree only
    python benchmarks/serve_load.py --baseline-src ../main/src --baseline-args="--max-concurrent 2"

Target (docs/benchmarks.md): 32 streams >= 4x one stream's aggregate tokens/s, none dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from machine import cpu_name  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_client(http: httpx.AsyncClient, i: int, tokens: int) -> dict:
    body = {"model": "tiny", "messages": [{"role": "user", "content": f"Request {i}: tell me a story."}],
            "max_tokens": tokens, "stream": True, "seed": i, "temperature": 1.0, "ignore_eos": True}
    start = time.perf_counter()
    first, got, finish, done, error = None, 0, None, False, None
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"ok": False, "error": f"HTTP {r.status_code}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                error = chunk["error"]["message"]
                continue
            for c in chunk["choices"]:
                if c.get("finish_reason"):
                    finish = c["finish_reason"]
                elif "content" in c.get("delta", {}) and "role" not in c["delta"]:
                    got += 1
                    first = first or time.perf_counter()
    end = time.perf_counter()
    ok = done and error is None and got == tokens and finish == "length"
    return {"ok": ok, "ttft": (first or end) - start, "total": end - start, "tokens": got, "error": error}


async def load(url: str, clients: int, tokens: int) -> tuple[list[dict], float]:
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(http, i, tokens) for i in range(clients)))
        return results, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def start_server(src: str, extra: list[str], checkpoint: Path, tmp: Path, name: str,
                 threads: int) -> tuple[subprocess.Popen, str]:
    """`llmlab serve` from source tree `src` on a free port; returns the process and its URL once healthy."""
    port = free_port()
    cmd = [sys.executable, "-m", "llmlab", "serve", "--checkpoint", f"tiny={checkpoint}", "--no-smollm2",
           "--port", str(port), "--history", str(tmp / f"{name}.sqlite"), "--threads", str(threads), *extra]
    env = {**os.environ, "LLMLAB_PROGRESS": "0", "PYTHONPATH": src, "OMP_WAIT_POLICY": "PASSIVE"}
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.terminate()
            raise SystemExit(f"the {name} server did not start: {' '.join(cmd)}")
        time.sleep(0.2)


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux), to see that serving many requests does not grow it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summary(rounds: list[tuple[list[dict], float]]) -> dict:
    """Median aggregate tokens/s over rounds; TTFT p50/p95 over every request of every round."""
    results = [r for rs, _ in rounds for r in rs]
    ok = [r for r in results if r["ok"]]
    ttft = sorted(r["ttft"] * 1000 for r in ok) or [float("nan")]
    tps = statistics.median(sum(r["tokens"] for r in rs if r["ok"]) / wall for rs, wall in rounds)
    return {"ok": len(ok), "requests": len(results), "tps": tps,
            "p50": pct(ttft, 50), "p95": pct(ttft, 95), "failed": [r for r in results if not r["ok"]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,8,32,64", help="load levels: concurrent streams (default 1,8,32,64)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per load level and server (default 5)")
    parser.add_argument("--server-args", default="--max-batch 64",
                        help="extra `llmlab serve` flags for this tree's server (default '--max-batch 64')")
    parser.add_argument("--baseline-src", default=None, help="a source tree (its src/) to serve as the peer")
    parser.add_argument("--baseline-args", default="", help="extra `llmlab serve` flags for the peer's server")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each server (default 1: fastest for a tiny model)")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    from llmlab.serve.tiny import make_tiny_checkpoint

    here = str(Path(__file__).resolve().parents[1] / "src")
    sides = {"llmlab": (here, args.server_args.split())}
    if args.baseline_src:
        sides["baseline"] = (str(Path(args.baseline_src).resolve()), args.baseline_args.split())
    queued = ["--max-queued", str(max(levels))]
    table: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_tiny_checkpoint(Path(tmp) / "tiny")
        servers = {name: start_server(src, extra + queued, checkpoint, Path(tmp), name, args.threads)
                   for name, (src, extra) in sides.items()}
        try:
            for name, (_, url) in servers.items():
                asyncio.run(load(url, max(levels), 4))  # warm up (first forward passes, connections, rows)
            memory = {name: [rss_mib(server.pid)] for name, (server, _) in servers.items()}
            for clients in levels:
                rounds: dict[str, list] = {name: [] for name in servers}
                order = list(servers.items())
                for i in range(args.rounds):
                    for name, (_, url) in order if i % 2 == 0 else order[::-1]:
                        rounds[name].append(asyncio.run(load(url, clients, args.tokens)))
                for name in servers:
                    s = table[name, clients] = summary(rounds[name])
                    print(f"  {name:8s} {clients:3d} streams: {s['ok']}/{s['requests']} ok, {s['tps']:.0f} tok/s, "
                          f"TTFT p50 {s['p50']:.0f} ms p95 {s['p95']:.0f} ms", flush=True)
            for name, (server, _) in servers.items():
                memory[name].append(rss_mib(server.pid))
        finally:
            for server, _ in servers.values():
                server.terminate()
                server.wait(timeout=10)

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"load: streaming clients x {args.tokens} tokens, {args.rounds} rounds, tiny model, "
          f"torch threads {args.threads}; "
          + "; ".join(f"{name}: `llmlab serve {' '.join(extra)}`" for name, (_, extra) in sides.items()))
    names = list(sides)
    requests = args.rounds * sum(levels)
    for name in names:
        print(f"{name} server memory: {memory[name][0]:.0f} MiB after warm-up, {memory[name][1]:.0f} MiB after "
              f"{requests} more requests")
    print("| streams | " + " | ".join(f"{n} tok/s | {n} TTFT p50 / p95 ms" for n in names)
          + (" | llmlab / baseline tok/s |" if len(names) > 1 else " |"))
    print("|---:|" + "---:|---:|" * len(names) + ("---:|" if len(names) > 1 else ""))
    for clients in levels:
        cells = [f"{table[n, clients]['tps']:.0f} | {table[n, clients]['p50']:.0f} / {table[n, clients]['p95']:.0f}"
                 for n in names]
        ratio = f" | {table['llmlab', clients]['tps'] / table['baseline', clients]['tps']:.2f}x" if len(names) > 1 else ""
        print(f"| {clients} | " + " | ".join(cells) + ratio + " |")
    complete = all(s["ok"] == s["requests"] for s in table.values())
    for (name, clients), s in table.items():
        for r in s["failed"]:
            print(f"  failed ({name}, {clients} streams):", r)
    verdict = complete
    if 1 in levels and 32 in levels:
        scale = table["llmlab", 32]["tps"] / table["llmlab", 1]["tps"]
        print(f"llmlab 32 streams / 1 stream aggregate: {scale:.2f}x (target >= 4x)")
        verdict = verdict and scale >= 4
    print(f"verdict: {'PASS' if verdict else 'FAIL'} (every stream complete at every level"
          + (", 32 streams >= 4x one)" if 32 in levels and 1 in levels else ")"))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
