"""The engine: KV cache == recompute, batched == one by one, seeds, stop strings, streaming, errors."""

import pytest
import torch
import torch.nn as nn

from llmlab.errors import ConfigError, InputError
from llmlab.infer import Engine, SamplingParams
from llmlab.infer.head import DecodeHead
from llmlab.model import GPT, preset
from llmlab.tokenizer.base import default_special_tokens
from llmlab.tokenizer.bpe import Tokenizer

PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [42], [7, 7, 7, 7]]


pytestmark = pytest.mark.usefixtures("one_thread")


def byte_tokenizer() -> Tokenizer:
    """Bytes 0..255 as tokens plus llmlab's special tokens (ids 256..260)."""
    return Tokenizer({bytes([i]): i for i in range(256)}, special_tokens=default_special_tokens(256))


@pytest.fixture(scope="module", params=["tiny", "tiny-llama"])
def model(request):
    torch.manual_seed(0)
    return GPT(preset(request.param, vocab_size=300)).eval()


class BigramScript(nn.Module):
    """A model that always predicts next[token]: lets tests choose exactly what gets generated."""

    def __init__(self, next_token: dict[int, int], vocab_size: int = 261, context_length: int = 64) -> None:
        super().__init__()
        self.config = preset("tiny", vocab_size=vocab_size, context_length=context_length)
        self.table = torch.zeros(vocab_size, dtype=torch.long)
        for a, b in next_token.items():
            self.table[a] = b
        self.dummy = nn.Parameter(torch.zeros(1))
        self.lm_head = nn.Identity()  # the "hidden states" are already the logits

    def hidden_states(self, idx, kv_cache=None, position_ids=None, attention_mask=None):
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        logits = torch.full((*idx.shape, self.config.vocab_size), -10.0)
        return logits.scatter(-1, self.table[idx][..., None], 10.0), []

    def forward(self, idx, kv_cache=None, position_ids=None, attention_mask=None):
        return self.lm_head(self.hidden_states(idx, kv_cache, position_ids, attention_mask)[0]), None


def cycle(text: str) -> dict[int, int]:
    """Bigram table that makes each byte of `text` followed by the next one (wrapping around)."""
    b = text.encode()
    return {b[i]: b[(i + 1) % len(b)] for i in range(len(b))}


GREEDY = SamplingParams(max_new_tokens=24, temperature=0)


def test_kv_cache_generation_matches_full_recompute(model):
    cached = Engine(model).generate(PROMPTS, GREEDY)
    recomputed = Engine(model, use_kv_cache=False).generate(PROMPTS, GREEDY)
    assert [c.token_ids for c in cached] == [c.token_ids for c in recomputed]
    assert all(len(c.token_ids) == 24 and c.finish_reason == "length" for c in cached)


def test_batched_equals_one_by_one_greedy_and_seeded(model):
    engine = Engine(model)
    sampled = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=40, seed=11, logprobs=True, top_logprobs=2)
    for params in (GREEDY, sampled):
        batched = engine.generate(PROMPTS, params)
        single = [engine.generate([p], params)[0] for p in PROMPTS]
        assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    for b, s in zip(batched, single):
        assert [t.logprob for t in b.logprobs] == pytest.approx([t.logprob for t in s.logprobs], abs=1e-4)
        assert all(len(t.top) == 2 and t.top[0][2] >= t.top[1][2] for t in b.logprobs)


def test_batch_size_limit_and_order_are_kept(model):
    expected = Engine(model).generate(PROMPTS, GREEDY)
    small = Engine(model, max_batch_size=2).generate(PROMPTS, GREEDY)
    assert [c.token_ids for c in small] == [c.token_ids for c in expected]
    assert [c.prompt_tokens for c in small] == [len(p) for p in PROMPTS]


def test_same_seed_same_output_different_seed_differs(model):
    engine = Engine(model)
    p = SamplingParams(max_new_tokens=20, temperature=1.0, seed=5)
    first = engine.generate(PROMPTS[:2], p)
    assert [c.token_ids for c in engine.generate(PROMPTS[:2], p)] == [c.token_ids for c in first]
    other = engine.generate(PROMPTS[:2], p.replace(seed=6))
    assert [c.token_ids for c in other] != [c.token_ids for c in first]


def test_n_samples_differ_but_are_reproducible(model):
    engine = Engine(model)
    p = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3, n=3)
    out = engine.generate([PROMPTS[0], PROMPTS[1]], p)
    assert len(out) == 6 and [c.index for c in out] == [0, 1, 2, 0, 1, 2]
    assert len({tuple(c.token_ids) for c in out[:3]}) == 3
    # Sample j of a request is the request with seed + j.
    assert out[4].token_ids == engine.generate([PROMPTS[1]], p.replace(n=1, seed=4))[0].token_ids


def test_tiny_temperature_equals_greedy(model):
    engine = Engine(model)
    greedy = engine.generate(PROMPTS, GREEDY)
    cold = engine.generate(PROMPTS, SamplingParams(max_new_tokens=24, temperature=1e-5, seed=0))
    assert [c.token_ids for c in cold] == [c.token_ids for c in greedy]


def test_penalties_change_greedy_output_and_stay_batch_consistent(model):
    engine = Engine(model)
    p = SamplingParams(max_new_tokens=24, temperature=0, repetition_penalty=1.5, frequency_penalty=0.5,
                       presence_penalty=0.5)
    out = engine.generate(PROMPTS, p)
    assert [c.token_ids for c in out] != [c.token_ids for c in engine.generate(PROMPTS, GREEDY)]
    assert [c.token_ids for c in out] == [engine.generate([q], p)[0].token_ids for q in PROMPTS]


def test_stop_string_across_tokens_is_cut_and_never_streamed():
    engine = Engine(BigramScript(cycle("abcd")), byte_tokenizer())
    p = SamplingParams(max_new_tokens=20, temperature=0, stop=["da", "zz"])
    events = list(engine.stream("a", p))
    # a -> b c d a: "d" is held back as a possible start of "da", then "a" completes the stop string.
    assert [e.text for e in events] == ["b", "c", "", ""]
    assert events[-1].finish_reason == "stop"
    c = engine.generate(["a"], p)[0]
    assert (c.text, c.finish_reason, c.completion_tokens) == ("bc", "stop", 4)


def test_held_back_text_is_released_when_no_stop_follows():
    engine = Engine(BigramScript(cycle("abcd")), byte_tokenizer())
    c = engine.generate(["a"], SamplingParams(max_new_tokens=5, temperature=0, stop=["dx"]))[0]
    assert (c.text, c.finish_reason) == ("bcdab", "length")


def test_streaming_is_utf8_safe_and_equals_generate():
    text = "é✓ok"
    engine = Engine(BigramScript(cycle(text)), byte_tokenizer())
    p = SamplingParams(max_new_tokens=5, temperature=0)  # e2 9c 93 "o" "k"
    events = list(engine.stream("é", p))
    assert "\ufffd" not in "".join(e.text for e in events)
    assert "".join(e.text for e in events) == "✓ok"
    assert [e.text for e in events][:3] == ["", "", "✓"]  # three bytes, one character
    assert engine.generate(["é"], p)[0].text == "✓ok"


def test_end_of_text_and_end_of_turn_stop_generation():
    tok = byte_tokenizer()
    end = tok.special_tokens["<|end|>"]
    engine = Engine(BigramScript({ord("a"): ord("b"), ord("b"): end}), tok)
    c = engine.generate(["a"], SamplingParams(max_new_tokens=10, temperature=0))[0]
    assert (c.text, c.token_ids, c.finish_reason) == ("b", [ord("b"), end], "stop")
    ignoring = engine.generate(["a"], SamplingParams(max_new_tokens=3, temperature=0, ignore_eos=True))[0]
    assert ignoring.finish_reason == "length" and len(ignoring.token_ids) == 3


def test_zero_new_tokens_gives_empty_completion(model):
    c = Engine(model).generate([PROMPTS[0]], SamplingParams(max_new_tokens=0))[0]
    assert (c.text, c.token_ids, c.finish_reason, c.prompt_tokens) == ("", [], "length", 3)


def test_prompt_longer_than_context_window_is_a_clear_error(model):
    engine = Engine(model)
    limit = model.config.context_length
    with pytest.raises(InputError, match=f"{limit + 5} tokens long.*context window is {limit}"):
        engine.generate([[1] * (limit + 5)], GREEDY)


def test_generation_stops_at_the_context_window(model):
    limit = model.config.context_length
    prompts = [[1] * (limit - 3), [2, 3]]
    out = Engine(model).generate(prompts, SamplingParams(max_new_tokens=10, temperature=0))
    assert len(out[0].token_ids) == 3 and out[0].finish_reason == "length"
    assert len(out[1].token_ids) == 10


def test_bad_arguments_raise_config_error(model):
    engine = Engine(model)
    with pytest.raises(ConfigError, match="list of prompts"):
        engine.generate([1, 2, 3], GREEDY)
    with pytest.raises(ConfigError, match="no tokenizer"):
        engine.generate(["text"], GREEDY)


def test_generation_runs_without_dropout_and_restores_training_mode():
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=300, dropout=0.5)).train()
    during_training = Engine(model).generate(PROMPTS, GREEDY)
    assert model.training
    model.eval()
    assert [c.token_ids for c in during_training] == [c.token_ids for c in Engine(model).generate(PROMPTS, GREEDY)]


def test_decode_head_gives_the_heads_logits_through_a_copy_only_for_small_batches(model):
    head = DecodeHead(model.lm_head)
    x = torch.randn(5, model.config.d_model)
    assert torch.allclose(head(x), model.lm_head(x), atol=1e-5) and head.weight_t is None  # 5 rows: the head itself
    for rows in (1, 2):
        assert torch.allclose(head(x[:rows]), model.lm_head(x[:rows]), atol=1e-5)
    assert head.weight_t.is_contiguous() and head.weight_t.shape == model.lm_head.weight.t().shape


def test_engine_decodes_with_weights_changed_in_place_since_its_last_call():
    torch.manual_seed(0)
    model = GPT(preset("tiny", vocab_size=300)).eval()
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=8, temperature=0, logprobs=True)
    before = engine.generate([[1, 2, 3]], params)[0]
    # A fused AdamW step changes the weights without moving their version counters.
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
    model(torch.tensor([[1, 2, 3, 4]]), targets=torch.tensor([[2, 3, 4, 5]]))[1].backward()
    optimizer.step()
    after = engine.generate([[1, 2, 3]], params)[0]
    ids, logprobs = [1, 2, 3], []
    with torch.no_grad():
        for _ in range(params.max_new_tokens):  # greedy by hand, from the full logits
            step = model(torch.tensor([ids]))[0][0, -1].log_softmax(-1)
            ids.append(int(step.argmax()))
            logprobs.append(float(step.max()))
    assert after.token_ids == ids[3:]
    assert [t.logprob for t in after.logprobs] == pytest.approx(logprobs, abs=1e-5)
    assert [t.logprob for t in before.logprobs] != pytest.approx(logprobs, abs=1e-3)
