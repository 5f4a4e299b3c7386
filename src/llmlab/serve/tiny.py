"""A tiny model with random weights, saved as a real checkpoint, for trying the playground in seconds.

Its text is gibberish (nothing was trained but the tokenizer), but every part of the server and UI works
on it: the tests, the load benchmark and `llmlab serve --tiny` use it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from llmlab.model import GPT, preset, save_checkpoint


def tokenizer_texts(limit_chars: int = 200_000) -> list[str]:
    """English technical text that ships with Python itself (the help topics of `pydoc`)."""
    from pydoc_data.topics import topics

    texts, total = [], 0
    for _, text in sorted(topics.items()):
        texts.append(text)
        total += len(text)
        if total >= limit_chars:
            break
    return texts


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE trained on `tokenizer_texts()` (trained once per process and size)."""
    from llmlab.tokenizer import train_bpe

    return train_bpe(tokenizer_texts(), vocab_size=vocab_size)


def make_tiny_checkpoint(directory: str | os.PathLike, family: str = "tiny", vocab_size: int = 512,
                         context_length: int = 256, seed: int = 0) -> Path:
    """Write a random-weight `family` preset ("tiny" or "tiny-llama") and a BPE tokenizer into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(vocab_size)
    tokenizer.save(directory / "tokenizer.json")
    torch.manual_seed(seed)
    model = GPT(preset(family, vocab_size=tokenizer.vocab_size, context_length=context_length))
    save_checkpoint(directory, model, metadata={"note": "random weights: a playground demo, not a trained model"})
    return directory
