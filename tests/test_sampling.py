"""Sampling filters keep exactly the tokens they should, match transformers' processors, and reject bad values;
every sampling setting reaches the engine from the CLI and the API alike."""

import argparse
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmlab.cli import chat as chat_cli
from llmlab.cli import generate as generate_cli
from llmlab.errors import ConfigError
from llmlab.infer.sampling import (
    SamplingParams,
    apply_penalties,
    draw,
    make_generator,
    min_p_filter,
    processed_logits,
    sample,
    sample_rows,
    sampling_settings,
    top_k_filter,
    top_p_filter,
)
from llmlab.serve.openai_api import ChatCompletionRequest, CompletionRequest
from llmlab.serve.playground_api import NextTokenRequest

logit_vectors = st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=1, max_size=64).map(
    lambda xs: torch.tensor(xs, dtype=torch.float32)
)


def kept(filtered: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(filtered)).flatten().tolist())


@settings(max_examples=200, deadline=None)
@given(logit_vectors, st.integers(0, 80))
def test_top_k_keeps_exactly_the_k_largest(logits, k):
    keep = kept(top_k_filter(logits, k))
    expected = len(logits) if k == 0 else min(k, len(logits))
    assert len(keep) == expected
    dropped = set(range(len(logits))) - keep
    if dropped:
        assert min(logits[i] for i in keep) >= max(logits[i] for i in dropped)


@settings(max_examples=200, deadline=None)
@given(logit_vectors, st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_reaching_p(logits, p):
    probs = logits.double().softmax(-1)
    keep = kept(top_p_filter(logits, p))
    mass = sum(probs[i] for i in keep)
    dropped = set(range(len(logits))) - keep
    # The kept set reaches p (up to float32 rounding) ...
    assert mass >= p - 1e-5 or not dropped
    # ... and is minimal: without its least likely token it would not.
    smallest = min(probs[i] for i in keep)
    assert len(keep) == 1 or mass - smallest < p + 1e-5
    if dropped:
        assert min(logits[i] for i in keep) >= max(logits[i] for i in dropped)


@settings(max_examples=200, deadline=None)
@given(logit_vectors, st.floats(0.0, 1.0))
def test_min_p_keeps_tokens_above_the_scaled_maximum(logits, min_p):
    probs = logits.softmax(-1)
    keep = kept(min_p_filter(logits, min_p))
    expected = {i for i in range(len(logits)) if probs[i] >= min_p * probs.max()} if min_p > 0 else set(range(len(logits)))
    assert keep == expected
    assert int(torch.argmax(logits)) in keep


@pytest.mark.parametrize("seed", range(5))
def test_filters_match_transformers_processors(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 200, generator=g) * 3
    ids = torch.randint(0, 200, (1, 30), generator=g)
    inf = float("-inf")
    assert torch.equal(top_k_filter(logits[0], 17), TopKLogitsWarper(17, filter_value=inf)(ids, logits.clone())[0])
    assert torch.equal(top_p_filter(logits[0], 0.7), TopPLogitsWarper(0.7, filter_value=inf)(ids, logits.clone())[0])
    assert torch.equal(min_p_filter(logits[0], 0.1), MinPLogitsWarper(0.1, filter_value=inf)(ids, logits.clone())[0])
    ours = apply_penalties(logits[0], ids[0], ids[0][:0], SamplingParams(repetition_penalty=1.3))
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())[0]
    torch.testing.assert_close(ours, theirs)


def test_frequency_and_presence_penalties_subtract_counts():
    logits = torch.zeros(5)
    generated = torch.tensor([1, 1, 1, 3])
    p = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    out = apply_penalties(logits, generated, generated, p)
    assert out.tolist() == [0.0, -1.75, 0.0, -0.75, 0.0]


def test_greedy_is_argmax_and_tiny_temperature_equals_greedy():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(100, generator=g) * 2
        greedy = sample(processed_logits(logits, SamplingParams(temperature=0)), SamplingParams(temperature=0))
        assert greedy == int(torch.argmax(logits))
        cold = SamplingParams(temperature=1e-4)
        assert sample(processed_logits(logits, cold), cold, make_generator(1)) == greedy


def test_same_seed_same_draws_and_sampling_follows_the_distribution():
    logits = torch.tensor([0.0, math.log(3.0), -30.0])
    p = SamplingParams(temperature=1.0)
    draws = [sample(logits, p, g) for g in [make_generator(7)] for _ in range(4000)]
    again = [sample(logits, p, g) for g in [make_generator(7)] for _ in range(4000)]
    assert draws == again
    share = draws.count(1) / len(draws)
    assert abs(share - 0.75) < 0.03  # 4 sigma for n=4000
    assert 2 not in draws


@pytest.mark.parametrize("vocab", [2, 300, 49152])
def test_draw_is_torch_multinomial_draw_for_draw(vocab):
    torch.manual_seed(vocab)
    for seed in range(100 if vocab < 1000 else 10):
        logits = torch.randn(vocab) * (1 + seed % 4)
        logits[torch.rand(vocab) < 0.5 * (seed % 2)] = float("-inf")
        logits[seed % vocab] = 2.0
        probs = logits.softmax(-1)
        ours, theirs = make_generator(seed), make_generator(seed)
        assert int(draw(probs[None], [ours])[0]) == int(torch.multinomial(probs, 1, generator=theirs))
        assert torch.equal(ours.get_state(), theirs.get_state())  # the next draw agrees too


def test_sample_rows_gives_each_row_what_it_would_get_alone():
    torch.manual_seed(0)
    logits = torch.randn(7, 300) * 3
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0.7, top_k=20, seed=1),
              SamplingParams(temperature=1.0, top_p=0.8), SamplingParams(temperature=0.7, top_k=20, seed=2),
              SamplingParams(temperature=1.3, min_p=0.05), SamplingParams(temperature=0),
              SamplingParams(temperature=1.0, top_p=0.8)]
    for seed in range(20):
        gens = [make_generator(seed * 10 + i) for i in range(7)]
        alone = [sample(processed_logits(logits[i], p), p, make_generator(seed * 10 + i)) for i, p in enumerate(params)]
        assert sample_rows(logits, params, gens) == alone


@pytest.mark.parametrize(
    "kwargs,word",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=2.0), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(frequency_penalty=3.0), "frequency_penalty"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(n=0), "n must"),
    ],
)
def test_invalid_sampling_values_raise_config_error(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        SamplingParams(**kwargs)


# A value other than the default for every setting the CLI and the API offer.
EXAMPLES = dict(max_new_tokens=5, temperature=0.5, top_k=7, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                frequency_penalty=0.5, presence_penalty=-0.5, stop=["\n\n", "END"], seed=3, ignore_eos=True, n=2)


def cli_params(command, pick: int) -> SamplingParams:
    """SamplingParams from a command's flags set to EXAMPLES, each by its first or last spelling (-n, -t)."""
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    argv = ["model"]
    for s in sampling_settings():
        if not s.exposed or (command is chat_cli and s.name == "n"):  # chat gives one answer at a time
            continue
        value, flag = EXAMPLES[s.name], s.cli_flags[pick]
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [arg for item in value for arg in (flag, item)]
        else:
            argv += [flag, str(value)]
    return generate_cli.sampling_params(parser.parse_args(argv))


def test_every_exposed_setting_reaches_the_engine_from_the_cli_and_the_api():
    exposed = [s for s in sampling_settings() if s.exposed]
    assert {s.name for s in exposed} == set(EXAMPLES), "give each exposed SamplingParams field an example here"
    assert all(EXAMPLES[s.name] != s.default for s in exposed)
    from_cli = {(command, pick): cli_params(command, pick) for command in (generate_cli, chat_cli) for pick in (0, -1)}
    body = {s.api: EXAMPLES[s.name] for s in exposed}
    requests = [ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], **body),
                CompletionRequest(model="m", prompt="x", **body), NextTokenRequest(model="m", prompt="x", **body)]
    from_api = {type(r).__name__: SamplingParams(**r.settings()) for r in requests}
    for s in exposed:
        for (command, pick), params in from_cli.items():
            expected = 1 if (command, s.name) == (chat_cli, "n") else EXAMPLES[s.name]
            assert getattr(params, s.name) == expected, (command.__name__, s.cli_flags[pick])
        for request, params in from_api.items():
            assert getattr(params, s.name) == EXAMPLES[s.name], (request, s.api)


def test_logit_bias_is_added_before_everything_else_and_checked():
    logits = torch.tensor([3.0, 1.0, 0.0, -1.0])
    biased = processed_logits(logits, SamplingParams(temperature=0, logit_bias={2: 5.0, 0: -100}))
    assert torch.equal(biased, torch.tensor([-97.0, 1.0, 5.0, -1.0])) and int(torch.argmax(biased)) == 2
    with pytest.raises(ConfigError, match="logit_bias"):
        SamplingParams(logit_bias={1: 101})


def test_batched_rows_keep_their_own_logit_bias():
    """Rows sampled together in one batch step each get their own bias (a +100 bias forces its token)."""
    from llmlab.infer.sampling import SamplingParams, make_generator, sample_rows

    logits = torch.zeros(3, 10)
    params = [SamplingParams(temperature=0.0, logit_bias={7: 100.0}), SamplingParams(temperature=0.0, logit_bias={2: 100.0}),
              SamplingParams(temperature=1.0, logit_bias={5: 100.0})]
    assert sample_rows(logits, params, [make_generator(i) for i in range(3)]) == [7, 2, 5]
