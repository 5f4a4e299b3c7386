"""Limits and concurrency: 413 for big bodies, 429 when full, disconnects stop generation, no lost requests.

A "slow" model (the tiny model with a sleep in each forward pass) makes a generation last long enough to
observe, so these tests check behaviour rather than race the machine.
"""

import asyncio
import json
import logging
import time

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")

from llmlab.model import GPT, preset  # noqa: E402
from llmlab.serve import BackgroundServer, Limits, ModelRegistry, create_app  # noqa: E402
from llmlab.serve.tiny import tiny_tokenizer  # noqa: E402

pytestmark = pytest.mark.network_local
HI = [{"role": "user", "content": "hello"}]


class SlowGPT(GPT):
    """The tiny GPT, `delay` seconds slower per pass through its layers (one decoded token)."""

    delay = 0.02
    passes = 0

    def hidden_states(self, *args, **kwargs):
        time.sleep(self.delay)
        self.passes += 1
        return super().hidden_states(*args, **kwargs)


class FlakyGPT(GPT):
    """The tiny GPT, failing its next `failures` passes."""

    failures = 0

    def hidden_states(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the device fell over")
        return super().hidden_states(*args, **kwargs)


@pytest.fixture(scope="module")
def registry():
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    registry = ModelRegistry(imported=False)
    registry.add("fast", GPT(preset("tiny", vocab_size=tok.vocab_size, context_length=512)), tok)
    registry.add("slow", SlowGPT(preset("tiny", vocab_size=tok.vocab_size, context_length=512)), tok)
    registry.add("flaky", FlakyGPT(preset("tiny", vocab_size=tok.vocab_size, context_length=512)), tok)
    return registry


def serve(registry, **limits):
    return BackgroundServer(create_app(registry, Limits(**limits)))


def status(url):
    return httpx.get(url + "/api/status").json()["worker"]


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_body_larger_than_the_limit_is_413(registry):
    with serve(registry, max_body_bytes=2_000) as srv:
        big = {"model": "fast", "messages": [{"role": "user", "content": "x" * 5_000}]}
        r = httpx.post(srv.url + "/v1/chat/completions", json=big)
        assert r.status_code == 413 and "2000 bytes" in r.json()["error"]["message"]

        def chunked():  # no Content-Length: the server must count what arrives
            yield json.dumps(big).encode()

        r = httpx.post(srv.url + "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        small = {"model": "fast", "messages": HI, "max_tokens": 2}
        assert httpx.post(srv.url + "/v1/chat/completions", json=small).status_code == 200


def test_full_server_answers_429_and_recovers(registry):
    with serve(registry, max_batch=1, max_queued=0) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(model="slow", messages=HI, max_tokens=60, stream=True,
                                                extra_body={"ignore_eos": True})
        next(iter(stream))  # the first generation is running
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="fast", messages=HI, max_tokens=2)
        assert e.value.status_code == 429 and e.value.response.headers["retry-after"] == "1"
        stream.close()
        assert wait_until(lambda: status(srv.url)["running"] == 0)
        assert client.chat.completions.create(model="fast", messages=HI, max_tokens=2).choices
        assert status(srv.url)["rejected"] == 1


def test_client_disconnect_stops_its_generation(registry):
    with serve(registry, max_batch=1) as srv:
        body = {"model": "slow", "messages": HI, "max_tokens": 400, "stream": True, "temperature": 1.0}
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
        # 400 tokens take >= 8 s on the slow model; a stopped generation frees the worker at once.
        assert wait_until(lambda: status(srv.url)["running"] == 0, timeout=3.0)
        s = status(srv.url)
        assert s["cancelled"] == 1 and s["tokens"] < 200


def test_a_disconnect_hands_its_row_to_a_waiting_request(registry):
    with serve(registry, max_batch=1, max_queued=4) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        first = client.chat.completions.create(model="slow", messages=HI, max_tokens=400, stream=True,
                                               extra_body={"ignore_eos": True})
        next(iter(first))

        async def second():
            c = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
            return await c.chat.completions.create(model="slow", messages=HI, max_tokens=5,
                                                   extra_body={"ignore_eos": True})

        async def scenario():
            waiting = asyncio.ensure_future(second())
            for _ in range(100):  # until the second request waits for the one row
                await asyncio.sleep(0.05)
                if status(srv.url)["queued"] == 1:
                    break
            assert status(srv.url)["queued"] == 1 and not waiting.done()
            started = time.monotonic()
            first.close()  # 400 tokens would take >= 8 s; the row is handed over at the next step
            r = await waiting
            return r, time.monotonic() - started

        r, waited = asyncio.run(scenario())
        assert r.usage.completion_tokens == 5 and waited < 4.0
        assert wait_until(lambda: status(srv.url)["cancelled"] == 1)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_non_streaming_disconnect_also_stops_without_an_error_in_the_log(registry):
    records = Records()
    logging.getLogger("uvicorn.error").addHandler(records)  # where uvicorn logs "Exception in ASGI application"
    try:
        with serve(registry, max_batch=1) as srv:
            body = {"model": "slow", "messages": HI, "max_tokens": 400}
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=0.5)
            assert wait_until(lambda: status(srv.url)["running"] == 0, timeout=3.0)
            assert status(srv.url)["cancelled"] == 1
            time.sleep(0.3)  # the route notices the disconnect every 0.25 s
    finally:
        logging.getLogger("uvicorn.error").removeHandler(records)
    assert [r.getMessage() for r in records.records] == []


def test_concurrent_requests_all_complete_with_their_own_output(registry):
    with serve(registry, max_batch=2, max_queued=32) as srv:
        async def one(client, seed):
            r = await client.chat.completions.create(model="fast", messages=HI, max_tokens=12, seed=seed,
                                                     temperature=1.0)
            return r.choices[0].message.content

        async def all_at_once():
            client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
            return await asyncio.gather(*(one(client, seed) for seed in range(16)))

        together = asyncio.run(all_at_once())
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        alone = [client.chat.completions.create(model="fast", messages=HI, max_tokens=12, seed=seed,
                                                temperature=1.0).choices[0].message.content for seed in range(4)]
        assert together[:4] == alone  # no cross-talk between concurrent generations
        s = status(srv.url)
        assert s["completed"] == 20 and s["failed"] == 0 and s["rejected"] == 0


def test_concurrent_streams_decode_together_in_one_batch(registry):
    slow = registry.get("slow").model
    with serve(registry, max_batch=8, max_queued=8) as srv:
        async def one(client, seed):
            stream = await client.chat.completions.create(model="slow", messages=HI, max_tokens=20, seed=seed,
                                                          stream=True, extra_body={"ignore_eos": True})
            return sum([1 async for chunk in stream if chunk.choices and chunk.choices[0].delta.role is None
                        and chunk.choices[0].delta.content is not None])

        async def all_at_once():
            client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
            return await asyncio.gather(*(one(client, seed) for seed in range(8)))

        before = slow.passes
        assert asyncio.run(all_at_once()) == [20] * 8
        # One by one: 8 x (1 prefill + 19 decoding passes) = 160 passes; batched, the decoding is shared.
        assert slow.passes - before <= 8 + 19 + 8
        assert status(srv.url)["completed"] == 8


def test_a_failing_forward_fails_its_requests_and_the_batch_recovers(registry):
    with serve(registry) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        registry.get("flaky").model.failures = 1
        with pytest.raises(openai.InternalServerError, match="fell over"):
            client.chat.completions.create(model="flaky", messages=HI, max_tokens=4)
        assert client.chat.completions.create(model="flaky", messages=HI, max_tokens=4,
                                              extra_body={"ignore_eos": True}).usage.completion_tokens == 4
        s = status(srv.url)
        assert (s["failed"], s["completed"], s["running"]) == (1, 1, 0)


def test_server_limits_on_prompt_and_output_length(registry):
    with serve(registry, max_prompt_tokens=20, max_output_tokens=10) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="at most 20"):
            client.completions.create(model="fast", prompt="many words " * 30)
        with pytest.raises(openai.BadRequestError, match="limit of 10"):
            client.completions.create(model="fast", prompt="hi", max_tokens=11)
        r = client.completions.create(model="fast", prompt="hi", max_tokens=10, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 10
