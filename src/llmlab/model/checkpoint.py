"""The one checkpoint format every stage reads and writes.

A checkpoint is a directory:

    config.json          {"format": "llmlab-checkpoint-v1", "model": {GPTConfig fields}, ...metadata}
    model.safetensors    the weights (a tied head is stored once, as the embedding)
    tokenizer.json       optional: the tokenizer the model was trained with

safetensors holds raw tensors only, so loading a checkpoint never unpickles anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmlab.errors import CheckpointError
from llmlab.files import atomic_path, write_json
from llmlab.model.config import GPTConfig
from llmlab.model.transformer import GPT, rope_tables, sinusoidal_table

FORMAT = "llmlab-checkpoint-v1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"


def save_checkpoint(
    directory: str | os.PathLike,
    model: GPT,
    tokenizer_file: str | os.PathLike | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (and optionally a copy of its tokenizer file) into `directory`, each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    if tokenizer_file is not None and Path(tokenizer_file).resolve() != (directory / TOKENIZER).resolve():
        with atomic_path(directory / TOKENIZER) as tmp:
            shutil.copyfile(tokenizer_file, tmp)
    write_json(directory / CONFIG, {"format": FORMAT, "model": model.config.to_dict(), **(metadata or {})})
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's config.json, checked; raises CheckpointError with a fix when it is unusable."""
    path = Path(directory) / CONFIG
    if not Path(directory).is_dir():
        raise CheckpointError(f"no checkpoint directory at {directory}", hint="pass a directory holding config.json and model.safetensors")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", hint="a checkpoint directory holds config.json and model.safetensors")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        GPTConfig.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid llmlab checkpoint config ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}",
            hint="Hugging Face checkpoints are imported with llmlab.model.hf",
        )
    return meta


def load_checkpoint(
    directory: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> GPT:
    """Build the model described by config.json and load its weights, strictly."""
    meta = read_config(directory)
    config = GPTConfig.from_dict(meta["model"])
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path} is missing", hint="the checkpoint was not fully written; use an earlier one")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e})", hint="use an earlier checkpoint") from e
    try:
        return model_from_state_dict(config, state, device=device, dtype=dtype)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match its config.json: {e}") from e


def model_from_state_dict(
    config: GPTConfig,
    state: dict[str, torch.Tensor],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> GPT:
    """A GPT in eval mode holding exactly `state` (llmlab names; a tied head may be absent), without
    first allocating and initialising weights that would be overwritten. Raises RuntimeError on a
    missing, unexpected or misshapen tensor."""
    with torch.device("meta"):
        model = GPT(config)
    state = dict(state)
    if config.tie_embeddings:
        state["lm_head.weight"] = state.get("tok_emb.weight")
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    _rebuild_buffers(model, device)
    model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _rebuild_buffers(model: GPT, device: str | torch.device) -> None:
    """Non-persistent buffers (position tables) are not stored; recompute them for a meta-built model."""
    c = model.config
    if c.positions == "sinusoidal":
        model.pos_table = sinusoidal_table(c.context_length, c.d_model).to(device)
    elif c.positions == "rope":
        cos, sin = rope_tables(c.context_length, c.head_dim, c.rope_theta)
        model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
