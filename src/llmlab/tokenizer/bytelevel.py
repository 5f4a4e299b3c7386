"""GPT-2's byte-to-character table: how byte-level BPE writes token bytes as printable text.

A byte-level token is a byte string, not necessarily valid UTF-8 ("\\xe2\\x80" is half of "—"). GPT-2
stores each byte as one printable Unicode character: printable Latin-1 bytes stand for themselves and
the other 68 bytes (controls, space, ...) are shifted to U+0100 and up, so a space is "Ġ" and a newline
"Ċ". Hugging Face `tokenizer.json`, GPT-2's `encoder.json`/`vocab.bpe` and llmlab's own JSON all use it.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def byte_to_char() -> list[str]:
    """Index = byte value, value = the character standing for it."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = [""] * 256
    shifted = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@lru_cache(maxsize=1)
def char_to_byte() -> dict[str, int]:
    return {c: b for b, c in enumerate(byte_to_char())}


def bytes_to_text(token: bytes) -> str:
    """Token bytes -> GPT-2 byte-level string, e.g. b" the" -> "Ġthe"."""
    table = byte_to_char()
    return "".join(table[b] for b in token)


def text_to_bytes(text: str) -> bytes:
    """GPT-2 byte-level string -> token bytes; raises KeyError on a character outside the table."""
    table = char_to_byte()
    return bytes(table[c] for c in text)
