"""LoRA (Hu et al., 2021): fine-tune a frozen model through small low-rank updates of chosen matrices.

A frozen linear layer W (d x k: k inputs, d outputs) gets a trainable update B A with A (r x k) and
B (d x r), scaled by alpha / r:

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T

A starts random and B at zero, so an adapted model computes exactly what the base computes until it
trains. Each adapted matrix adds r (d + k) trainable parameters instead of d k.

A layer can hold several named adapters and use one at a time (`set_adapter`), so one base model
serves several fine-tunes. What a LoRA model *computes* is the base plus the active adapter, and that
is what its `state_dict()` holds: plain GPT names with merged weights. So a checkpoint written during
LoRA training is an ordinary llmlab checkpoint that chat, eval and the server load as is. The adapter
alone is saved with `save_adapter` (adapter.safetensors + adapter.json, kilobytes to megabytes).

QLoRA (Dettmers et al. 2023) is LoRA on a base whose adapted matrices are stored in 4-bit NormalFloat
(`LoRAConfig(quantize="nf4")`): the frozen W is dequantized for each forward pass (and again for the
backward one) and the adapters train in full precision, so those matrices take about 1/7 of their fp32
memory. As in the paper, the frozen weights that are not quantized (embeddings, head) are held in bf16
and cast to the computation dtype where used. Its checkpoints are the same merged, plain-named fp32
weights as LoRA's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmlab.errors import CheckpointError, ConfigError
from llmlab.files import atomic_path, write_json
from llmlab.model.nf4 import NF4Linear
from llmlab.model import GPT
from llmlab.model.frozen import CastEmbedding, CastLinear

ADAPTER_FORMAT = "llmlab-lora-v1"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
DEFAULT_TARGETS = ("qkv", "proj", "up", "down")  # every matrix inside the transformer blocks


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # module names or name suffixes
    quantize: str | None = None  # "nf4": QLoRA, the adapted matrices' frozen base in 4-bit NormalFloat

    def __post_init__(self) -> None:
        if self.quantize not in (None, "nf4"):
            raise ConfigError(f"LoRA base quantization {self.quantize!r} is not supported; choose nf4 (QLoRA)")
        self.targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
        if self.rank < 1:
            raise ConfigError(f"LoRA rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ConfigError("LoRA needs at least one target module", hint=f"e.g. {', '.join(DEFAULT_TARGETS)}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRAAdapter(nn.Module):
    """The update (alpha / r) B A of one d x k matrix."""

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig) -> None:
        super().__init__()
        self.scaling = config.scaling
        self.lora_A = nn.Parameter(torch.empty(config.rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, config.rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dropout(x) @ self.lora_A.T) @ self.lora_B.T * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling


class LoRALinear(nn.Linear):
    """A frozen `nn.Linear` (same `weight` and `bias`) plus named adapters, one of them active."""

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)  # adopt base's tensors instead of allocating new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.register_state_dict_post_hook(_merged_state)
        self.register_load_state_dict_pre_hook(_load_merged_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_forward(x)
        if self.active is None:
            return y
        return y + self.adapters[self.active](x).to(y.dtype)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T + b, the frozen layer alone."""
        return super().forward(x)

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A of the active adapter (W itself when none is active)."""
        if self.active is None:
            return self.weight
        return self.weight + self.adapters[self.active].delta_weight().to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, adapters={list(self.adapters)}, active={self.active!r}"


class QLoRALinear(LoRALinear):
    """LoRA on a frozen NF4 matrix: `weight` is the dequantized base, rebuilt for each use; the forward
    and backward passes each dequantize their own transient copy (`NF4Linear`)."""

    def __init__(self, base: NF4Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.quantized, self.bias = base, base.bias
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.register_state_dict_post_hook(_merged_state)
        self.register_load_state_dict_pre_hook(_load_merged_state)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.quantized.dequantize()

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized(x)


def _merged_state(module: LoRALinear, state: dict, prefix: str, local_metadata: Any) -> None:
    for key in [k for k in state if k.startswith((prefix + "adapters.", prefix + "quantized."))]:
        del state[key]
    state[prefix + "weight"] = module.merged_weight().detach()


def _load_merged_state(module: LoRALinear, state: dict, prefix: str, *args: Any) -> None:
    """Loading what `state_dict()` wrote (merged weights) keeps the frozen base and the adapters.

    This is what resuming a LoRA run does: the model is rebuilt from the base and the saved adapter,
    then the checkpoint's merged weights must agree with it. Weights that disagree would mean a
    different base; silently subtracting the update from them would change the model.
    """
    key = prefix + "weight"
    if key in state and module.active is not None:
        incoming = state[key].to(module.weight.device, module.weight.dtype)
        merged = module.merged_weight().detach()
        if incoming.shape != merged.shape or not torch.allclose(incoming, merged, rtol=1e-5, atol=1e-6):
            raise CheckpointError(
                f"the weights for {prefix.rstrip('.')} are not this base model plus its active LoRA adapter",
                hint="resume a LoRA run with the same base (init_from) and its checkpoint's adapter",
            )
        state[key] = module.weight.detach()
    if isinstance(module, QLoRALinear):  # the frozen base is the quantized one the module holds
        state.pop(key, None)
        for name, tensor in module.quantized.state_dict().items():
            state.setdefault(f"{prefix}quantized.{name}", tensor)
    for name, tensor in module.adapters.state_dict().items():
        state.setdefault(f"{prefix}adapters.{name}", tensor)


# --- adding, counting, switching and merging adapters ---------------------------------------------------

def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(model: nn.Module, config: LoRAConfig, name: str = "default") -> list[str]:
    """Give every linear layer named by `config.targets` an adapter `name`, make it active and the only
    trainable thing in the model. Returns the adapted layers' names."""
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    adapted = []
    for module_name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or not _matches(module_name, config.targets):
            continue
        if tied and module_name == "lm_head":
            raise ConfigError("the head shares its weight with the token embedding, so LoRA cannot adapt it alone",
                              hint="leave lm_head out of the LoRA targets")
        if isinstance(module, LoRALinear):
            layer = module
        elif config.quantize == "nf4":
            layer = QLoRALinear(NF4Linear(module).to(module.weight.device))
        else:
            layer = LoRALinear(module)
        if name in layer.adapters:
            raise ConfigError(f"{module_name} already has an adapter named {name!r}")
        layer.adapters[name] = LoRAAdapter(layer.in_features, layer.out_features, config).to(layer.weight.device)
        if layer is not module:
            parent_name, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
        adapted.append(module_name)
    if not adapted:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(f"no linear layer matches the LoRA targets {config.targets}",
                          hint=f"linear layers: {', '.join(linear[:8])}{' ...' if len(linear) > 8 else ''}")
    if config.quantize == "nf4":
        hold_embeddings(model, torch.bfloat16)
    set_adapter(model, name)
    return adapted


def hold_embeddings(model: nn.Module, storage: torch.dtype | None) -> None:
    """Hold a GPT's frozen embedding tables and its plain head in `storage` (QLoRA keeps what it does not
    quantize in bf16), cast to the model's dtype where used; None puts plain modules in the model's dtype
    back. A tied head keeps sharing the token embedding's one tensor. Norms stay as they are (kilobytes)."""
    if not isinstance(model, GPT) or isinstance(model.tok_emb, CastEmbedding) == (storage is not None):
        return
    tied = model.lm_head.weight is model.tok_emb.weight
    compute = model.tok_emb.compute_dtype if storage is None else model.tok_emb.weight.dtype

    def embedding(old: nn.Embedding) -> nn.Embedding:
        if storage is None:
            return nn.Embedding(*old.weight.shape, _weight=old.weight.detach().to(compute))
        return CastEmbedding(old.weight.to(storage), compute)

    model.tok_emb = embedding(model.tok_emb)
    if isinstance(getattr(model, "pos_emb", None), nn.Embedding):
        model.pos_emb = embedding(model.pos_emb)
    if type(model.lm_head) not in (nn.Linear, CastLinear):  # an adapted head stays as it is
        return
    weight = model.tok_emb.weight if tied else nn.Parameter(model.lm_head.weight.detach().to(storage or compute),
                                                              requires_grad=False)
    if storage is None:
        model.lm_head = nn.Linear(weight.size(1), weight.size(0), bias=False, device="meta")
        model.lm_head.weight = weight
    else:
        model.lm_head = CastLinear(weight, compute)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_names(model: nn.Module) -> list[str]:
    return sorted({a for layer in lora_layers(model).values() for a in layer.adapters})


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Compute with adapter `name` (None: the bare base) and train only it; everything else is frozen."""
    if name is not None and name not in adapter_names(model):
        raise ConfigError(f"no LoRA adapter named {name!r}", hint=f"loaded adapters: {', '.join(adapter_names(model)) or 'none'}")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in lora_layers(model).values():
        layer.active = name if name in layer.adapters else None
        if layer.active is not None:
            for p in layer.adapters[name].parameters():
                p.requires_grad_(True)


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """Compute with the bare base inside the block (e.g. DPO's reference), then restore each layer's adapter."""
    layers = lora_layers(model).values()
    active = [layer.active for layer in layers]
    for layer in layers:
        layer.active = None
    try:
        yield model
    finally:
        for layer, name in zip(layers, active):
            layer.active = name


def parameter_counts(model: nn.Module, name: str | None = None) -> list[dict[str, int | str]]:
    """Per adapted matrix: its shape (d outputs, k inputs), rank r and trainable parameters r (d + k)."""
    rows = []
    for layer_name, layer in lora_layers(model).items():
        adapter = layer.adapters[name] if name else layer.adapters[layer.active] if layer.active else None
        if adapter is None:
            continue
        r = adapter.lora_A.shape[0]
        rows.append({"module": layer_name, "d": layer.out_features, "k": layer.in_features, "r": r,
                     "trainable": adapter.lora_A.numel() + adapter.lora_B.numel()})
    return rows


def base_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds in memory (a shared tensor once), its LoRA
    adapters left out: what the frozen base costs, as stored (4-bit codes, bf16, fp32)."""
    seen, total = set(), 0
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if "adapters." in name or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the active adapter into each weight and put plain `nn.Linear` layers back (in place).

    The result is an ordinary model with no adapters, as fast as the base, computing what the LoRA
    model computed; every parameter is trainable again, and QLoRA's bf16 embeddings are back in the
    model's dtype.
    """
    hold_embeddings(model, None)
    for layer_name, layer in lora_layers(model).items():
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device="meta")
        plain.weight = nn.Parameter(layer.merged_weight().detach().clone())
        if layer.bias is not None:
            plain.bias = nn.Parameter(layer.bias.detach().clone())
        parent_name, _, child = layer_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# --- adapters on disk -----------------------------------------------------------------------------------

def save_adapter(model: nn.Module, directory: str | os.PathLike, name: str | None = None,
                 metadata: dict[str, Any] | None = None) -> Path:
    """Write adapter `name` (default: the active one) alone: adapter.safetensors + adapter.json."""
    name = name or _active_name(model)
    directory = Path(directory)
    tensors, config = {}, None
    for layer_name, layer in lora_layers(model).items():
        if name in layer.adapters:
            adapter = layer.adapters[name]
            tensors[f"{layer_name}.lora_A"] = adapter.lora_A.detach().contiguous().cpu()
            tensors[f"{layer_name}.lora_B"] = adapter.lora_B.detach().contiguous().cpu()
            config = config or _adapter_config(adapter)
    if not tensors:
        raise ConfigError(f"the model has no LoRA adapter named {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": ADAPTER_FORMAT})
    base = getattr(model, "config", None)
    write_json(directory / ADAPTER_CONFIG, {
        "format": ADAPTER_FORMAT, "name": name, "lora": config,
        "modules": sorted({k.rsplit(".", 1)[0] for k in tensors}),
        "base_model": base.to_dict() if hasattr(base, "to_dict") else None,
        **(metadata or {}),
    })
    return directory


def _active_name(model: nn.Module) -> str:
    active = {layer.active for layer in lora_layers(model).values()} - {None}
    if len(active) != 1:
        raise ConfigError("name the adapter to save: the model has no single active adapter")
    return active.pop()


def _adapter_config(adapter: LoRAAdapter) -> dict[str, Any]:
    rank = adapter.lora_A.shape[0]
    return {"rank": rank, "alpha": adapter.scaling * rank, "dropout": adapter.dropout.p}


def read_adapter(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter.json, tensors) of a saved adapter, checked to be readable."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    except FileNotFoundError as e:
        raise CheckpointError(f"no LoRA adapter at {directory} ({Path(e.filename).name} is missing)",
                              hint="pass a directory written by save_adapter / llmlab sft --lora-rank") from e
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise CheckpointError(f"the LoRA adapter at {directory} is corrupt or truncated ({e})") from e
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{directory / ADAPTER_CONFIG} has format {meta.get('format')!r}, expected {ADAPTER_FORMAT!r}")
    return meta, tensors


def load_adapter(model: nn.Module, directory: str | os.PathLike, name: str | None = None,
                 activate: bool = True) -> str:
    """Add the adapter saved in `directory` to `model` under `name` (default: its saved name) and
    (by default) make it the active one. Returns the name. An adapter of that name already in the model
    is overwritten in place (how a LoRA run resumes)."""
    meta, tensors = read_adapter(directory)
    name = name or meta["name"]
    base = getattr(model, "config", None)
    # A value head (a reward model's, PPO's critic) sits beside the adapted layers: it does not change them.
    body = lambda config: {k: v for k, v in config.items() if k != "value_head"}  # noqa: E731
    if meta.get("base_model") and hasattr(base, "to_dict") and body(meta["base_model"]) != body(base.to_dict()):
        raise CheckpointError(f"the LoRA adapter at {directory} was trained on a different model architecture",
                              hint="load it into the base model it was trained from")
    config = LoRAConfig(targets=meta["modules"], **meta["lora"])
    existing = [n for n, layer in lora_layers(model).items() if name in layer.adapters]
    if sorted(existing) != sorted(meta["modules"]):
        if existing:
            raise CheckpointError(f"the model's adapter {name!r} covers other layers than the one at {directory}")
        add_lora(model, config, name)
    layers = lora_layers(model)
    with torch.no_grad():
        for module in meta["modules"]:
            adapter = layers[module].adapters[name]
            for part in ("lora_A", "lora_B"):
                saved = tensors.get(f"{module}.{part}")
                target = getattr(adapter, part)
                if saved is None or saved.shape != target.shape:
                    raise CheckpointError(f"the LoRA adapter at {directory} does not fit {module}.{part} "
                                          f"(saved {None if saved is None else tuple(saved.shape)}, model {tuple(target.shape)})")
                target.copy_(saved)
    if activate:
        set_adapter(model, name)
    return name
