"""The model stage: one decoder-only transformer for the GPT-2 and Llama families."""

from llmlab.model.config import PRESETS, GPTConfig, from_depth, preset, suggested_lr
from llmlab.model.checkpoint import load_checkpoint, read_config, save_checkpoint
from llmlab.model.transformer import GPT, KVCache

__all__ = [
    "GPT", "GPTConfig", "KVCache", "PRESETS", "from_depth", "load_checkpoint", "preset", "read_config",
    "save_checkpoint", "suggested_lr",
]
