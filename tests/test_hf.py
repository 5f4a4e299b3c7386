"""Hugging Face parity: models transformers builds itself (random weights, no download) give llmlab
the same logits after import, and llmlab models exported to transformers give the same logits back."""

import json

import pytest
import torch

from llmlab.errors import CheckpointError, ConfigError
from llmlab.model import GPT, preset
from llmlab.model.hf import config_from_hf, from_transformers, load_hf, save_hf, to_transformers

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # fp32

GPT2_CONFIGS = {
    "gpt2-tied": dict(),
    "gpt2-untied": dict(tie_word_embeddings=False),
    "gpt2-relu-ninner": dict(activation_function="relu", n_inner=96),
    "gpt2-exact-gelu": dict(activation_function="gelu", layer_norm_epsilon=1e-6),
}
LLAMA_CONFIGS = {
    "llama-mha-untied": dict(num_key_value_heads=4),
    "llama-gqa-tied": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "llama-mqa": dict(num_key_value_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    "llama-bias-headdim": dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True, head_dim=24),
}
MIXTRAL_CONFIGS = {  # Llama with a mixture of experts in each layer
    "mixtral-gqa-top2": dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "mixtral-top1-of-8-mqa": dict(num_key_value_heads=1, num_local_experts=8, num_experts_per_tok=1,
                                  tie_word_embeddings=True),
}


def hf_gpt2(**kw):
    base = dict(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0)
    base.update(kw)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**base)).eval()


def hf_llama(mixtral=False, **kw):
    base = dict(vocab_size=300, max_position_embeddings=64, hidden_size=64, intermediate_size=160,
                num_hidden_layers=2, num_attention_heads=4, rms_norm_eps=1e-6)
    base.update(kw)
    torch.manual_seed(0)
    if mixtral:
        model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**base)).eval()
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**base)).eval()
    with torch.no_grad():  # norms start at exactly 1; perturb them so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def make_hf(name):
    if name in MIXTRAL_CONFIGS:
        return hf_llama(mixtral=True, **MIXTRAL_CONFIGS[name])
    return hf_gpt2(**GPT2_CONFIGS[name]) if name in GPT2_CONFIGS else hf_llama(**LLAMA_CONFIGS[name])


def tokens(vocab=300, batch=2, length=23):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", [*GPT2_CONFIGS, *LLAMA_CONFIGS, *MIXTRAL_CONFIGS])
def test_transformers_model_imports_with_same_logits(name):
    hf = make_hf(name)
    ours = from_transformers(hf)
    x = tokens()
    with torch.no_grad():
        assert max_diff(ours(x)[0], hf(x).logits) < TOL
    assert ours.num_params() == hf.num_parameters()


@pytest.mark.parametrize("name", [*GPT2_CONFIGS, *LLAMA_CONFIGS, *MIXTRAL_CONFIGS])
def test_save_pretrained_directory_loads_with_same_logits(tmp_path, name):
    hf = make_hf(name)
    hf.save_pretrained(tmp_path)  # config.json + model.safetensors, transformers' own writer
    ours = load_hf(tmp_path)
    x = tokens()
    with torch.no_grad():
        assert max_diff(ours(x)[0], hf(x).logits) < TOL
    assert ours.config.tie_embeddings == hf.config.tie_word_embeddings
    if ours.config.tie_embeddings:
        assert ours.lm_head.weight is ours.tok_emb.weight


LLMLAB_EXPORTABLE = {
    "gpt2": preset("tiny"),
    "gpt2-untied": preset("tiny", tie_embeddings=False),
    "llama-gqa": preset("tiny-llama"),
    "llama-mqa-tied": preset("tiny-llama", n_kv_heads=1, tie_embeddings=True, rope_theta=1e5),
    "mixtral": preset("tiny-llama", n_experts=4, experts_per_token=2),
}
ARCHITECTURE = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}


@pytest.mark.parametrize("name", LLMLAB_EXPORTABLE)
def test_exported_model_loads_in_transformers_with_same_logits(tmp_path, name):
    torch.manual_seed(0)
    ours = GPT(LLMLAB_EXPORTABLE[name]).eval()
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    save_hf(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE[name.split("-")[0]]]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = tokens(vocab=ours.config.vocab_size)
    with torch.no_grad():
        want = ours(x)[0]
        assert max_diff(hf(x).logits, want) < TOL
        assert max_diff(to_transformers(ours)(x).logits, want) < TOL  # in memory, same mapping
        assert torch.equal(load_hf(tmp_path)(x)[0], want)  # and back: exactly the same weights


def test_padded_batch_and_loss_match_transformers():
    hf = hf_llama(num_key_value_heads=2)
    ours = from_transformers(hf)
    x = tokens(length=12)
    mask = torch.ones_like(x)
    mask[0, :4] = 0  # left padding of the first row
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        _, loss = ours(x[:, :-1], targets=x[:, 1:])
        assert abs(loss.item() - hf(x, labels=x).loss.item()) < TOL  # HF shifts the labels itself
        want = hf(x, attention_mask=mask, position_ids=positions)
        got = ours(x, attention_mask=mask, position_ids=positions)[0]
    real = mask.bool()
    assert max_diff(got[real], want.logits[real]) < TOL


def test_unsupported_configs_are_refused_with_reasons():
    with pytest.raises(ConfigError, match="no Hugging Face equivalent"):
        save_hf(GPT(preset("tiny", norm_placement="post")), "/nonexistent")
    with pytest.raises(ConfigError, match="positions must be"):
        save_hf(GPT(preset("tiny", positions="sinusoidal")), "/nonexistent")
    with pytest.raises(ConfigError, match="RoPE scaling"):
        config_from_hf({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_attention_heads": 2,
                        "num_hidden_layers": 1, "intermediate_size": 16,
                        "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ConfigError, match="n_shared_experts must be 0"):  # DeepSeekMoE's shared experts
        save_hf(GPT(preset("tiny-llama", n_experts=4, n_shared_experts=1)), "/nonexistent")
    with pytest.raises(ConfigError, match="unsupported Hugging Face model type"):
        config_from_hf({"model_type": "mistral"})


def test_missing_weights_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_hf(tmp_path)
    hf_gpt2().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_hf(tmp_path)


def test_original_gpt2_names_without_prefix_load(tmp_path):
    from safetensors.torch import save_file

    hf = hf_gpt2()
    hf.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))  # as the original openai-community/gpt2 file names them
    x = tokens()
    with torch.no_grad():
        assert max_diff(load_hf(tmp_path)(x)[0], hf(x).logits) < TOL
