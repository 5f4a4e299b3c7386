"""Load check for `llmlab serve`: many concurrent streaming clients against a tiny model.

Starts `llmlab serve` in its own process on 127.0.0.1 with a tiny random-weight checkpoint, then opens
`--clients` streaming chat completions at once (each `--tokens` tokens, ignore_eos so every answer has
the same length). Checks that every stream completes (all tokens, finish_reason, `data: [DONE]`, no
error), and reports time to first token (p50/p95), per-request time and aggregate tokens/s. The peer is
the same engine without a server: the same requests run one after another through `Engine.generate`,
so the ratio shows what serving (HTTP, SSE, queueing) costs or gains.

    python benchmarks/serve_load.py                 # 32 clients x 64 tokens
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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


def direct_engine(checkpoint: Path, clients: int, tokens: int) -> float:
    """Seconds for the same requests through Engine.generate, one after another, no server."""
    from llmlab.infer import Engine, SamplingParams, load_model
    from llmlab.tokenizer.chat import render_chat

    model, tok = load_model(checkpoint)
    engine = Engine(model, tok)
    start = time.perf_counter()
    for i in range(clients):
        ids = render_chat([{"role": "user", "content": f"Request {i}: tell me a story."}], tok,
                          add_generation_prompt=True).ids
        engine.generate([ids], SamplingParams(max_new_tokens=tokens, temperature=1.0, seed=i, ignore_eos=True))
    return time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent streaming clients (default 32)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer (default 64)")
    parser.add_argument("--max-concurrent", type=int, default=2, help="server's generations at once (default 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, the same for server and peer (default 1: fastest for a tiny model)")
    args = parser.parse_args()

    from llmlab.serve.tiny import make_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_tiny_checkpoint(Path(tmp) / "tiny")
        port = free_port()
        cmd = [sys.executable, "-m", "llmlab", "serve", "--checkpoint", f"tiny={checkpoint}", "--no-smollm2",
               "--port", str(port), "--history", str(Path(tmp) / "h.sqlite"),
               "--max-concurrent", str(args.max_concurrent), "--max-queued", str(args.clients),
               "--threads", str(args.threads)]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "LLMLAB_PROGRESS": "0"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    print("the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            asyncio.run(load(url, 2, 4))  # warm up (first forward passes, connections)
            results, wall = asyncio.run(load(url, args.clients, args.tokens))
            stats = httpx.get(url + "/api/status").json()["worker"]
        finally:
            server.terminate()
            server.wait(timeout=10)
        torch.set_num_threads(args.threads)
        direct = direct_engine(checkpoint, args.clients, args.tokens)

    ok = [r for r in results if r["ok"]]
    ttft = sorted(r["ttft"] * 1000 for r in ok)
    total_tokens = sum(r["tokens"] for r in ok)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"load: {args.clients} concurrent streaming clients x {args.tokens} tokens, tiny model, "
          f"server max_concurrent={args.max_concurrent}, torch threads {args.threads}")
    print(f"completed: {len(ok)}/{args.clients}  dropped or failed: {args.clients - len(ok)}  "
          f"server: completed {stats['completed']}, failed {stats['failed']}, rejected {stats['rejected']}")
    if ttft:
        print(f"time to first token: p50 {pct(ttft, 50):.0f} ms  p95 {pct(ttft, 95):.0f} ms  max {ttft[-1]:.0f} ms")
        print(f"request time: p50 {pct(sorted(r['total'] * 1000 for r in ok), 50):.0f} ms  wall {wall:.2f} s")
    server_tps, direct_tps = total_tokens / wall, args.clients * args.tokens / direct
    print(f"aggregate: server {server_tps:.0f} tokens/s  vs  Engine.generate one by one {direct_tps:.0f} tokens/s "
          f"(ratio {server_tps / direct_tps:.2f}x)")
    verdict = "PASS" if len(ok) == args.clients else "FAIL"
    print(f"verdict: {verdict} (target: all {args.clients} complete, none dropped)")
    for r in results:
        if not r["ok"]:
            print("  failed:", r)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
