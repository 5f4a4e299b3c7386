"""The chat template: a conversation becomes token ids plus a loss mask.

SFT, `llmlab chat`, the server and evaluation all render conversations here, so a model sees at
inference exactly the format it was fine-tuned on. Two formats, chosen by the tokenizer's special tokens:

llmlab (tokenizers trained by llmlab, special tokens `<|system|> <|user|> <|assistant|> <|end|>`)::

    <|endoftext|><|system|>You are terse.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|>

ChatML (SmolLM2 and other imported models with `<|im_start|>`), as SmolLM2's own template writes it,
including its default system prompt when the conversation has none::

    <|im_start|>system\\nYou are ...<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n

Each stretch of text between two special tokens is encoded at once, as Hugging Face encodes the
whole rendered string: in ChatML "assistant\\n" and the content are one stretch, so content that
starts with whitespace gets SmolLM2's ids ("\\n\\n\\n" is [1116, 198], not three 198s).

The loss mask is 1 exactly on the assistant's content tokens and the end-of-turn token that closes
them (the model must learn to stop), 0 elsewhere; a token that spans the end of "assistant\\n" and the
start of the content counts as content, since the model has to write it. Message content is encoded
as ordinary text, so a user typing "<|end|>" cannot forge a control token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from llmlab.errors import ConfigError, InputError

ROLES = ("system", "user", "assistant")
LLMLAB_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
LLMLAB_END = "<|end|>"
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@dataclass
class RenderedChat:
    ids: list[int]
    loss_mask: list[int]  # 1 where the token is trained on (assistant content + its end-of-turn token)
    dropped_messages: int = 0  # oldest messages left out to fit max_tokens
    truncated: bool = False  # tokens were cut after dropping messages was not enough
    segments: list[tuple[str, int]] = field(default_factory=list, repr=False)  # (role, n_tokens) per message

    def labels(self, ignore_index: int = -100) -> list[int]:
        """The ids where the mask is 1 and `ignore_index` elsewhere (shift by one for next-token targets)."""
        return [t if m else ignore_index for t, m in zip(self.ids, self.loss_mask)]


def with_system(messages: Sequence[Mapping[str, Any]], system: str | None) -> list[Mapping[str, Any]]:
    """`messages` with a system message in front, unless `system` is None or they already start with one.

    An empty `system` is the shortest prompt ChatML allows: without a system message SmolLM2's template
    writes its default one (20 tokens), which a short task prompt would otherwise spend half its tokens on."""
    if system is None or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]


def chat_format(tokenizer: Any) -> str:
    """"chatml" or "llmlab", from the tokenizer's special tokens; ConfigError if it has neither."""
    specials = tokenizer.special_tokens
    if CHATML_START in specials and CHATML_END in specials:
        return "chatml"
    needed = [*LLMLAB_TOKENS.values(), LLMLAB_END]
    missing = [t for t in needed if t not in specials]
    if missing:
        raise ConfigError(
            f"the tokenizer has no chat special tokens ({', '.join(missing)} missing)",
            hint="train the tokenizer with llmlab's default special tokens, or use a model with ChatML tokens",
        )
    return "llmlab"


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn (`<|end|>` or `<|im_end|>`): generation stops there."""
    fmt = chat_format(tokenizer)
    return tokenizer.special_tokens[CHATML_END if fmt == "chatml" else LLMLAB_END]


def _check(messages: Sequence[Mapping[str, Any]]) -> None:
    if not messages:
        raise InputError("the conversation has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InputError(
                f"message {i} is not a {{'role': system|user|assistant, 'content': str}} mapping: {m!r:.120}",
            )


def _tokens_within(ids: list[int], n_bytes: int, tokenizer: Any) -> int:
    """How many of the leading `ids` end within the first `n_bytes` bytes of the text they encode
    (a token that crosses that boundary is not counted)."""
    end = 0
    for k, i in enumerate(ids):
        end += len(tokenizer.decode_bytes([i]))
        if end > n_bytes:
            return k
    return len(ids)


def _segments(messages, tokenizer, fmt: str) -> tuple[list[tuple[list[int], list[int]]], list[int], list[int]]:
    """(ids, mask) per message, the prefix ids before the first message, and the generation prompt ids."""
    sp = tokenizer.special_tokens
    per_message = []
    for m in messages:
        trained = int(m["role"] == "assistant")
        if fmt == "chatml":
            start, label = [sp[CHATML_START]], m["role"] + "\n"
            tail, after = [sp[CHATML_END]], tokenizer.encode_ordinary("\n")
        else:
            start, label = [sp[LLMLAB_TOKENS[m["role"]]]], ""
            tail, after = [sp[LLMLAB_END]], []
        # The label and the content lie between two special tokens: one stretch, encoded at once.
        text = label + m["content"]
        text_ids = tokenizer.encode_ordinary(text) if text else []
        n_label = _tokens_within(text_ids, len(label.encode("utf-8")), tokenizer)
        ids = start + text_ids + tail + after
        mask = [0] * (len(start) + n_label) + [trained] * (len(text_ids) - n_label + len(tail)) + [0] * len(after)
        per_message.append((ids, mask))
    if fmt == "chatml":
        prefix = []
        if messages[0]["role"] != "system":
            prefix = _segments([{"role": "system", "content": SMOLLM2_DEFAULT_SYSTEM}], tokenizer, fmt)[0][0][0]
        generation = [sp[CHATML_START], *tokenizer.encode_ordinary("assistant\n")]
    else:
        prefix = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        generation = [sp[LLMLAB_TOKENS["assistant"]]]
    return per_message, prefix, generation


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    add_generation_prompt: bool = False,
    max_tokens: int | None = None,
) -> RenderedChat:
    """Token ids and loss mask of a conversation; `add_generation_prompt` opens an assistant turn.

    With `max_tokens` (the context window), the oldest turns (a user message with its answers) after the
    system message are dropped until the conversation fits; if even the last turn does not fit, tokens
    are cut: for a generation prompt from the left of what follows the system message (the model needs
    the end, and the system turn may list its tools), for training data from the right.
    """
    _check(messages)
    fmt = chat_format(tokenizer)
    per_message, prefix, generation = _segments(messages, tokenizer, fmt)
    tail = generation if add_generation_prompt else []
    keep = list(range(len(messages)))
    dropped = 0

    def length() -> int:
        return len(prefix) + sum(len(per_message[i][0]) for i in keep) + len(tail)

    if max_tokens is not None:
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
        # Whole turns (a user message and the answers after it) go, oldest first, never the last one.
        first = 1 if messages[0]["role"] == "system" else 0
        turns: list[list[int]] = []
        for i in keep[first:]:
            if not turns or messages[i]["role"] == "user":
                turns.append([])
            turns[-1].append(i)
        while length() > max_tokens and len(turns) > 1:
            for i in turns.pop(0):
                keep.remove(i)
                dropped += 1
    ids, mask = list(prefix), [0] * len(prefix)
    segments = []
    for i in keep:
        ids += per_message[i][0]
        mask += per_message[i][1]
        segments.append((messages[i]["role"], len(per_message[i][0])))
    ids += tail
    mask += [0] * len(tail)
    truncated = max_tokens is not None and len(ids) > max_tokens
    if truncated and add_generation_prompt:
        # The system turn (which lists the tools, if any) stays whole when it fits; the tokens after it
        # are cut from the left, since the model needs the end of the conversation.
        head = len(prefix) + (len(per_message[0][0]) if keep[0] == 0 and messages[0]["role"] == "system" else 0)
        head = head if head < max_tokens else 0
        tail_start = len(ids) - (max_tokens - head)
        ids, mask = ids[:head] + ids[tail_start:], mask[:head] + mask[tail_start:]
    elif truncated:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return RenderedChat(ids, mask, dropped, truncated, segments)

