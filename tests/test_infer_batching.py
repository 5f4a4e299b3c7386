"""Continuous batching: rows that join and leave mid-flight produce what they would alone."""

import pytest
import torch

from llmlab.errors import ConfigError, InputError
from llmlab.infer import Engine, SamplingParams
from llmlab.infer.batching import Batcher
from llmlab.model import GPT, preset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["tiny", "tiny-llama"])
def model(request):
    torch.manual_seed(0)
    return GPT(preset(request.param, vocab_size=300)).eval()


def run(batcher, arrivals):
    """Step until done, submitting arrivals[step] = [(prompt, params), ...] at their step; tokens per request."""
    requests, step = [], 0
    while step < max(arrivals) + 1 or batcher.busy:
        for prompt, params in arrivals.get(step, []):
            requests.append(batcher.submit(prompt, params))
        for request, event in batcher.step():
            assert len(batcher.rows) <= batcher.max_rows
            request.events = getattr(request, "events", []) + [event]
        step += 1
    return requests


def tokens_by_sample(request):
    out = [[] for _ in request.sequences]
    for e in getattr(request, "events", []):
        out[e.index].append(e.token_id)
    return out


def lone(model, prompt, params):
    return [c.token_ids for c in Engine(model).generate([prompt], params)]


ARRIVALS = {  # prompts of different lengths joining at different steps
    0: [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]],
    3: [[42]],
    7: [list(range(20, 60))],
    8: [[7, 7, 7, 7]],
}


@pytest.mark.parametrize("params", [
    SamplingParams(max_new_tokens=30, temperature=0),
    SamplingParams(max_new_tokens=30, temperature=1.0, top_k=40, seed=11),
    SamplingParams(max_new_tokens=30, temperature=0.8, top_p=0.9, min_p=0.02, seed=7),
    SamplingParams(max_new_tokens=25, temperature=0.9, seed=3, n=3, repetition_penalty=1.3),
])
def test_rows_joining_mid_flight_match_a_lone_request(model, params):
    arrivals = {step: [(p, params.replace(max_new_tokens=params.max_new_tokens - i)) for i, p in enumerate(ps)]
                for step, ps in ARRIVALS.items()}  # different budgets, so rows also leave at different times
    requests = run(Batcher(model, max_rows=8), arrivals)
    for request in requests:
        assert tokens_by_sample(request) == lone(model, request.prompt, request.params)


def test_greedy_rows_match_full_recompute_without_a_cache(model):
    params = SamplingParams(max_new_tokens=24, temperature=0)
    requests = run(Batcher(model, max_rows=3), {s: [(p, params) for p in ps] for s, ps in ARRIVALS.items()})
    recomputed = Engine(model, use_kv_cache=False).generate([r.prompt for r in requests], params)
    assert [tokens_by_sample(r)[0] for r in requests] == [c.token_ids for c in recomputed]


def test_logprobs_match_a_lone_request(model):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5, logprobs=True, top_logprobs=3)
    requests = run(Batcher(model), {0: [([1, 2, 3], params)], 4: [([9] * 17, params)]})
    for request in requests:
        alone = Engine(model).generate([request.prompt], params)[0]
        assert [e.token_id for e in request.events] == alone.token_ids
        assert [e.logprob for e in request.events] == pytest.approx([t.logprob for t in alone.logprobs], abs=1e-4)
        assert [[i for i, _, _ in e.top_logprobs] for e in request.events] == [[i for i, _, _ in t.top]
                                                                              for t in alone.logprobs]


def test_chunked_prefill_keeps_running_streams_going_and_changes_no_token(model):
    params = SamplingParams(max_new_tokens=20, temperature=0)
    batcher = Batcher(model, step_tokens=8)
    first = batcher.submit([1, 2, 3], params)
    batcher.step()
    long = batcher.submit(list(range(30, 100)), params)  # 70 tokens: 9 steps of at most 8
    per_step = [batcher.step() for _ in range(8)]
    assert all(any(r is first for r, _ in events) for events in per_step)  # one token per step throughout
    assert long.started and not any(r is long for events in per_step for r, _ in events)
    while batcher.busy:
        per_step.append(batcher.step())
    got = [e.token_id for events in per_step for r, e in events if r is long]
    assert got == lone(model, long.prompt, params)[0]


class CountingGPT(GPT):
    """Counts the tokens each forward pass processes."""

    def hidden_states(self, idx, *args, **kwargs):
        self.seen.append(idx.shape)
        return super().hidden_states(idx, *args, **kwargs)


def test_n_samples_prefill_the_prompt_once():
    torch.manual_seed(0)
    model = CountingGPT(preset("tiny", vocab_size=300)).eval()
    model.seen = []
    batcher = Batcher(model)
    batcher.submit(list(range(1, 11)), SamplingParams(max_new_tokens=5, temperature=1.0, seed=0, n=4))
    events = batcher.step()
    assert model.seen == [(1, 10), (4, 1)]  # one prefill of 10 tokens, then one decoding step of 4 rows
    while batcher.busy:
        events += batcher.step()
    samples = [[e.token_id for _, e in events if e.index == j] for j in range(4)]
    assert all(len(s) == 5 for s in samples) and len(set(map(tuple, samples))) == 4  # seeds 0..3 differ


def test_equal_length_prompts_arriving_together_prefill_in_one_pass():
    torch.manual_seed(0)
    model = CountingGPT(preset("tiny", vocab_size=300)).eval()
    model.seen = []
    params = SamplingParams(max_new_tokens=6, temperature=0)
    batcher = Batcher(model, max_rows=4, step_tokens=20)
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15], [3, 3, 3], [4, 4, 4, 4, 4]]
    requests = run(batcher, {0: [(p, params) for p in prompts]})
    # 15 of the 20-token budget prefill the first three together; the 3-token prompt alone; the last waits
    # for a free row (four rows).
    assert model.seen[:3] == [(3, 5), (1, 3), (4, 1)]
    assert [tokens_by_sample(r)[0] for r in requests] == [lone(model, p, params)[0] for p in prompts]


def test_cancel_frees_the_row_for_a_waiting_request_at_the_next_step(model):
    params = SamplingParams(max_new_tokens=50, temperature=0)
    batcher = Batcher(model, max_rows=1)
    a = batcher.submit([1, 2], params)
    batcher.step()
    b = batcher.submit([3, 4], params)
    assert [r for r, _ in batcher.step()] == [a]  # b waits: the one row is taken
    batcher.cancel(a)
    events = batcher.step()
    assert {r for r, _ in events} == {b} and batcher.owners == [b] and a.done
    while batcher.busy:
        events += batcher.step()
    assert [e.token_id for r, e in events if r is b] == lone(model, [3, 4], params)[0]
    waiting = batcher.submit([5], params), batcher.submit([6], params)
    batcher.cancel(waiting[1])  # not admitted yet: it leaves the queue at once
    assert list(batcher.waiting) == [waiting[0]] and waiting[1].done


def test_memory_is_bounded_and_reused_over_many_requests(model):
    batcher = Batcher(model, max_rows=4)
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=1)
    run(batcher, {0: [([1] * 7, params)] * 8})  # the longest prompt below, on every row
    store = batcher.cache.slots_k
    requests = run(batcher, {s: [([1 + s % 50] * (1 + s % 7), params)] * 3 for s in range(60)})
    assert batcher.cache.slots_k is store and store.shape[1] == 4  # no allocation after the warm-up
    assert all(r.done and len(r.events) == 6 for r in requests) and not batcher.rows and batcher.held == 0


def test_bad_requests_are_clear_errors(model):
    batcher = Batcher(model, max_rows=2)
    with pytest.raises(InputError, match="context window is 128"):
        batcher.submit([1] * 128, SamplingParams())
    with pytest.raises(InputError, match="1 to 127 tokens"):
        batcher.submit([], SamplingParams())
    with pytest.raises(ConfigError, match="n=3"):
        batcher.submit([1], SamplingParams(n=3))
    assert batcher.submit([1], SamplingParams(max_new_tokens=0)).done and not batcher.busy
