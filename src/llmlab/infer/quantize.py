"""Weight-only post-training quantization of nn.Linear layers: int8, packed int4 and NF4.

int8, symmetric, one scale per output row (absmax):
    scale_r = max_j |W_rj| / 127,   q_rj = round(W_rj / scale_r) in [-127, 127],   W ~ q * scale
int4, asymmetric, one (scale, min) pair per group of `group_size` inputs in a row (as GGUF's Q4_1):
    scale_g = (max_g - min_g) / 15,  q = round((W - min_g) / scale_g) in [0, 15],  W ~ q * scale_g + min_g
    two 4-bit codes are packed into each uint8, so a weight costs 4 bits plus 32 bits per group.
NF4 (QLoRA, Dettmers et al. 2023), one absmax per block of 64 consecutive weights:
    the 16 levels are quantiles of a standard normal scaled to [-1, 1] (with an exact zero), so each
    level is equally likely for normally distributed weights; q = the level nearest W / absmax.

Activations stay in floating point; the weight is expanded back before the matmul (on an x86 CPU, int8
multiplies integers instead: `Int8Linear`). Memory shrinks ~4x (int8) or ~6x (int4, group 64) for the quantized matrices; the
price is a small rise in perplexity, measured by `perplexity` before and after (docs/inference.md).
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.errors import ConfigError
from llmlab.model.frozen import compute_dtype
from llmlab.model.nf4 import NF4Linear
from llmlab.model.transformer import KVCache


@functools.cache
def int8_kernel_available() -> bool:
    """Whether this PyTorch build and CPU run FBGEMM's int8 linear (x86 with AVX2 or AVX-512)."""
    return ("fbgemm" in torch.backends.quantized.supported_engines
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


def pack_int8_weight(weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.ScriptObject:
    """The int8 codes, per-row scales and bias prepacked once into FBGEMM's layout for `linear_dynamic`."""
    zero_points = torch.zeros(weight_int8.size(0), dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated as values; the kernel is not
        warnings.simplefilter("ignore", UserWarning)
        codes = torch._make_per_channel_quantized_tensor(weight_int8, scale.double(), zero_points, 0)
    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "fbgemm"
        return torch.ops.quantized.linear_prepack(codes, bias)
    finally:
        torch.backends.quantized.engine = engine


class Int8Linear(nn.Module):
    """A Linear layer whose weight is int8 with one fp32 scale per output row.

    `reference` is the definition: dequantize, then F.linear. On an x86 CPU with fp32 inputs `forward`
    runs FBGEMM's dynamic int8 linear instead: each call quantizes the activations to uint8 (one scale
    and zero point per call, from their min and max) and multiplies integers with VNNI/AVX2, reading a
    quarter of fp32's weight bytes. That is faster than fp32 `F.linear` at 1 and at 256 rows for
    SmolLM2-135M's block matrices, and at 1 row for its head (docs/inference.md), at the price of
    rounding the activations too (~0.5% relative error per product; see `int8_per_token`). PyTorch's
    weight-only `_weight_int8pack_mm` measured 6-80x slower than fp32 there, so it is not used.

    `per_token` layers give every row (token) its own activation scale, in one kernel call: a single row
    (a decoding step at batch 1) is the kernel's own per-call range; several rows are each divided by
    their largest magnitude, a pinning row (1, -1, 0, ...) fixes the call's range at [-1, 1], and the
    outputs are multiplied back (the layer is linear in each row), so a row is rounded the same whichever
    rows share its call. One scale shared by many tokens is too coarse for an input with outlier tokens
    or channels (`int8_per_token`).
    """

    def __init__(self, linear: nn.Linear, per_token: bool = False) -> None:
        super().__init__()
        self.per_token = per_token
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed: torch.ScriptObject | None = None  # made at the first CPU call; not part of the state
        self.pin: torch.Tensor | None = None  # per_token: the row (1, -1, 0, ...) that fixes the range, made once

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.packed = None  # new codes: pack again at the next call
        super()._load_from_state_dict(*args, **kwargs)

    def dequantize(self) -> torch.Tensor:
        return self.weight_int8.float() * self.scale[:, None]

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or not x.is_cpu or not int8_kernel_available():
            return self.reference(x)
        if self.packed is None:  # a per-token layer adds its bias after scaling back, outside the kernel
            self.packed = pack_int8_weight(self.weight_int8, self.scale, None if self.per_token else self.bias)
        if not self.per_token:
            return torch.ops.quantized.linear_dynamic(x, self.packed, False)
        flat = x.reshape(-1, x.size(-1))
        if flat.size(0) == 1:  # fewest ops on the batch-1 decoding path
            y = torch.ops.quantized.linear_dynamic(flat, self.packed, False)
        else:
            if self.pin is None:
                self.pin = torch.zeros(1, self.in_features)
                self.pin[0, 0], self.pin[0, -1] = 1.0, -1.0
            peak = flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
            y = torch.ops.quantized.linear_dynamic(torch.cat([flat / peak, self.pin]), self.packed, False)[:-1] * peak
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


class Int4Linear(nn.Module):
    """A Linear layer whose weight is packed 4-bit codes with an fp16 (scale, min) per group of inputs."""

    def __init__(self, linear: nn.Linear, group_size: int = 64) -> None:
        super().__init__()
        out_f, in_f = linear.weight.shape
        if in_f % group_size or group_size % 2:
            raise ConfigError(f"int4 needs in_features ({in_f}) divisible by an even group_size ({group_size})")
        w = linear.weight.detach().float().view(out_f, in_f // group_size, group_size)
        low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
        scale = ((high - low) / 15.0).clamp(min=1e-8)
        # Round the stored fp16 values first, so that codes are chosen against what dequantization will use.
        scale, low = scale.half().float(), low.half().float()
        codes = torch.round((w - low) / scale).clamp(0, 15).to(torch.uint8).view(out_f, in_f)
        self.register_buffer("packed", codes[:, 0::2] | (codes[:, 1::2] << 4))  # (out, in/2) uint8
        self.register_buffer("scale", scale.squeeze(-1).half())
        self.register_buffer("low", low.squeeze(-1).half())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features, self.group_size = in_f, out_f, group_size

    def dequantize(self) -> torch.Tensor:
        codes = torch.stack([self.packed & 0x0F, self.packed >> 4], dim=-1).view(self.out_features, -1, self.group_size)
        w = codes.float() * self.scale.float()[..., None] + self.low.float()[..., None]
        return w.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def int8_per_token(name: str) -> bool:
    """Whether the Linear layer `name` needs its input rounded one token at a time (`Int8Linear.per_token`).

    The MLP's down projection reads the activation function's output, whose few huge values (the
    outliers of LLM.int8(), Dettmers et al. 2022) leave the rest a handful of levels when one scale
    covers many tokens: on SmolLM2-135M rounding its input over 512-token windows raised perplexity by
    42%, every other layer together by 2% (docs/inference.md). One token's own scale is finer.
    Pass as `quantize_model(..., per_token=int8_per_token)` for CPU int8."""
    return name.endswith("mlp.down")


QUANTIZED = {8: Int8Linear, 4: Int4Linear, "nf4": NF4Linear}


def quantize_model(
    model: nn.Module, bits: int | str = 8, group_size: int = 64, skip: Iterable[str] = (),
    only: Callable[[str], bool] | None = None, tied_head: bool = False,
    per_token: Callable[[str], bool] | None = None,
) -> nn.Module:
    """Replace every nn.Linear (except names in `skip`, those `only` rejects, and a head tied to the
    embedding unless `tied_head`) in place: `bits` 8, 4 or "nf4".

    The tied head shares its matrix with the token embedding, which is looked up, not multiplied, so by
    default it stays in floating point: quantizing a copy adds memory. `tied_head=True` quantizes a copy
    all the same, for speed: in int8 it is a quarter of the fp32 matrix that decoding reads every step.
    int8 layers that `per_token` accepts round their input one token at a time (`Int8Linear.per_token`).
    int8 on the CPU needs FBGEMM's kernel (ConfigError without it: the fallback is slower than fp32).
    """
    if bits not in QUANTIZED:
        raise ConfigError(f"bits must be 4, 8 or nf4, got {bits}")
    on_cpu = any(p.device.type == "cpu" for p in model.parameters())
    if bits == 8 and on_cpu and not int8_kernel_available():
        raise ConfigError("int8 on this CPU would be slower than fp32: PyTorch has no FBGEMM int8 kernel for it",
                          hint="run in fp32, or bf16 on a CPU with bf16 support")
    skip = set(skip)
    tied = set() if tied_head else {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if not isinstance(child, nn.Linear) or full in skip or id(child.weight) in tied:
                continue
            if only is not None and not only(full):
                continue
            if bits == 8:
                quantized = Int8Linear(child, per_token=per_token is not None and per_token(full))
            else:
                quantized = QUANTIZED[bits](child, group_size)
            setattr(module, child_name, quantized.to(child.weight.device))
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes of the stored weights (the state dict), a tensor shared by two names counted once."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@torch.inference_mode()
def perplexity(model: nn.Module, ids: torch.Tensor, window: int | None = None, one_token_at_a_time: bool = False) -> float:
    """exp(mean next-token cross-entropy) over `ids` (1-D), in non-overlapping windows of the context length.

    `one_token_at_a_time` feeds each window token by token through a KV cache, as decoding does: a layer
    that rounds its input per call (`Int8Linear`) then rounds one token's activations at a time."""
    window = window or model.config.context_length
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, ids.numel() - 1, window):
        chunk = ids[start : start + window + 1].to(device)
        if chunk.numel() < 2:
            break
        if one_token_at_a_time:
            cache = KVCache(model.config, 1, chunk.numel() - 1, device, compute_dtype(model))
            logits = torch.cat([model(chunk[None, i : i + 1], kv_cache=cache)[0][0] for i in range(chunk.numel() - 1)])
            loss = F.cross_entropy(logits.float(), chunk[1:])
        else:
            _, loss = model(chunk[None, :-1], targets=chunk[None, 1:])
        total += float(loss) * (chunk.numel() - 1)
        count += chunk.numel() - 1
    return float(torch.exp(torch.tensor(total / count)))
