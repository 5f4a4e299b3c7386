"""Weight-only int8 / int4 quantization: exact packing, small error, real memory savings, bounded perplexity."""

import pytest
import torch
import torch.nn as nn

from llmlab.errors import ConfigError
from llmlab.infer import Engine, SamplingParams
from llmlab.infer.quantize import (
    Int4Linear, Int8Linear, int8_kernel_available, int8_per_token, model_bytes, perplexity, quantize_model,
)
from llmlab.model import GPT, preset


pytestmark = pytest.mark.usefixtures("one_thread")


def test_int8_linear_matches_dequantized_weights_and_the_original():
    torch.manual_seed(0)
    linear = nn.Linear(128, 48)
    q = Int8Linear(linear)
    x = torch.randn(5, 7, 128)
    w = q.dequantize()
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.abs().max() == 127
    assert (w - linear.weight).abs().max() <= q.scale.max() / 2 + 1e-7  # rounding error at most half a step
    torch.testing.assert_close(q.reference(x), nn.functional.linear(x, w, linear.bias), rtol=1e-4, atol=1e-5)
    rel = (q(x) - linear(x)).norm() / linear(x).norm()
    assert rel < 0.01


@pytest.mark.skipif(not int8_kernel_available(), reason="no FBGEMM int8 kernel on this CPU")
@pytest.mark.parametrize("rows", [1, 256])
def test_int8_kernel_matches_the_dequantized_reference(rows):
    torch.manual_seed(rows)
    q = Int8Linear(nn.Linear(192, 96))
    x = torch.randn(rows, 192)
    fast, ref = q(x), q.reference(x)
    assert q.packed is not None  # the integer kernel ran, not the reference
    # Only the activations' 8-bit rounding separates them: well under 1% of the output's size.
    assert (fast - ref).norm() / ref.norm() < 0.01
    assert (fast - ref).abs().max() < 0.02 * ref.abs().max()


@pytest.mark.skipif(not int8_kernel_available(), reason="no FBGEMM int8 kernel on this CPU")
@pytest.mark.parametrize("bias", [True, False])
def test_per_token_int8_rounds_each_row_on_its_own_scale_in_one_call(bias):
    torch.manual_seed(3)
    q = Int8Linear(nn.Linear(96, 40, bias=bias), per_token=True)
    rows = torch.randn(1, 12, 96)
    rows[0, 0, 5] = 300.0  # an outlier token: with one scale for all rows, the others would lose their precision
    fast, ref = q(rows), q.reference(rows)
    assert fast.shape == (1, 12, 40)
    for r in range(12):  # each row rounded exactly the same whichever rows share its call
        torch.testing.assert_close(fast[0, r], q(rows[:, [r, (r + 5) % 12]])[0, 0], rtol=0, atol=0)
        if r > 0:  # and the outlier in row 0 costs the other rows nothing, in a batch as alone
            assert (fast[0, r] - ref[0, r]).norm() / ref[0, r].norm() < 0.01
            assert (q(rows[0, r : r + 1])[0] - ref[0, r]).norm() / ref[0, r].norm() < 0.01
    plain = Int8Linear(nn.Linear(96, 40, bias=bias))
    plain.load_state_dict(q.state_dict())
    shared = plain(rows)  # one scale for all twelve rows: the outlier row leaves the others a few levels
    assert (shared[0, 1:] - ref[0, 1:]).norm() > 5 * (fast[0, 1:] - ref[0, 1:]).norm()


def test_quantize_model_marks_only_the_layers_per_token_names():
    model = quantize_model(GPT(preset("tiny-llama", vocab_size=100)).eval(), bits=8, per_token=int8_per_token)
    assert model.blocks[0].mlp.down.per_token and not model.blocks[0].mlp.up.per_token
    assert not model.blocks[0].attn.qkv.per_token


@pytest.mark.skipif(not int8_kernel_available(), reason="no FBGEMM int8 kernel on this CPU")
def test_int8_loading_new_codes_repacks():
    torch.manual_seed(2)
    q, other = Int8Linear(nn.Linear(64, 32)), Int8Linear(nn.Linear(64, 32))
    x = torch.randn(4, 64)
    q(x)
    q.load_state_dict(other.state_dict())
    torch.testing.assert_close(q(x), other(x))


def test_int8_refused_on_a_cpu_without_the_kernel(monkeypatch):
    monkeypatch.setattr("llmlab.infer.quantize.int8_kernel_available", lambda: False)
    with pytest.raises(ConfigError, match="slower than fp32"):
        quantize_model(GPT(preset("tiny", vocab_size=100)), bits=8)
    quantize_model(GPT(preset("tiny", vocab_size=100)), bits=4)  # int4 does not need it


def test_tied_head_quantized_as_a_copy_on_request():
    model = quantize_model(GPT(preset("tiny", vocab_size=100)).eval(), bits=8, tied_head=True)
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.tok_emb, nn.Embedding)
    torch.testing.assert_close(model.lm_head.dequantize(), model.tok_emb.weight, atol=model.lm_head.scale.max(), rtol=0)


def test_int4_packs_two_codes_per_byte_and_round_trips():
    torch.manual_seed(1)
    linear = nn.Linear(128, 16, bias=False)
    q = Int4Linear(linear, group_size=32)
    assert q.packed.dtype == torch.uint8 and q.packed.shape == (16, 64)
    assert q.scale.shape == (16, 4) and q.scale.dtype == torch.float16
    w = linear.weight.detach().view(16, 4, 32)
    err = (q.dequantize().view(16, 4, 32) - w).abs()
    assert (err <= q.scale.float()[..., None] / 2 + 1e-3).all()
    # A weight already on the 16-level grid of its group comes back exactly.
    grid = torch.arange(16.0).repeat(16, 8) * 0.25 - 1.0
    with torch.no_grad():
        source = nn.Linear(128, 16, bias=False)
        source.weight.copy_(grid)
    exact = Int4Linear(source, group_size=32)
    assert torch.equal(exact.dequantize(), grid)
    with pytest.raises(ConfigError, match="divisible"):
        Int4Linear(nn.Linear(100, 4), group_size=64)


def sharp_model(seed: int) -> GPT:
    torch.manual_seed(seed)
    model = GPT(preset("tiny-llama", vocab_size=256, tie_embeddings=False)).eval()
    with torch.no_grad():  # a confident model, so perplexity is far from uniform and quantization error shows
        model.lm_head.weight.mul_(30)
    return model


def test_quantized_perplexity_within_tolerance_and_memory_shrinks():
    model = sharp_model(0)
    text = Engine(model).generate([[1]], SamplingParams(max_new_tokens=127, temperature=1.0, seed=0, ignore_eos=True))
    ids = torch.tensor([1] + text[0].token_ids)
    base_ppl, base_bytes = perplexity(model, ids), model_bytes(model)
    assert base_ppl < 50  # far below the uniform 256: the model predicts its own samples
    linear_bytes = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))
    results = {}
    for bits in (8, 4):
        q = quantize_model(sharp_model(0), bits=bits, group_size=32)
        results[bits] = (perplexity(q, ids), model_bytes(q))
    # Stated tolerances (docs/inference.md): int8 within 1 %, int4 (group 32) within 10 % of fp32 perplexity.
    assert results[8][0] == pytest.approx(base_ppl, rel=0.01)
    assert results[4][0] == pytest.approx(base_ppl, rel=0.10)
    # Linear weights shrink 4x (int8: 1 byte + a scale per row) and ~5.3x (int4: 0.5 byte + 4 bytes per 32).
    assert base_bytes - results[8][1] > 0.72 * linear_bytes
    assert base_bytes - results[4][1] > 0.8 * linear_bytes


def test_tied_head_stays_in_float_and_generation_still_works():
    torch.manual_seed(0)
    model = quantize_model(GPT(preset("tiny", vocab_size=100)).eval(), bits=8)
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.tok_emb.weight
    assert isinstance(model.blocks[0].attn.qkv, Int8Linear)
    out = Engine(model).generate([[1, 2]], SamplingParams(max_new_tokens=5, temperature=0))[0]
    assert len(out.token_ids) == 5
    with pytest.raises(ConfigError, match="bits"):
        quantize_model(model, bits=3)


def test_perplexity_one_token_at_a_time_matches_the_whole_window_in_fp32():
    model = sharp_model(1)
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(0))
    whole = perplexity(model, ids, window=16)
    assert perplexity(model, ids, window=16, one_token_at_a_time=True) == pytest.approx(whole, rel=1e-4)
