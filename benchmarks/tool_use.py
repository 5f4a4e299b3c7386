"""Arithmetic accuracy of SmolLM2-135M-Instruct with and without the calculator tool.

Seeded multi-digit word problems (+, -, x on 3- and 4-digit numbers), greedy decoding. Conditions:

- `no tools`: the question alone; the answer's last number is scored.
- `calculator`: the calculator listed in the system turn (the Hermes/Qwen2.5 tool format); the model
  may call it, llmlab runs it and feeds the result back (at most 2 rounds).
- `calculator, call forced`: the answer is started with `<tool_call>` and decoded under the call
  grammar (what the API's `tool_choice: "required"` does), so the first reply is one valid call unless
  max_new_tokens cuts it.
- `calculator, named call forced`: the answer is started with `<tool_call>` and the calculator's name
  (the API's named `tool_choice`); the model writes only the arguments, an object with an expression.

With llguidance installed every answer with tools is decoded as the product decodes it: free text in
which any call the model opens is a valid call (`infer/constrained.tool_call_grammar`).
- `calculator + one-shot`: the same, after one worked example exchange (question, call, result, answer)
  in the conversation, to show the 135M model the format.

Printed per condition: accuracy, the share of problems where the model emitted a well-formed call,
and the share where a call computed the right value. The sessions of one condition advance in
lockstep, one batched `Engine.generate` per round.

    .venv/bin/python benchmarks/tool_use.py            # 50 problems, ~10 minutes on 2 cores
    .venv/bin/python benchmarks/tool_use.py -n 10      # a quick look
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time

import torch

from llmlab.tokenizer.chat_tools import CALL_OPEN

TEMPLATES = {
    "+": "A shop sold {a} apples on Monday and {b} apples on Tuesday. How many apples did it sell in total?",
    "-": "A library had {a} books and lent out {b} of them. How many books are left in the library?",
    "*": "A farm packs {a} boxes with {b} eggs in each box. How many eggs does it pack?",
}
ONE_SHOT = [
    {"role": "user", "content": "A school has 418 students in each of 27 classes. How many students are there?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": {"expression": "418 * 27"}}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": "11286"},
    {"role": "assistant", "content": "There are 11286 students."},
]


def problems(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(100, 999), rng.randint(11, 99)
        else:
            a, b = sorted((rng.randint(1000, 9999), rng.randint(100, 9999)), reverse=True)
        out.append((TEMPLATES[op].format(a=a, b=b), {"+": a + b, "-": a - b, "*": a * b}[op]))
    return out


def last_number(text: str) -> int | None:
    found = re.findall(r"-?\d[\d,]*", text)
    return int(found[-1].replace(",", "")) if found else None


FORCED = {None: "", "required": CALL_OPEN + "\n", "named": CALL_OPEN + '\n{"name": "calculator", "arguments": '}


def run_condition(engine, questions, tools: bool, shots: list[dict], params, context: int, forced=None) -> dict:
    """One condition; `forced` ("required", "named" or None) starts the first answer as the API's
    tool_choice does, under its grammar. Every other answer with tools follows the session's grammar
    (free text, any call valid), as `chat --tools` and the API decode them."""
    from llmlab.infer.constrained import grammars_available, tool_call_grammar
    from llmlab.infer.tool_use import ToolSession
    from llmlab.tokenizer.chat import render_chat

    sessions = [ToolSession([*shots, {"role": "user", "content": q}], ["calculator"] if tools else [], max_rounds=2)
                for q, _ in questions]
    pending = list(range(len(sessions)))
    start = time.perf_counter()
    prefix = FORCED[forced]
    grammar = tool_call_grammar(sessions[0].schemas, forced, parallel=False) if forced and grammars_available() \
        else sessions[0].grammar if tools else None
    while pending:
        prompts = [render_chat(sessions[i].prompt_messages(), engine.tokenizer, add_generation_prompt=True,
                               max_tokens=context).ids + engine.tokenizer.encode_ordinary(prefix) for i in pending]
        replies = [prefix + r.text for r in engine.generate(prompts, params.replace(grammar=grammar))]
        prefix, grammar = "", sessions[0].grammar  # only the first answer is forced to start with a call
        if not tools:
            for i, r in zip(pending, replies):
                sessions[i].answer = r
            break
        pending = [i for i, r in zip(pending, replies) if sessions[i].take(r)]
    correct = called = right_call = 0
    for s, (_, answer) in zip(sessions, questions):
        correct += last_number(s.answer or "") == answer
        called += bool(s.trace)
        right_call += any(t.ok and t.result == str(answer) for t in s.trace)
    n = len(questions)
    return {"accuracy": correct / n, "call_rate": called / n, "right_call_rate": right_call / n,
            "seconds": time.perf_counter() - start, "examples": [
                {"question": q, "answer": a, "reply": s.answer, "trace": s.trace_dicts()}
                for s, (q, a) in zip(sessions[:3], questions[:3])]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50, help="number of problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--only", action="append", help="run only this condition (repeatable)")
    args = parser.parse_args()

    from llmlab.infer import Engine, SamplingParams, load_model

    torch.manual_seed(0)
    model, tokenizer = load_model("smollm2-135m")
    engine = Engine(model, tokenizer)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    questions = problems(args.n, args.seed)
    context = model.config.context_length - 1
    results = {}
    conditions = [("no tools", False, [], None), ("calculator", True, [], None),
                  ("calculator, call forced", True, [], "required"),
                  ("calculator, named call forced", True, [], "named"),
                  ("calculator + one-shot", True, ONE_SHOT, None)]
    for name, tools, shots, forced in conditions:
        if args.only and name not in args.only:
            continue
        r = run_condition(engine, questions, tools, shots, params, context, forced)
        results[name] = r
        print(f"{name:24s} accuracy {r['accuracy']:.0%}  call rate {r['call_rate']:.0%}  "
              f"right calls {r['right_call_rate']:.0%}  ({r['seconds']:.0f} s)", flush=True)
        if args.json:  # after each condition, so a long run leaves what it measured
            with open(args.json, "w") as f:
                json.dump({"n": args.n, "seed": args.seed, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
