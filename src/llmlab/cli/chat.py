"""Chat with a model in the terminal, in the model's own chat template, keeping the conversation history.

Type a message and press Enter. Commands: /reset forgets the history, /exit (or Ctrl-D) quits;
Ctrl-C while the model answers stops the answer. Old turns are dropped when the history outgrows the
context window.

With --index, each message is first searched in a retrieval index (llmlab index); the best passages go
in front of it, numbered, and the sources the answer cites as [n] are listed after it (all the passages
given when it cites none). The history keeps the plain messages, so old passages do not pile up.
--tools and --index combine: the passages go into the prompt and the model may still call the tools.

    llmlab chat smollm2-135m --temperature 0.3
    llmlab chat runs/demo --system "You are a helpful assistant."
    llmlab chat smollm2-135m --index runs/demo/index --temperature 0
    llmlab chat smollm2-135m --tools calculator,python   (the model may call built-in tools; see docs/tools.md)
    llmlab chat smollm2-135m --tools calculator --index runs/demo/index
"""

from __future__ import annotations

import argparse
import sys

from llmlab.cli.generate import add_model_arguments, add_sampling_arguments, load_for_inference, sampling_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint directory, run directory, .gguf file, or smollm2-135m")
    parser.add_argument("--system", help="system message that starts the conversation")
    parser.add_argument("--index", help="retrieval index directory (llmlab index): answer from its passages")
    parser.add_argument("--passages", type=int, default=3, help="passages retrieved per message with --index (default: 3)")
    parser.add_argument("--passage-tokens", type=int, default=512,
                        help="most prompt tokens the passages may add with --index (default: 512)")
    parser.add_argument("--tools", type=lambda s: [t.strip() for t in s.split(",") if t.strip()], default=[],
                        help="built-in tools the model may call, comma-separated: calculator,python")
    add_model_arguments(parser)
    # One answer at a time: no --num-samples.
    add_sampling_arguments(parser, skip=("n",), max_new_tokens=256, temperature=0.7, top_p=0.95)


def run(args: argparse.Namespace, input_fn=input) -> int:
    from llmlab.infer import Engine
    from llmlab.retrieve import Index, cited_passages, rag_messages
    from llmlab.tokenizer.chat import chat_format

    index = Index.open(args.index) if args.index else None  # a bad index fails before the model loads
    model, tokenizer = load_for_inference(args)
    chat_format(tokenizer)  # fail now, not after the first message, if the tokenizer has no chat tokens
    if args.tools:
        _check_tools(tokenizer, args.tools)
    engine = Engine(model, tokenizer)
    params = sampling_params(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    print(f"chatting with {args.model} (/reset, /exit; Ctrl-C stops an answer)", file=sys.stderr)
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history.clear()
            print("(history cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        messages, passages = system + history, []
        if index is not None:
            messages, passages = rag_messages(messages, index.search(text, k=args.passages),
                                              lambda s: len(tokenizer.encode_ordinary(s)), args.passage_tokens)
        if args.tools:
            reply, turn = _answer_with_tools(engine, messages, args.tools, params)
        else:
            reply, turn = _answer(engine, tokenizer, messages, params, model.config.context_length - 1)
        if passages:
            cited = cited_passages(reply, passages) or list(enumerate(passages, start=1))
            print("sources:")
            for n, p in cited:
                print(f"  [{n}] {p.title} — {p.url}")
        history.extend(turn)


def _answer(engine, tokenizer, messages: list[dict], params, max_tokens: int) -> tuple[str, list[dict]]:
    """One streamed answer: (its text, the assistant message to keep)."""
    from llmlab.tokenizer.chat import render_chat

    rendered = render_chat(messages, tokenizer, add_generation_prompt=True, max_tokens=max_tokens)
    reply = ""
    print("model> ", end="", flush=True)
    try:
        for event in engine.stream(rendered.ids, params):
            print(event.text, end="", flush=True)
            reply += event.text
    except KeyboardInterrupt:
        print(" [stopped]", end="")
    print()
    return reply, [{"role": "assistant", "content": reply}]


def _check_tools(tokenizer, tools: list[str]) -> None:
    from llmlab.errors import ConfigError
    from llmlab.infer.tool_use import check_tool_names
    from llmlab.tokenizer.chat_tools import supports_tools

    check_tool_names(tools)
    if not supports_tools(tokenizer):
        raise ConfigError("this model's chat format has no tool-call format", hint="use --tools with a ChatML model such as smollm2-135m")


def _answer_with_tools(engine, messages: list[dict], tools: list[str], params) -> tuple[str, list[dict]]:
    """One answer through the tool loop, printing each call and result: (the answer, the calls, results and
    answer to keep after the user turn)."""
    from llmlab.infer.tool_use import chat_with_tools

    def show(step) -> None:
        print(f"[tool] {step.name}({step.arguments}) -> {step.result}  ({step.seconds * 1000:.0f} ms)", file=sys.stderr)

    try:
        session = chat_with_tools(engine, messages, tools, params, on_step=show)
    except KeyboardInterrupt:
        print(" [stopped]")
        return "", []
    print(f"model> {session.answer}")
    return session.answer, session.messages[len(messages):]
