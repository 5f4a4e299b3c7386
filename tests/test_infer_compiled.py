"""The compiled decoding step: the same tokens as the eager step, one graph per batch bucket, no recompiles."""

import pytest
import torch
from torch._dynamo.utils import counters

from llmlab.infer import Engine, SamplingParams
from llmlab.infer.compiled import CompiledDecodeStep, bucket
from llmlab.model import GPT, preset

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(preset("tiny-llama", vocab_size=256)).eval()


def compiled_engine(model: GPT, backend: str = "eager") -> Engine:
    engine = Engine(model, compile=True)
    engine.decode_step = CompiledDecodeStep(model, engine.max_batch_size, torch.device("cpu"), torch.float32, backend)
    return engine


def ragged_requests() -> tuple[list[list[int]], list[SamplingParams]]:
    """Three prompts of different lengths (padded to a batch of 4), finishing at different steps."""
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    params = [SamplingParams(max_new_tokens=14, temperature=0, ignore_eos=True),
              SamplingParams(max_new_tokens=9, temperature=1.0, seed=7, ignore_eos=True),
              SamplingParams(max_new_tokens=5, temperature=0.8, top_k=20, seed=3, ignore_eos=True)]
    return prompts, params


def test_bucket_pads_to_powers_of_two_up_to_the_batch():
    assert [bucket(r, 32) for r in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
    assert bucket(5, 6) == 6


def test_compiled_step_gives_the_eager_tokens_greedy_and_seeded():
    model = tiny_model()
    prompts, params = ragged_requests()
    eager = Engine(model, compile=False).generate(prompts, params)
    compiled = compiled_engine(model).generate(prompts, params)
    assert [c.token_ids for c in compiled] == [e.token_ids for e in eager]
    assert [len(c.token_ids) for c in compiled] == [14, 9, 5]


def test_one_graph_for_a_stream_and_no_recompile_per_token_or_call():
    torch._dynamo.reset()
    counters.clear()
    model = tiny_model()
    engine = compiled_engine(model)
    greedy = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True)
    engine.generate([[1, 2, 3]], greedy)
    assert counters["stats"]["unique_graphs"] == 1  # 19 decoding steps at 19 positions, one graph
    engine.generate([[5, 6, 7, 8, 9, 10]], greedy)  # another prompt length and positions: the same graph
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_inductor_compiled_step_gives_the_eager_tokens():
    model = tiny_model()
    prompts, params = ragged_requests()
    eager = Engine(model, compile=False).generate(prompts[:1], params[:1])
    compiled = compiled_engine(model, backend="inductor").generate(prompts[:1], params[:1])
    assert compiled[0].token_ids == eager[0].token_ids
