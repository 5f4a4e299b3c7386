"""Generate text from a checkpoint with any decoding strategy.

Greedy (--temperature 0), sampling (temperature, top-k, top-p, min-p, penalties, seed), beam search
(--beams N), speculative decoding with a draft model (--draft PATH), int8/int4 weight quantization
(--quantize), JSON output constrained to a schema (--json-schema FILE, --json for any object).
MODEL is a checkpoint directory, a run directory, a .gguf file or `smollm2-135m`.

    llmlab generate runs/demo --prompt "Once upon a time" --max-new-tokens 50 --temperature 0.8 --seed 1
    llmlab generate smollm2-135m --chat --prompt "What is the capital of France?" --temperature 0
    llmlab generate smollm2-135m --chat --prompt "Describe Paris as JSON." --json-schema city.schema.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, get_args, get_origin

from llmlab.errors import ConfigError, InputError
# The sampling flags are made from SamplingParams, so building this command's parser imports torch.
from llmlab.infer.sampling import SamplingParams, sampling_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint directory, run directory, .gguf file, or smollm2-135m")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", "-p", action="append", help="prompt text (repeat for a batch); default: stdin")
    source.add_argument("--prompt-file", help="file with one prompt per line")
    parser.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the model's chat template")
    parser.add_argument("--system", help="system message for --chat")
    add_model_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--logprobs", type=int, default=None, metavar="K",
                        help="print each token's log-probability and its K most likely alternatives")
    parser.add_argument("--beams", type=int, default=0, help="beam search with this many beams (deterministic)")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="beam score = log P / length ** this")
    parser.add_argument("--draft", help="draft model for speculative decoding (same tokenizer)")
    parser.add_argument("--draft-tokens", type=int, default=4, help="tokens the draft proposes per round (default 4)")
    parser.add_argument("--no-kv-cache", action="store_true", help="recompute the whole sequence at every step (slow; for comparison)")
    parser.add_argument("--no-stream", action="store_true", help="print each completion when done instead of token by token")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The tokenizer, quantization and device flags `generate` and `chat` share."""
    parser.add_argument("--tokenizer", help="tokenizer file, if the checkpoint has none")
    parser.add_argument("--quantize", choices=["int8", "int4"],
                        help="int8: 8-bit weights (on an x86 CPU, activations too, through FBGEMM); int4: 4-bit weights")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="decode through a compiled static-shape step (default: on CUDA only)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="weight precision; bf16 on a CPU with oneDNN also packs the weights (faster decoding)")


def load_for_inference(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, tokenizer) as the model flags ask: precision, quantization, packed bf16 weights on a CPU."""
    import torch

    from llmlab.infer import load_model
    from llmlab.infer.packed import pack_model, packing_available
    from llmlab.infer.quantize import int8_per_token, quantize_model

    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    model, tokenizer = load_model(args.model, device=args.device, dtype=dtype, tokenizer=args.tokenizer)
    if args.quantize == "int8":  # as benchmarks/cpu_decode.py measures it: the tied head too, in 8 bits
        quantize_model(model, bits=8, tied_head=True, per_token=int8_per_token)
    elif args.quantize:
        quantize_model(model, bits=4)
    if dtype is not None and torch.device(args.device).type == "cpu" and packing_available():
        pack_model(model)
    return model, tokenizer


def add_sampling_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), **defaults: Any) -> None:
    """One flag per exposed SamplingParams field, made from its Setting, so a new field needs no new code here.

    `defaults` replace the engine's defaults for one command (chat answers at temperature 0.7);
    `skip` names fields a command does not offer. `sampling_params(args)` reads the flags back.
    """
    for s in sampling_settings():
        if not s.exposed or s.name in skip:
            continue
        default = defaults.get(s.name, s.default)
        options: dict[str, Any] = {"dest": s.name, "default": default}
        if s.kind is bool:
            options.update(action="store_true", help=s.help)
        elif get_origin(s.kind) is list:
            options.update(action="append", type=get_args(s.kind)[0], help=f"{s.help} (repeatable)")
        else:
            kind = next(t for t in get_args(s.kind) or (s.kind,) if t is not type(None))  # int | None -> int
            shown = "" if default is None else f" (default {default})"
            options.update(type=kind, help=s.help + shown)
        parser.add_argument(*s.cli_flags, **options)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json-schema", metavar="FILE", help="answer with JSON matching this JSON schema file "
                        "(constrained decoding: valid unless --max-new-tokens cuts it)")
    output.add_argument("--json", action="store_true", help="answer with a JSON object (any keys)")


def sampling_params(args: argparse.Namespace, **extra: Any) -> SamplingParams:
    """The SamplingParams the sampling flags ask for; a skipped flag keeps the engine's default."""
    given = {s.name: getattr(args, s.name) for s in sampling_settings() if s.exposed and hasattr(args, s.name)}
    return SamplingParams(**given, json_schema=_json_schema(args), **extra)


def _json_schema(args: argparse.Namespace) -> dict | None:
    """The schema --json-schema FILE or --json asks for, or None."""
    from llmlab.infer.constrained import ANY_OBJECT

    if getattr(args, "json", False):
        return ANY_OBJECT
    path = getattr(args, "json_schema", None)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise InputError(f"cannot read the JSON schema file {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise InputError(f"the JSON schema file {path} is not JSON: {e}") from e


def _prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt:
        return args.prompt
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    return [sys.stdin.read()]


def run(args: argparse.Namespace) -> int:
    from llmlab.infer import Engine, load_model
    from llmlab.infer.beam import beam_search
    from llmlab.infer.speculative import speculative_generate
    from llmlab.tokenizer.chat import render_chat

    params = sampling_params(args, logprobs=args.logprobs is not None, top_logprobs=args.logprobs or 0)
    if args.beams and args.draft:
        raise ConfigError("choose beam search or speculative decoding, not both")
    if params.json_schema is not None and (args.beams or args.draft):
        raise ConfigError("JSON output (--json-schema, --json) works with sampling, not with --beams or --draft")
    model, tokenizer = load_for_inference(args)
    draft = load_model(args.draft, device=args.device)[0] if args.draft else None
    engine = Engine(model, tokenizer, use_kv_cache=not args.no_kv_cache, compile=args.compile)
    prompts: list = _prompts(args)
    if args.chat:
        system = [{"role": "system", "content": args.system}] if args.system else []
        prompts = [render_chat(system + [{"role": "user", "content": p}], tokenizer, add_generation_prompt=True,
                               max_tokens=model.config.context_length - 1).ids for p in prompts]
    context = min(m.config.context_length for m in (model, draft) if m is not None)
    notice = context_notice([len(engine.encode(p)) for p in prompts], params.max_new_tokens, context)
    if notice:
        print(notice, file=sys.stderr)
    start, produced = time.perf_counter(), 0
    if args.beams:
        for prompt in prompts:
            for h in beam_search(model, engine.encode(prompt), args.beams, params.max_new_tokens, args.length_penalty,
                                 engine.end_ids):
                text = tokenizer.decode([t for t in h.token_ids if t not in engine.end_ids])
                print(f"[score {h.score:.3f}  log P {h.logprob:.3f}  {'finished' if h.finished else 'length'}] {text}")
                produced += len(h.token_ids)
    elif draft is not None:
        for prompt in prompts:
            completion, stats = speculative_generate(engine, draft, prompt, params, args.draft_tokens)
            print(completion.text)
            print(f"[acceptance rate {stats.acceptance_rate:.1%}, {stats.tokens_per_round:.2f} tokens per target "
                  f"forward]", file=sys.stderr)
            produced += completion.completion_tokens
    elif args.no_stream or len(prompts) > 1 or params.n > 1:
        for completion in engine.generate(prompts, params):
            print(completion.text)
            _print_logprobs(completion.logprobs)
            produced += completion.completion_tokens
    else:
        logprobs = []
        for event in engine.stream(prompts[0], params):
            print(event.text, end="", flush=True)
            produced += 1
            if params.wants_logprobs:
                logprobs.append((tokenizer.decode([event.token_id]), event.logprob, event.top_logprobs))
        print()
        for text, logprob, top in logprobs:
            _print_logprob_line(text, logprob, top)
    seconds = time.perf_counter() - start
    print(f"[{produced} tokens in {seconds:.2f} s, {produced / max(seconds, 1e-9):.1f} tokens/s]", file=sys.stderr)
    return 0


def context_notice(prompt_lengths: list[int], max_new_tokens: int, context_length: int) -> str | None:
    """A one-line note when the context window leaves room for fewer than `max_new_tokens` new tokens.

    Every decoder here stops when prompt + output fill the window, so without this note a long
    --max-new-tokens would end early with no word why. Prompts that do not fit at all are an error elsewhere.
    """
    longest = max((n for n in prompt_lengths if n < context_length), default=None)
    if longest is None or longest + max_new_tokens <= context_length:
        return None
    which = "the prompt" if len(prompt_lengths) == 1 else "the longest prompt"
    return (f"note: at most {context_length - longest} new tokens instead of {max_new_tokens}: {which} takes "
            f"{longest} of the {context_length}-token context window")


def _print_logprobs(logprobs) -> None:
    for t in logprobs or []:
        _print_logprob_line(t.text, t.logprob, t.top)


def _print_logprob_line(text: str, logprob: float, top) -> None:
    alternatives = "  ".join(f"{alt!r} {lp:.3f}" for _, alt, lp in top or [])
    print(f"  {text!r:>16} {logprob:8.3f}   {alternatives}", file=sys.stderr)
