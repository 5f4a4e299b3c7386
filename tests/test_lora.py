"""LoRA: equal to the base at initialisation, equal to its merged model after training, r(d+k) parameters,
adapters saved alone, several adapters switched, and state dicts that stay ordinary llmlab checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from llmlab.errors import CheckpointError, ConfigError
from llmlab.infer import Engine, SamplingParams
from llmlab.model import GPT, load_checkpoint, preset, save_checkpoint
from llmlab.train.lora import (LoRAAdapter, LoRAConfig, LoRALinear, adapters_off, add_lora, adapter_names, load_adapter, merge_lora,
                               parameter_counts, save_adapter, set_adapter, trainable_parameters)

FAMILIES = ["tiny", "tiny-llama"]


pytestmark = pytest.mark.usefixtures("one_thread")


def model_and_input(name: str, seed: int = 0) -> tuple[GPT, torch.Tensor]:
    torch.manual_seed(seed)
    model = GPT(preset(name))
    return model, torch.randint(0, model.config.vocab_size, (2, 24))


def train_a_little(model: nn.Module, x: torch.Tensor, steps: int = 5) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        _, loss = model(x, x.roll(-1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_output_equals_the_base_at_initialisation(name):
    model, x = model_and_input(name)
    model.eval()
    base_logits, _ = model(x)
    add_lora(model, LoRAConfig(rank=4, alpha=8))
    logits, _ = model(x)
    assert torch.equal(logits, base_logits)  # B = 0: exactly the base, not merely close
    assert all(isinstance(m, LoRALinear) for n, m in model.named_modules() if n.endswith(("qkv", "proj", "up", "down")))


@pytest.mark.parametrize("name", FAMILIES)
def test_trained_lora_equals_its_merged_model_and_leaves_the_base_alone(name):
    model, x = model_and_input(name)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.1))
    model.train()
    train_a_little(model, x)
    model.eval()
    lora_logits, _ = model(x)
    for layer in model.modules():  # the frozen weights did not move
        if isinstance(layer, LoRALinear):
            assert not layer.weight.requires_grad
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if "adapters" not in n)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(base)
    merged_logits, _ = merged(x)
    assert not torch.allclose(lora_logits, model_and_input(name)[0].eval()(x)[0])  # training changed something
    torch.testing.assert_close(merged_logits, lora_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, targets", [("tiny", ["qkv"]), ("tiny", ["qkv", "proj", "up", "down"]),
                                           ("tiny-llama", ["attn.proj", "mlp.up"])])
def test_trainable_parameters_are_r_times_d_plus_k_per_matrix(name, targets):
    model, _ = model_and_input(name)
    r = 3
    adapted = add_lora(model, LoRAConfig(rank=r, targets=targets))
    expected = 0
    for layer_name in adapted:
        d, k = model.get_submodule(layer_name).weight.shape  # nn.Linear stores W as (outputs d, inputs k)
        expected += r * (d + k)
    assert trainable_parameters(model) == expected
    assert sum(row["trainable"] for row in parameter_counts(model)) == expected
    assert all(row["trainable"] == row["r"] * (row["d"] + row["k"]) for row in parameter_counts(model))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".adapters.default.lora_" in n for n in trainable)
    assert len(adapted) == model.config.n_layers * len(targets)


def test_state_dict_is_the_merged_plain_model(tmp_path):
    model, x = model_and_input("tiny")
    plain_keys = set(model.state_dict())
    add_lora(model, LoRAConfig(rank=4))
    train_a_little(model, x)
    model.eval()
    assert set(model.state_dict()) == plain_keys
    save_checkpoint(tmp_path, model)
    loaded = load_checkpoint(tmp_path)  # an ordinary checkpoint: no LoRA code needed to use it
    torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)


def test_adapters_save_alone_load_and_switch(tmp_path):
    model, x = model_and_input("tiny")
    model.eval()
    base_logits = model(x)[0]
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    outputs = {}
    for name, seed in (("math", 1), ("style", 2)):
        torch.manual_seed(seed)
        add_lora(model, LoRAConfig(rank=2, alpha=4, targets=["qkv", "down"]), name)
        train_a_little(model, x.roll(seed, 1))
        model.eval()
        outputs[name] = model(x)[0].detach()
        save_adapter(model, tmp_path / name)
    files = sorted(p.name for p in (tmp_path / "math").iterdir())
    assert files == ["adapter.json", "adapter.safetensors"]
    assert (tmp_path / "math" / "adapter.safetensors").stat().st_size < 20_000  # the adapter only, not the model
    assert adapter_names(model) == ["math", "style"]
    set_adapter(model, "math")
    torch.testing.assert_close(model(x)[0], outputs["math"])
    with adapters_off(model):  # e.g. DPO's reference: the bare base, then the active adapter again
        assert torch.equal(model(x)[0], base_logits)
    torch.testing.assert_close(model(x)[0], outputs["math"])
    set_adapter(model, None)
    assert torch.equal(model(x)[0], base_logits)
    with pytest.raises(ConfigError, match="no LoRA adapter named 'nope'"):
        set_adapter(model, "nope")

    fresh = GPT(preset("tiny")).eval()
    fresh.load_state_dict(pristine)
    for name in ("style", "math"):
        assert load_adapter(fresh, tmp_path / name) == name
    assert adapter_names(fresh) == ["math", "style"]
    for name in ("math", "style", "math"):
        set_adapter(fresh, name)
        torch.testing.assert_close(fresh(x)[0], outputs[name])
    assert not torch.allclose(outputs["math"], outputs["style"])


def test_bad_targets_and_mismatched_adapters_are_refused(tmp_path):
    model, x = model_and_input("tiny")
    with pytest.raises(ConfigError, match="no linear layer matches"):
        add_lora(model, LoRAConfig(targets=["nothing"]))
    with pytest.raises(ConfigError, match="shares its weight with the token embedding"):
        add_lora(model, LoRAConfig(targets=["lm_head"]))
    with pytest.raises(ConfigError, match="rank must be at least 1"):
        LoRAConfig(rank=0)
    add_lora(model, LoRAConfig(rank=2))
    save_adapter(model, tmp_path / "a")
    other = GPT(preset("tiny", d_model=32))
    with pytest.raises(CheckpointError, match="different model architecture"):
        load_adapter(other, tmp_path / "a")
    (tmp_path / "a" / "adapter.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_adapter(GPT(preset("tiny")), tmp_path / "a")
    with pytest.raises(CheckpointError, match="no LoRA adapter at"):
        load_adapter(GPT(preset("tiny")), tmp_path / "missing")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lora_matches_hugging_face_peft_before_and_after_merging():
    """Parity with PEFT on the same GPT-2 weights and the same adapter values: outputs, merge, parameter count."""
    peft = pytest.importorskip("peft")
    from llmlab.model.hf import from_transformers, to_transformers

    model, x = model_and_input("tiny")
    model.eval()
    hf = to_transformers(model)
    config = peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"],
                             fan_in_fan_out=True)  # GPT-2's Conv1D stores weights as (in, out)
    reference = peft.get_peft_model(hf, config).eval()
    add_lora(model, LoRAConfig(rank=4, alpha=12))
    names = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}
    torch.manual_seed(1)
    with torch.no_grad():
        for i in range(model.config.n_layers):
            for hf_name, name in names.items():
                theirs = reference.get_submodule(f"base_model.model.transformer.h.{i}.{hf_name}")
                mine = model.get_submodule(f"blocks.{i}.{name}").adapters["default"]
                theirs.lora_B["default"].weight.normal_(std=0.05)  # PEFT starts B at zero too: make it count
                mine.lora_A.copy_(theirs.lora_A["default"].weight)
                mine.lora_B.copy_(theirs.lora_B["default"].weight)
    trainable, _ = reference.get_nb_trainable_parameters()
    assert trainable_parameters(model) == trainable
    expected = reference(x).logits
    torch.testing.assert_close(model(x)[0], expected, rtol=1e-4, atol=1e-5)
    merged_reference = from_transformers(reference.merge_and_unload()).eval()
    merged = merge_lora(model)
    for key, value in merged_reference.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged(x)[0], expected, rtol=1e-4, atol=1e-5)


# --- QLoRA: LoRA on a 4-bit NormalFloat base -------------------------------------------------------------

def test_normal_float_levels_are_the_qlora_papers():
    from llmlab.model.nf4 import normal_float_levels

    # Dettmers et al. 2023 (QLoRA), appendix E: the NF4 data type's 16 values.
    published = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
    assert torch.allclose(normal_float_levels(), torch.tensor(published), atol=1e-6)


def test_nf4_beats_evenly_spaced_4_bit_levels_on_normal_weights():
    """With the same storage (16 levels, one absmax per 64 weights), quantiles of the normal distribution
    fit normally distributed weights better than evenly spaced levels do."""
    from llmlab.model.nf4 import NF4Linear

    torch.manual_seed(0)
    linear = nn.Linear(512, 256)
    nn.init.normal_(linear.weight, std=0.02)
    nf4 = NF4Linear(linear)
    blocks = linear.weight.detach().reshape(-1, 64)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    even = torch.linspace(-1, 1, 16)
    nearest = even[(blocks / absmax)[..., None].sub(even).abs().argmin(-1)] * absmax
    nf4_error = (nf4.dequantize() - linear.weight).pow(2).mean()
    assert nf4_error < 0.9 * (nearest.view_as(linear.weight) - linear.weight).pow(2).mean()  # 0.84 here
    assert nf4.packed.numel() + 4 * nf4.absmax.numel() < 0.15 * 4 * linear.weight.numel()  # 4.5 bits per weight


@pytest.mark.parametrize("name", FAMILIES)
def test_qlora_trains_adapters_on_a_frozen_nf4_base_and_saves_plain_merged_weights(name, tmp_path):
    from llmlab.model.nf4 import NF4Linear
    from llmlab.train.lora import QLoRALinear

    model, x = model_and_input(name)
    plain_keys = set(model.state_dict())
    reference = GPT(model.config).eval()
    reference.load_state_dict(model.state_dict())
    add_lora(model, LoRAConfig(rank=4, alpha=8, quantize="nf4"))
    layers = [m for m in model.modules() if isinstance(m, QLoRALinear)]
    assert layers and all(isinstance(m.quantized, NF4Linear) for m in layers)
    model.eval()
    with torch.no_grad():  # at initialisation: the base with each adapted matrix rounded to NF4
        for name_, module in reference.named_modules():  # and the embeddings and head to bf16
            if isinstance(module, nn.Linear) and name_.endswith(("qkv", "proj", "up", "down")):
                module.weight.copy_(NF4Linear(module).dequantize())
            elif isinstance(module, nn.Embedding) or name_ == "lm_head":
                module.weight.copy_(module.weight.bfloat16())
        torch.testing.assert_close(model(x)[0], reference(x)[0], rtol=1e-5, atol=1e-5)
    quantized = sum(m.quantized.packed.numel() + 4 * m.quantized.absmax.numel() for m in layers)
    assert quantized <= 0.15 * sum(4 * m.in_features * m.out_features for m in layers)
    model.train()
    train_a_little(model, x)
    assert trainable_parameters(model) == sum(4 * (m.in_features + m.out_features) for m in layers)
    model.eval()
    assert set(model.state_dict()) == plain_keys  # merged, plain names: an ordinary checkpoint
    save_checkpoint(tmp_path, model)
    torch.testing.assert_close(load_checkpoint(tmp_path)(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_qlora_holds_its_base_in_under_0_3x_of_fp32_with_one_tied_bf16_embedding(name, tmp_path):
    from llmlab.model.frozen import CastEmbedding, CastLinear, compute_dtype
    from llmlab.train.lora import base_bytes

    model, x = model_and_input(name)
    fp32 = base_bytes(model)
    add_lora(model, LoRAConfig(rank=4, quantize="nf4"))
    assert base_bytes(model) < 0.3 * fp32  # NF4 matrices, bf16 embeddings and head
    assert isinstance(model.tok_emb, CastEmbedding) and isinstance(model.lm_head, CastLinear)
    assert model.tok_emb.weight.dtype == torch.bfloat16 and not model.tok_emb.weight.requires_grad
    assert (model.lm_head.weight is model.tok_emb.weight) == model.config.tie_embeddings  # tied: one tensor
    train_a_little(model, x, steps=2)
    model.eval()
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())  # checkpoints stay fp32
    assert compute_dtype(model) == torch.float32  # what a KV cache is allocated in
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    cached = Engine(model).generate([[1, 2, 3], [7]], greedy)  # the continuous batcher and its cache
    assert [c.token_ids for c in cached] == [c.token_ids for c in Engine(model, use_kv_cache=False).generate(
        [[1, 2, 3], [7]], greedy)]
    logits = model(x)[0]
    save_checkpoint(tmp_path, model)
    torch.testing.assert_close(load_checkpoint(tmp_path)(x)[0], logits, rtol=1e-5, atol=1e-5)
    merged = merge_lora(model)  # an ordinary fp32 model again, tied as before
    assert type(merged.tok_emb) is nn.Embedding and type(merged.lm_head) is nn.Linear
    assert all(p.dtype == torch.float32 and p.requires_grad for p in merged.parameters())
    assert (merged.lm_head.weight is merged.tok_emb.weight) == model.config.tie_embeddings
    torch.testing.assert_close(merged(x)[0], logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_embeddings_and_head_barely_move_the_logits(name):
    """QLoRA's bf16 storage of the unquantized weights (8 significant bits) against the fp32 model."""
    from llmlab.train.lora import hold_embeddings

    model, x = model_and_input(name)
    model.eval().requires_grad_(False)
    logits, loss = model(x)[0], model(x, x.roll(-1, 1))[1]
    hold_embeddings(model, torch.bfloat16)
    held_logits, held_loss = model(x)[0], model(x, x.roll(-1, 1))[1]
    assert held_logits.dtype == torch.float32 and not torch.equal(held_logits, logits)
    error = (held_logits - logits).abs() / logits.std()
    assert error.mean() < 0.003 and error.max() < 0.02  # bf16's relative rounding is 2^-9 = 0.002
    assert abs(held_loss - loss) < 1e-3 * loss


def test_qlora_backward_keeps_the_4_bit_base_not_an_fp32_copy():
    """The input's and the adapters' gradients are those of LoRA on the dequantized matrix, while autograd
    saves the packed codes between the passes instead of the fp32 weight."""
    from llmlab.model.nf4 import NF4Linear
    from llmlab.train.lora import QLoRALinear

    torch.manual_seed(0)
    linear = nn.Linear(256, 384)
    qlora = QLoRALinear(NF4Linear(linear))
    reference = LoRALinear(nn.Linear(256, 384))
    with torch.no_grad():
        reference.weight.copy_(qlora.quantized.dequantize())
        reference.bias.copy_(linear.bias)
    for layer in (qlora, reference):
        torch.manual_seed(1)
        layer.adapters["default"] = LoRAAdapter(256, 384, LoRAConfig(rank=4))
        layer.active = "default"
        with torch.no_grad():
            layer.adapters["default"].lora_B.normal_()
    x = torch.randn(2, 8, 256)

    def grads_and_saved_bytes(layer, weight_requires_grad):
        layer.weight.requires_grad_(weight_requires_grad) if weight_requires_grad is not None else None
        layer.bias.requires_grad_(False)
        saved = []
        inp = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            y = layer(inp)
        y.pow(2).sum().backward()
        adapter = layer.adapters["default"]
        return [inp.grad, adapter.lora_A.grad, adapter.lora_B.grad], sum(saved)

    got, saved = grads_and_saved_bytes(qlora, None)
    expected, saved_reference = grads_and_saved_bytes(reference, False)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    fp32_weight = 4 * 256 * 384
    assert saved_reference >= fp32_weight  # LoRA keeps the whole matrix for the input's gradient
    assert saved_reference - saved > 0.8 * fp32_weight  # QLoRA: 4.5 bits per weight instead of 32


def test_expanded_weights_dequantizes_each_nf4_matrix_once_and_computes_the_same():
    from llmlab.model.nf4 import NF4Linear, expanded_weights

    model, x = model_and_input(FAMILIES[0])
    add_lora(model, LoRAConfig(rank=4, quantize="nf4"))
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, NF4Linear)]
    calls = []
    for layer in layers:
        layer.expand = (lambda f: lambda *a: calls.append(1) or f(*a))(layer.expand)
    with torch.no_grad():
        expected = model(x)[0]
        assert len(calls) == len(layers)  # without the block: every pass expands every matrix
        with expanded_weights(model):
            got = [model(x)[0] for _ in range(3)]
        assert len(calls) == 2 * len(layers)
    assert all(layer.expanded is None for layer in layers)  # the fp32 copies are dropped afterwards
    for logits in got:
        torch.testing.assert_close(logits, expected)


def test_lora_imports_no_later_stage():
    """Training may build on the model stage, never on inference, evaluation or serving."""
    import ast

    import llmlab.train.lora

    tree = ast.parse(Path(llmlab.train.lora.__file__).read_text(encoding="utf-8"))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith(("llmlab.infer", "llmlab.eval", "llmlab.serve"))]
