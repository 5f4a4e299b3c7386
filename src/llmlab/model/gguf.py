"""Import Llama-architecture GGUF files (llama.cpp's format) into llmlab's GPT, with tokenizer and chat template.

A GGUF file holds metadata (the architecture's hyper-parameters under `llama.*`, the tokenizer under
`tokenizer.ggml.*`, the chat template) and tensors, usually quantized in blocks (Q4_1: 32 weights
share a scale and a minimum, 4 bits each). The `gguf` package reads both and dequantizes any tensor
to float32; what is left is renaming and one reordering:

    token_embd            -> tok_emb                 output (absent: tied) -> lm_head
    blk.i.attn_norm       -> blocks.i.attn_norm      blk.i.ffn_norm        -> blocks.i.mlp_norm
    blk.i.attn_{q,k,v}    -> blocks.i.attn.qkv       blk.i.attn_output     -> blocks.i.attn.proj
    blk.i.ffn_{gate,up}   -> blocks.i.mlp.up         blk.i.ffn_down        -> blocks.i.mlp.down
    output_norm           -> final_norm

The reordering: llama.cpp rotates *adjacent* pairs (x0, x1), (x2, x3)... of each head, while
Hugging Face's Llama (and llmlab) rotate the two *halves* (x_i, x_{i+d/2}). So llama.cpp's converter
permutes the rows of W_q and W_k of each head from half-split to interleaved order, and we undo it
here, exactly as transformers' GGUF loader does (`reverse_permute`).

    model, tokenizer, chat_template = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")

The model is float32 (or `dtype`) with dequantized weights: it computes what the quantized model
computes, up to float rounding, not what the original bf16 model computed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmlab.errors import CheckpointError, ConfigError
from llmlab.model.checkpoint import model_from_state_dict
from llmlab.model.config import GPTConfig
from llmlab.model.transformer import GPT

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _import_gguf():
    try:
        import gguf
    except ImportError as e:
        raise ConfigError(
            "reading GGUF files needs the `gguf` package", hint="pip install 'llmlab[hf]' (or pip install gguf)"
        ) from e
    return gguf


# Metadata value types of the GGUF format (v2/v3), as struct formats; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Little-endian reads from a bytes buffer: the GGUF header, metadata and tensor table."""

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("Q")
        self.pos += n
        return self.buf[self.pos - n : self.pos].decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("I"), self.scalar("Q")
            if item in _SCALARS:  # numeric arrays in one call
                fmt = _SCALARS[item]
                values = list(struct.unpack_from(f"<{count}{fmt}", self.buf, self.pos))
                self.pos += count * struct.calcsize(fmt)
                return values
            return [self.value(item) for _ in range(count)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown metadata value type {kind}")
        return self.scalar(_SCALARS[kind])


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, tensors): every metadata value as a Python value, every tensor dequantized (by the
    `gguf` package) to a float32 numpy array in PyTorch's (out, in) orientation.

    The header is parsed here rather than with `gguf.GGUFReader`, which takes seconds to build its
    per-string views of a 49,152-token vocabulary; the layout is the GGUF spec's: magic "GGUF",
    version, tensor and metadata counts, key/value pairs, tensor infos (name, dims, type, offset),
    then the tensor data from the next multiple of `general.alignment`.
    """
    gguf = _import_gguf()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no GGUF file at {path}")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        # The header and metadata sit at the start; 64 MiB is far more than any tokenizer needs.
        cur = _Cursor(bytes(data[: min(len(data), 64 << 20)]))
        if cur.buf[:4] != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        cur.pos = 4
        version, n_tensors, n_kv = cur.scalar("I"), cur.scalar("Q"), cur.scalar("Q")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.scalar("I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            dims = [cur.scalar("Q") for _ in range(cur.scalar("I"))]
            infos.append((name, dims, cur.scalar("I"), cur.scalar("Q")))
        align = int(metadata.get("general.alignment", 32))
        start = -(-cur.pos // align) * align
        tensors: dict[str, np.ndarray] = {}
        for name, dims, kind, offset in infos:
            qtype = gguf.GGMLQuantizationType(kind)
            block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
            shape = tuple(reversed(dims))  # GGML lists the fastest-varying dimension first
            n_bytes = int(np.prod(dims)) // block * block_bytes
            raw = data[start + offset : start + offset + n_bytes]
            if len(raw) != n_bytes:
                raise ValueError(f"tensor {name} runs past the end of the file")
            if qtype == gguf.GGMLQuantizationType.F32:
                tensors[name] = np.array(raw.view(np.float32).reshape(shape))
            elif qtype == gguf.GGMLQuantizationType.F16:
                tensors[name] = raw.view(np.float16).reshape(shape).astype(np.float32)
            else:
                rows = raw.reshape(*shape[:-1], shape[-1] // block * block_bytes)
                tensors[name] = gguf.quants.dequantize(rows, qtype).astype(np.float32, copy=False)
    except (ValueError, struct.error, UnicodeDecodeError, KeyError, NotImplementedError) as e:
        raise CheckpointError(f"{path} is not a readable GGUF file ({e})", hint="the file may be truncated") from e
    return metadata, tensors


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str] | None = None) -> GPTConfig:
    """The GPTConfig of a `general.architecture == "llama"` file; without an `output.weight` tensor
    among `tensor_names` the head is tied to the embedding."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ConfigError(f"GGUF architecture {arch!r} is not supported", hint="llmlab imports Llama-architecture GGUF files")

    def key(name: str, default: Any = None) -> Any:
        return metadata.get(f"llama.{name}", default)

    n_heads = int(key("attention.head_count"))
    d_model = int(key("embedding_length"))
    head_dim = int(key("attention.key_length", d_model // n_heads))
    vocab = key("vocab_size") or len(metadata["tokenizer.ggml.tokens"])
    if key("rope.scaling.type") not in (None, "none"):
        raise ConfigError(f"RoPE scaling {key('rope.scaling.type')!r} is not supported")
    if key("rope.dimension_count", head_dim) != head_dim:
        raise ConfigError("partial rotary embeddings (rope.dimension_count < head_dim) are not supported")
    return GPTConfig(
        vocab_size=int(vocab), context_length=int(key("context_length")), n_layers=int(key("block_count")),
        n_heads=n_heads, n_kv_heads=int(key("attention.head_count_kv", n_heads)), d_model=d_model,
        head_dim=head_dim, d_ff=int(key("feed_forward_length")), positions="rope",
        rope_theta=float(key("rope.freq_base", 10000.0)), activation="swiglu", norm="rmsnorm",
        norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)), bias=False,
        tie_embeddings="output.weight" not in (tensor_names or ()), dropout=0.0,
    )


def reverse_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, rows go from interleaved-pair to half-split order.

    llama.cpp wrote `w.reshape(n_heads, 2, d/2, in).swapaxes(1, 2)`; this is its inverse.
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def state_dict_from_gguf(tensors: dict[str, np.ndarray], config: GPTConfig) -> dict[str, torch.Tensor]:
    """llmlab's state dict from the dequantized tensors of a Llama GGUF."""
    t = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in tensors.items()}
    out = {"tok_emb.weight": t["token_embd.weight"], "final_norm.weight": t["output_norm.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = t["output.weight"]
    for i in range(config.n_layers):
        g, b = f"blk.{i}.", f"blocks.{i}."
        q = reverse_permute(tensors[g + "attn_q.weight"], config.n_heads)
        k = reverse_permute(tensors[g + "attn_k.weight"], config.n_kv_heads)
        out[b + "attn.qkv.weight"] = torch.from_numpy(np.concatenate([q, k, tensors[g + "attn_v.weight"]]))
        out[b + "attn.proj.weight"] = t[g + "attn_output.weight"]
        out[b + "mlp.up.weight"] = torch.cat([t[g + "ffn_gate.weight"], t[g + "ffn_up.weight"]])
        out[b + "mlp.down.weight"] = t[g + "ffn_down.weight"]
        out[b + "attn_norm.weight"] = t[g + "attn_norm.weight"]
        out[b + "mlp_norm.weight"] = t[g + "ffn_norm.weight"]
    return out


def tokenizer_from_gguf(metadata: dict[str, Any], pattern: str | None = None):
    """llmlab's byte-level BPE `Tokenizer` from `tokenizer.ggml.*` (GPT-2-style "gpt2" vocabularies).

    Tokens whose type is not NORMAL (SmolLM2: the 17 CONTROL tokens such as `<|im_start|>`) become
    special tokens. The pre-split `pattern` defaults to GPT-2's, which is what transformers' GGUF
    loader builds for this file, so ids equal `AutoTokenizer.from_pretrained(..., gguf_file=...)`'s.
    SmolLM2's original tokenizer.json (and llama.cpp's `pre == "smollm"`) first isolate every digit;
    pass `llmlab.tokenizer.hf.GPT2_DIGITS_PATTERN` for that. The two differ only around digits
    (e.g. " 99" is one piece for GPT-2's pattern, two for the digit-isolating one).
    """
    from llmlab.tokenizer import Tokenizer
    from llmlab.tokenizer.patterns import GPT2_PATTERN

    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ConfigError(
            f"GGUF tokenizer model {model!r} is not supported", hint="llmlab imports byte-level BPE ('gpt2') tokenizers"
        )
    tokens = metadata["tokenizer.ggml.tokens"]
    types = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    specials = {tok: i for i, (tok, kind) in enumerate(zip(tokens, types)) if kind != NORMAL}
    return Tokenizer.from_byte_level_vocab(
        {tok: i for i, tok in enumerate(tokens)}, metadata.get("tokenizer.ggml.merges"), specials,
        pattern or GPT2_PATTERN, name=str(metadata.get("general.name", "gguf")), missing_bytes="drop",
    )


def load_gguf(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[GPT, Any, str | None]:
    """(model in eval mode, tokenizer, chat template string or None) from a Llama GGUF file."""
    metadata, tensors = read_gguf(path)
    config = config_from_gguf(metadata, set(tensors))
    try:
        state = state_dict_from_gguf(tensors, config)
        model = model_from_state_dict(config, state, device=device, dtype=dtype)
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"the tensors in {path} do not match its metadata ({e})") from e
    return model, tokenizer_from_gguf(metadata), metadata.get("tokenizer.chat_template")
