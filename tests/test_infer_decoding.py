"""Beam search equals exhaustive search; speculative decoding equals / preserves the target model."""

import itertools

import pytest
import torch

from llmlab.errors import ConfigError
from llmlab.infer import Engine, SamplingParams
from llmlab.infer.beam import beam_search
from llmlab.infer.speculative import accept_or_resample, speculative_generate
from llmlab.model import GPT, preset

# chi-square critical values at p = 0.001 by degrees of freedom (a fixed seed makes the test deterministic).
CHI2_999 = {5: 20.52, 8: 26.12}


pytestmark = pytest.mark.usefixtures("one_thread")


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def tiny(vocab: int, seed: int, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(preset("tiny-llama", vocab_size=vocab, **kw)).eval()
    with torch.no_grad():  # sharper distributions than the 0.02-std init, so the search has something to find
        model.lm_head.weight.mul_(40)
    return model


def noisy_copy(model: GPT, noise: float, seed: int) -> GPT:
    """A draft model that mostly agrees with `model`: its weights plus Gaussian noise."""
    draft = GPT(model.config).eval()
    draft.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise * p.std().clamp(min=1e-3))
    return draft


@torch.no_grad()
def sequence_logprobs(model, prompt, sequences) -> list[float]:
    """log P(tokens | prompt) for equal-length token lists, in one forward."""
    ids = torch.tensor([prompt + list(tokens) for tokens in sequences])
    logprobs = model(ids)[0].log_softmax(-1)
    n = len(sequences[0])
    picked = logprobs[:, len(prompt) - 1 : len(prompt) - 1 + n].gather(-1, ids[:, len(prompt):, None])
    return picked.squeeze(-1).sum(-1).tolist()


def sequence_logprob(model, prompt, tokens) -> float:
    return sequence_logprobs(model, prompt, [tokens])[0]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_wide_beam_search_equals_exhaustive_search(length_penalty):
    vocab, length, eos = 4, 3, 0
    model, prompt = tiny(vocab, seed=1), [1, 2]
    hypotheses = []
    for t in range(1, length + 1):
        # Sequences stop at their first end token, or run to the length limit.
        candidates = [list(s) for s in itertools.product(range(vocab), repeat=t)
                      if eos not in s[:-1] and (t == length or s[-1] == eos)]
        for tokens, lp in zip(candidates, sequence_logprobs(model, prompt, candidates)):
            hypotheses.append((lp / t**length_penalty, tokens, lp))
    hypotheses.sort(key=lambda h: h[0], reverse=True)
    found = beam_search(model, prompt, beam_width=vocab**length, max_new_tokens=length,
                        length_penalty=length_penalty, end_ids=[eos])
    assert len(found) == len(hypotheses)
    assert [h.token_ids for h in found] == [h[1] for h in hypotheses]
    assert [h.score for h in found] == pytest.approx([h[0] for h in hypotheses], abs=1e-4)
    assert [h.logprob for h in found] == pytest.approx([h[2] for h in hypotheses], abs=1e-4)


def test_beam_width_one_is_greedy():
    model = tiny(50, seed=2)
    greedy = Engine(model).generate([[3, 4, 5]], SamplingParams(max_new_tokens=12, temperature=0))[0]
    (beam,) = beam_search(model, [3, 4, 5], beam_width=1, max_new_tokens=12)
    assert beam.token_ids == greedy.token_ids


def test_beam_search_finds_at_least_the_greedy_probability():
    model = tiny(50, seed=3)
    greedy = Engine(model).generate([[7]], SamplingParams(max_new_tokens=8, temperature=0))[0].token_ids
    best = beam_search(model, [7], beam_width=8, max_new_tokens=8, length_penalty=0.0)[0]
    assert best.logprob >= sequence_logprob(model, [7], greedy) - 1e-5


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_greedy_equals_target_greedy(k):
    target = tiny(64, seed=4)
    draft = noisy_copy(target, 0.5, seed=5)
    engine = Engine(target)
    prompts = [[1, 2, 3], [9], list(range(10, 30))]
    params = SamplingParams(max_new_tokens=30, temperature=0)
    expected = engine.generate(prompts, params)
    for prompt, exp in zip(prompts, expected):
        got, stats = speculative_generate(engine, draft, prompt, params, num_draft_tokens=k)
        assert got.token_ids == exp.token_ids and got.finish_reason == "length"
        assert 0 < stats.acceptance_rate < 1 and stats.rounds < 30


def test_speculative_with_the_target_as_draft_accepts_everything():
    target = tiny(64, seed=4)
    got, stats = speculative_generate(Engine(target), target, [1, 2], SamplingParams(max_new_tokens=20, temperature=0),
                                      num_draft_tokens=4)
    assert stats.acceptance_rate == 1.0 and stats.rounds == 4  # 4 rounds of 4 drafts + 1 bonus token


def test_accept_reject_rule_preserves_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(6, generator=g) * 1.5, -1)
    counts = torch.zeros(6)
    for _ in range(8000):
        draft = int(torch.multinomial(q, 1, generator=g))
        n, token = accept_or_resample(torch.stack([p, p]), q[None], [draft], g)
        counts[draft if n == 1 else token] += 1
    assert chi_square(counts, p) < CHI2_999[5]
    # ... and the draft's own distribution is clearly rejected by the same test.
    assert chi_square(counts, q) > 10 * CHI2_999[5]


@pytest.mark.slow
def test_speculative_sampling_preserves_the_target_distribution_end_to_end():
    vocab = 3
    target = tiny(vocab, seed=6)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.1)  # flatter, so every pair of tokens is reasonably likely
    draft = noisy_copy(target, 2.0, seed=7)
    engine, prompt = Engine(target), [1, 2]
    params = SamplingParams(max_new_tokens=2, temperature=1.0, ignore_eos=True)
    pairs = [[a, b] for a in range(vocab) for b in range(vocab)]
    exact = torch.tensor(sequence_logprobs(target, prompt, pairs)).exp()
    counts, accepted = torch.zeros(vocab * vocab), 0
    for seed in range(1500):
        got, stats = speculative_generate(engine, draft, prompt, params.replace(seed=seed), num_draft_tokens=1)
        counts[got.token_ids[0] * vocab + got.token_ids[1]] += 1
        accepted += stats.accepted
    assert 0.2 < accepted / 1500 < 0.95  # both the accept and the resample path were taken
    assert chi_square(counts, exact) < CHI2_999[8]
    draft_pairs = torch.tensor(sequence_logprobs(draft, prompt, pairs)).exp()
    assert chi_square(counts, draft_pairs) > CHI2_999[8]


def test_speculative_rejects_mismatched_draft_and_penalties():
    engine = Engine(tiny(64, seed=4))
    with pytest.raises(ConfigError, match="vocabulary"):
        speculative_generate(engine, tiny(65, seed=1), [1], SamplingParams())
    with pytest.raises(ConfigError, match="penalties"):
        speculative_generate(engine, tiny(64, seed=1), [1], SamplingParams(repetition_penalty=1.2))
