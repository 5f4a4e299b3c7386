"""oneDNN-packed bf16 weights (`llmlab.infer.packed`) against the plain bf16 model they replace."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llmlab.errors import ConfigError
from llmlab.infer import Engine, SamplingParams
from llmlab.infer.packed import PackedLinear, pack_model, packing_available
from llmlab.model import GPT, preset

pytestmark = pytest.mark.skipif(not packing_available(), reason="no oneDNN bf16 linear on this CPU")


def bf16_model(**overrides) -> GPT:
    torch.manual_seed(0)
    model = GPT(preset("tiny-llama", vocab_size=300, tie_embeddings=True, **overrides)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # a confident model: greedy choices are not near-ties
    return model.to(torch.bfloat16)


@torch.inference_mode()
def test_packed_linear_equals_f_linear():
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    linear = nn.Linear(64, 96, bias=False).to(torch.bfloat16)
    for inputs in (x, x.transpose(0, 1), x[:, -1]):  # without a bias: bit for bit, any layout
        assert torch.equal(PackedLinear(linear)(inputs), F.linear(inputs, linear.weight))
    # oneDNN adds a bias before rounding to bf16, F.linear may add it after: one rounding apart
    biased = nn.Linear(64, 96, bias=True).to(torch.bfloat16)
    torch.testing.assert_close(PackedLinear(biased)(x), F.linear(x, biased.weight, biased.bias), rtol=1.6e-2, atol=1e-2)


def test_packed_model_generates_the_plain_models_tokens():
    plain = bf16_model()
    packed = pack_model(copy.deepcopy(plain))
    assert not any(type(m) is nn.Linear for m in packed.modules())
    assert packed.tok_emb.weight is not None  # the tied embedding keeps its plain matrix
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(packed(ids)[0], plain(ids)[0])
    prompts = [[5, 17, 42, 9], [1, 2, 3, 4, 5, 6, 7]]
    params = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
    want = [c.token_ids for c in Engine(plain).generate(prompts, params)]
    assert [c.token_ids for c in Engine(packed).generate(prompts, params)] == want
    assert [Engine(packed).generate([p], params)[0].token_ids for p in prompts] == want  # batch 1


def test_pack_model_refuses_fp32():
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="bf16"):
        pack_model(GPT(preset("tiny-llama", vocab_size=300)))
