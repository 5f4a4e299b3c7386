"""Hugging Face interop: import and export `GPT2LMHeadModel`, `LlamaForCausalLM` and `MixtralForCausalLM` checkpoints.

A Hugging Face checkpoint is a directory with `config.json` and `model.safetensors` (or shards listed
in `model.safetensors.index.json`). Both families map onto llmlab's one `GPT` by renaming tensors:

    GPT-2 (transformer.)          llmlab                  Llama (model.)
    wte / wpe                     tok_emb / pos_emb       embed_tokens / -
    h.i.ln_1                      blocks.i.attn_norm      layers.i.input_layernorm
    h.i.attn.c_attn (Conv1D, T)   blocks.i.attn.qkv       layers.i.self_attn.{q,k,v}_proj  (concatenated)
    h.i.attn.c_proj (Conv1D, T)   blocks.i.attn.proj      layers.i.self_attn.o_proj
    h.i.ln_2                      blocks.i.mlp_norm       layers.i.post_attention_layernorm
    h.i.mlp.c_fc (Conv1D, T)      blocks.i.mlp.up         layers.i.mlp.{gate,up}_proj      (concatenated)
    h.i.mlp.c_proj (Conv1D, T)    blocks.i.mlp.down       layers.i.mlp.down_proj
    ln_f                          final_norm              norm
    lm_head (or tied to wte)      lm_head                 lm_head (or tied)

Mixtral is Llama with a mixture of experts in place of each MLP: `layers.i.block_sparse_moe.gate` is
llmlab's `blocks.i.mlp.router`, and expert j's `w1`/`w3` (gate/up) and `w2` (down) are row j of
`blocks.i.mlp.experts_up` ([w1; w3]) and `experts_down`.

GPT-2's `Conv1D` stores weights as (in, out), the transpose of `nn.Linear`. Llama's rotary layout
(rotate the two halves of each head) is the one llmlab uses, so q and k need no permutation here
(GGUF files are different: see `llmlab.model.gguf`).

    model = load_hf("path/to/hf_dir")              # -> GPT
    save_hf(model, "out_dir")                      # GPT-2- or Llama-shaped config picked from the model
    model = from_transformers(hf_model)            # in memory, for tests and notebooks
    hf_model = to_transformers(model)              # needs `transformers` (the `hf` extra)

Reading and writing needs only `safetensors`; `transformers` is imported only by the in-memory helpers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmlab.errors import CheckpointError, ConfigError
from llmlab.files import atomic_path, write_json
from llmlab.model.checkpoint import model_from_state_dict
from llmlab.model.config import GPTConfig
from llmlab.model.transformer import GPT

GPT2 = "gpt2"
LLAMA = "llama"
MIXTRAL = "mixtral"
ARCHITECTURES = {GPT2: "GPT2LMHeadModel", LLAMA: "LlamaForCausalLM", MIXTRAL: "MixtralForCausalLM"}

# GPT-2's `activation_function` names <-> llmlab's `activation`.
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_GPT2_ACTIVATION_NAMES = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


# ---------------------------------------------------------------------------------------------------
# Configs


def hf_family(hf_config: dict[str, Any]) -> str:
    """"gpt2", "llama" or "mixtral" for a Hugging Face config.json dict; ConfigError for anything else."""
    model_type = hf_config.get("model_type")
    archs = hf_config.get("architectures") or []
    for family, architecture in ARCHITECTURES.items():
        if model_type == family or architecture in archs:
            return family
    raise ConfigError(
        f"unsupported Hugging Face model type {model_type!r} (architectures {archs})",
        hint="llmlab imports GPT2LMHeadModel, LlamaForCausalLM and MixtralForCausalLM checkpoints",
    )


def _rope_theta(hf: dict[str, Any]) -> float:
    """transformers >= 5 keeps RoPE settings in `rope_parameters`; older configs use `rope_theta` + `rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(
            f"RoPE scaling {rope_type!r} is not supported", hint="llmlab implements plain RoPE (rope_type 'default')"
        )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict[str, Any]) -> GPTConfig:
    """The GPTConfig equivalent to a Hugging Face GPT-2 or Llama config.json (dropout set to 0)."""
    family = hf_family(hf)
    if family == GPT2:
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
            raise ConfigError("GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported")
        act = hf.get("activation_function", "gelu_new")
        if act not in _GPT2_ACTIVATIONS:
            raise ConfigError(f"GPT-2 activation {act!r} is not supported; known: {', '.join(_GPT2_ACTIVATIONS)}")
        return GPTConfig(
            vocab_size=hf["vocab_size"], context_length=hf.get("n_positions", 1024), n_layers=hf["n_layer"],
            n_heads=hf["n_head"], d_model=hf["n_embd"], d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
            positions="learned", activation=_GPT2_ACTIVATIONS[act], norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True), dropout=0.0,
            init_std=hf.get("initializer_range", 0.02),
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"Llama hidden_act {hf.get('hidden_act')!r} is not supported (llmlab's SwiGLU uses silu)")
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
        raise ConfigError("Llama configs with attention_bias != mlp_bias are not supported (llmlab has one `bias`)")
    n_heads = hf["num_attention_heads"]
    moe = {}
    if family == MIXTRAL:
        window = hf.get("sliding_window")
        if window and window < hf.get("max_position_embeddings", 2048):
            raise ConfigError(f"Mixtral's sliding-window attention ({window} positions) is not supported")
        moe = dict(n_experts=hf["num_local_experts"], experts_per_token=hf["num_experts_per_tok"],
                   router_aux_loss=hf.get("router_aux_loss_coef", 0.001), router_jitter=hf.get("router_jitter_noise", 0.0),
                   routed_scale=1.0)
    return GPTConfig(
        vocab_size=hf["vocab_size"], context_length=hf.get("max_position_embeddings", 2048),
        n_layers=hf["num_hidden_layers"], n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        d_model=hf["hidden_size"], head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        d_ff=hf["intermediate_size"], positions="rope", rope_theta=_rope_theta(hf), activation="swiglu",
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), bias=bool(hf.get("attention_bias", False)),
        tie_embeddings=hf.get("tie_word_embeddings", False), dropout=0.0,
        init_std=hf.get("initializer_range", 0.02), **moe,
    )


def family_of(config: GPTConfig) -> str:
    """Which Hugging Face family can hold `config`: "gpt2", "llama" or "mixtral"; ConfigError naming what doesn't fit."""
    gpt2 = {
        "positions": ("learned", config.positions == "learned"),
        "norm": ("layernorm", config.norm == "layernorm"),
        "activation": ("gelu/gelu_tanh/relu", config.activation in _GPT2_ACTIVATION_NAMES),
        "bias": (True, config.bias),
        "n_kv_heads": ("n_heads", config.n_kv_heads == config.n_heads),
        "head_dim": ("d_model / n_heads", config.head_dim * config.n_heads == config.d_model),
        "n_experts": (0, config.n_experts == 0),
    }
    llama = {
        "positions": ("rope", config.positions == "rope"),
        "norm": ("rmsnorm", config.norm == "rmsnorm"),
        "activation": ("swiglu", config.activation == "swiglu"),
        "n_experts": (0, config.n_experts == 0),
    }
    mixtral = {**llama, "n_experts": ("at least 2", config.n_experts >= 2), "bias": (False, not config.bias),
               "n_shared_experts": (0, config.n_shared_experts == 0)}
    families = ((GPT2, gpt2), (LLAMA, llama), (MIXTRAL, mixtral))
    if config.norm_placement == "pre":
        for family, checks in families:
            if all(ok for _, ok in checks.values()):
                return family
    why = "; ".join(
        f"{ARCHITECTURES[name]}: " + ", ".join(f"{field} must be {want}" for field, (want, ok) in checks.items() if not ok)
        for name, checks in families
    )
    if config.norm_placement != "pre":
        why = "both are pre-norm; " + why
    raise ConfigError(f"this config has no Hugging Face equivalent ({why})")


def config_to_hf(config: GPTConfig) -> dict[str, Any]:
    """A Hugging Face config.json dict (GPT2LMHeadModel or LlamaForCausalLM) for `config`."""
    family = family_of(config)
    c = config
    if family == GPT2:
        hf = {
            "model_type": "gpt2", "vocab_size": c.vocab_size, "n_positions": c.context_length, "n_embd": c.d_model,
            "n_layer": c.n_layers, "n_head": c.n_heads, "n_inner": c.d_ff,
            "activation_function": _GPT2_ACTIVATION_NAMES[c.activation], "layer_norm_epsilon": c.norm_eps,
            "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
            "scale_attn_weights": True, "bos_token_id": None, "eos_token_id": None,
        }
    else:
        hf = {
            "model_type": "llama", "vocab_size": c.vocab_size, "max_position_embeddings": c.context_length,
            "hidden_size": c.d_model, "intermediate_size": c.d_ff, "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
            "hidden_act": "silu", "rms_norm_eps": c.norm_eps, "attention_bias": c.bias, "mlp_bias": c.bias,
            "attention_dropout": c.dropout,
            # transformers >= 5 reads rope_parameters; earlier versions read rope_theta.
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}, "rope_theta": c.rope_theta,
            "bos_token_id": None, "eos_token_id": None,
        }
        if family == MIXTRAL:
            hf.update(model_type="mixtral", num_local_experts=c.n_experts, num_experts_per_tok=c.experts_per_token,
                      router_aux_loss_coef=c.router_aux_loss, router_jitter_noise=c.router_jitter,
                      output_router_logits=False, sliding_window=None)
            for key in ("attention_bias", "mlp_bias"):
                hf.pop(key)
    hf.update(architectures=[ARCHITECTURES[family]], tie_word_embeddings=c.tie_embeddings,
              initializer_range=c.init_std, dtype="float32", use_cache=True)
    return hf


# ---------------------------------------------------------------------------------------------------
# Tensors


def tensor_layout(config: GPTConfig, family: str) -> list[tuple[str, list[tuple[str, int]], bool]]:
    """Where each llmlab tensor lives in a Hugging Face checkpoint of `family`:
    [(llmlab name, [(HF name, rows), ...], transposed)]. Several HF names are concatenated along the
    output dimension in llmlab (fused q/k/v, fused [gate; up]); `transposed` marks GPT-2's Conv1D,
    which stores (in, out)."""
    c = config
    layout: list[tuple[str, list[tuple[str, int]], bool]] = []

    def add(ours: str, parts: list[tuple[str, int]], transposed: bool = False, bias: bool = False) -> None:
        layout.append((ours + ".weight", [(n + ".weight", r) for n, r in parts], transposed))
        if bias:
            layout.append((ours + ".bias", [(n + ".bias", r) for n, r in parts], False))

    d, q, kv = c.d_model, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    if family == GPT2:
        t = "transformer."
        add("tok_emb", [(t + "wte", c.vocab_size)])
        add("pos_emb", [(t + "wpe", c.context_length)])
        for i in range(c.n_layers):
            h, b = f"{t}h.{i}.", f"blocks.{i}."
            add(b + "attn_norm", [(h + "ln_1", d)], bias=True)
            add(b + "attn.qkv", [(h + "attn.c_attn", 3 * d)], transposed=True, bias=True)
            add(b + "attn.proj", [(h + "attn.c_proj", d)], transposed=True, bias=True)
            add(b + "mlp_norm", [(h + "ln_2", d)], bias=True)
            add(b + "mlp.up", [(h + "mlp.c_fc", c.d_ff)], transposed=True, bias=True)
            add(b + "mlp.down", [(h + "mlp.c_proj", d)], transposed=True, bias=True)
        add("final_norm", [(t + "ln_f", d)], bias=True)
    else:
        m = "model."
        add("tok_emb", [(m + "embed_tokens", c.vocab_size)])
        for i in range(c.n_layers):
            h, b = f"{m}layers.{i}.", f"blocks.{i}."
            add(b + "attn_norm", [(h + "input_layernorm", d)])
            qkv = [(h + "self_attn.q_proj", q), (h + "self_attn.k_proj", kv), (h + "self_attn.v_proj", kv)]
            add(b + "attn.qkv", qkv, bias=c.bias)
            add(b + "attn.proj", [(h + "self_attn.o_proj", d)], bias=c.bias)
            add(b + "mlp_norm", [(h + "post_attention_layernorm", d)])
            if family == MIXTRAL:  # expert tensors: each expert's pieces, expert after expert, along rows
                moe = h + "block_sparse_moe."
                experts = [f"{moe}experts.{j}." for j in range(c.n_experts)]
                add(b + "mlp.router", [(moe + "gate", c.n_experts)])
                layout.append((b + "mlp.experts_up", [(e + w + ".weight", c.d_ff) for e in experts for w in ("w1", "w3")], False))
                layout.append((b + "mlp.experts_down", [(e + "w2.weight", d) for e in experts], False))
                continue
            add(b + "mlp.up", [(h + "mlp.gate_proj", c.d_ff), (h + "mlp.up_proj", c.d_ff)], bias=c.bias)
            add(b + "mlp.down", [(h + "mlp.down_proj", d)], bias=c.bias)
        add("final_norm", [(m + "norm", d)])
    if not c.tie_embeddings:
        add("lm_head", [("lm_head", c.vocab_size)])
    return layout


EXPERT_TENSORS = ("experts_up", "experts_down")


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], config: GPTConfig, family: str) -> dict[str, torch.Tensor]:
    """Hugging Face tensors renamed (fused, transposed) into llmlab's state dict. KeyError if one is missing."""
    if family == GPT2:  # original GPT-2 files have no "transformer." prefix; transformers' own have it
        hf_state = {k if k.startswith("transformer.") or k == "lm_head.weight" else "transformer." + k: v
                    for k, v in hf_state.items()}
    out = {}
    for ours, parts, transposed in tensor_layout(config, family):
        tensors = [hf_state[name] for name, _ in parts]
        tensor = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        if ours.endswith(EXPERT_TENSORS):  # (E * rows, cols) -> (E, rows, cols)
            tensor = tensor.view(config.n_experts, -1, tensor.size(-1))
        out[ours] = tensor.t().contiguous() if transposed else tensor
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """llmlab's state dict renamed into the Hugging Face family `family_of(config)`; a tied head is left out."""
    out = {}
    for ours, parts, transposed in tensor_layout(config, family_of(config)):
        tensor = state[ours].t() if transposed else state[ours]
        if ours.endswith("experts_down"):  # Mixtral sums its experts unscaled: the scale goes into w2
            tensor = tensor * config.routed_output_scale
        tensor = tensor.flatten(0, 1) if ours.endswith(EXPERT_TENSORS) else tensor
        pieces = tensor.split([rows for _, rows in parts]) if len(parts) > 1 else [tensor]
        out.update({name: piece.contiguous() for (name, _), piece in zip(parts, pieces)})
    return out


# ---------------------------------------------------------------------------------------------------
# Directories


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    files = [directory / "model.safetensors"]
    if not files[0].is_file() and index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = [directory / f for f in sorted(set(weight_map.values()))]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            hint = "llmlab reads safetensors only (never pickled pytorch_model.bin)"
            raise CheckpointError(f"{f} is missing", hint=hint)
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f} is corrupt or truncated ({e})") from e
    return state


def load_hf(
    directory: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> GPT:
    """A GPT (eval mode) from a Hugging Face GPT2LMHeadModel, LlamaForCausalLM or MixtralForCausalLM directory."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} is missing", hint="a Hugging Face checkpoint holds config.json + safetensors")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e})") from e
    config = config_from_hf(hf_config)
    hf_state = _read_hf_weights(directory)
    try:
        state = state_dict_from_hf(hf_state, config, hf_family(hf_config))
        return model_from_state_dict(config, state, device=device, dtype=dtype)
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"the weights in {directory} do not match its config.json ({e})") from e


def save_hf(model: GPT, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write `model` as a Hugging Face checkpoint (config.json + model.safetensors) that
    `AutoModelForCausalLM.from_pretrained(directory)` loads. ConfigError if no HF family fits."""
    directory = Path(directory)
    config = model.config
    hf_config = config_to_hf(config)  # validates before anything is written
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    hf_state = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state_dict_to_hf(state, config).items()}
    if dtype is not None:
        hf_config["dtype"] = str(dtype).removeprefix("torch.")
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(hf_state, str(tmp), metadata={"format": "pt"})
    write_json(directory / "config.json", hf_config)
    return directory


# ---------------------------------------------------------------------------------------------------
# In memory (needs transformers)


def from_transformers(hf_model: Any) -> GPT:
    """Copy a `transformers` GPT2LMHeadModel, LlamaForCausalLM or MixtralForCausalLM (in memory) into a
    new GPT. Mixtral goes through a checkpoint directory: its in-memory tensors are laid out differently
    from its files, and the files are the format that lasts."""
    hf_config = hf_model.config.to_dict()
    config = config_from_hf(hf_config)
    if hf_family(hf_config) == MIXTRAL:
        with tempfile.TemporaryDirectory() as tmp:
            hf_model.save_pretrained(tmp)
            return load_hf(tmp)
    state = state_dict_from_hf(dict(hf_model.state_dict()), config, hf_family(hf_config))
    return model_from_state_dict(config, {k: v.detach().clone() for k, v in state.items()})


def to_transformers(model: GPT) -> Any:
    """The equivalent `transformers` model (GPT2LMHeadModel, LlamaForCausalLM or MixtralForCausalLM),
    weights copied, eval mode."""
    import transformers

    hf_config = config_to_hf(model.config)
    family = hf_config.pop("model_type")
    hf_config.pop("architectures")
    if family == MIXTRAL:
        with tempfile.TemporaryDirectory() as tmp:
            save_hf(model, tmp)
            return transformers.MixtralForCausalLM.from_pretrained(tmp).eval()
    cls_config = transformers.GPT2Config if family == GPT2 else transformers.LlamaConfig
    cls_model = transformers.GPT2LMHeadModel if family == GPT2 else transformers.LlamaForCausalLM
    hf_model = cls_model(cls_config(**hf_config))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    missing, unexpected = hf_model.load_state_dict(state_dict_to_hf(state, model.config), strict=False)
    missing = [k for k in missing if not (model.config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    if model.config.tie_embeddings:
        hf_model.tie_weights()
    return hf_model.eval()
