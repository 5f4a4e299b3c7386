"""bf16 CPU inference with weights packed once into oneDNN's blocked layout.

A bf16 `F.linear` on the CPU multiplies by the plain (out x in) matrix through `aten::mm`, which at one
row is a slow path. oneDNN's linear on a weight reordered once, ahead of time, into the blocked layout
its kernels read gives the same numbers (without a bias the tests compare them bit for bit) faster;
`benchmarks/cpu_decode.py` measures what it buys for SmolLM2-135M (docs/inference.md). In fp32 PyTorch
calls MKL, and packing measured no faster, so `pack_model` packs bf16 weights only.

Packing is for inference only, like quantization: a `PackedLinear` has no `weight` parameter, so an
optimizer never sees it. A head tied to the embedding is packed as a copy (the embedding is looked up
and needs the plain matrix): vocab x d_model more bf16 values for as long as the model lives.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from llmlab.errors import ConfigError


def packing_available() -> bool:
    """Whether this PyTorch build and CPU run oneDNN's bf16 linear."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedLinear(nn.Module):
    """x @ W^T + b through oneDNN, with W reordered once into the layout oneDNN's kernel reads."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def pack_model(model: nn.Module) -> nn.Module:
    """Replace every bf16 CPU nn.Linear of `model` in place by a `PackedLinear`; returns the model.

    ConfigError for a model that is not bf16 on the CPU or a build without oneDNN's bf16 kernels."""
    linears = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear]
    bad = {(c.weight.dtype, c.weight.device.type) for _, _, c in linears} - {(torch.bfloat16, "cpu")}
    if bad:
        raise ConfigError(f"packed weights are for bf16 models on the CPU; this one has {sorted(map(str, bad))}",
                          hint="load the model with dtype=torch.bfloat16 on the CPU first")
    if not packing_available():
        raise ConfigError("this PyTorch build or CPU has no oneDNN bf16 linear", hint="run without packing")
    with torch.inference_mode(False), torch.no_grad():
        for parent, name, child in linears:
            setattr(parent, name, PackedLinear(child))
    return model
