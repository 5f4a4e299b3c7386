"""The OpenAI-compatible API, driven by the official `openai` client against a real server on 127.0.0.1.

Two tiny random-weight checkpoints (GPT-2-style and Llama-style) with a BPE tokenizer are written to
disk and served from a models directory, so loading, chat templates, streaming and errors all run the
real code paths. Expected values come from the model itself (its cross-entropy, its logits), not by hand.
"""

import json

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")

from llmlab.infer import load_model  # noqa: E402
from llmlab.serve import BackgroundServer, Limits, ModelRegistry, create_app  # noqa: E402
from llmlab.serve.tiny import make_tiny_checkpoint  # noqa: E402

pytestmark = pytest.mark.network_local
GPT_ID, LLAMA_ID = "tiny-gpt", "run1/sft"
HI = [{"role": "user", "content": "What is a token?"}]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / "tiny-gpt")
    make_tiny_checkpoint(root / "run1" / "sft" / "checkpoints" / "step_000010", family="tiny-llama", seed=1)
    (root / "notes").mkdir()  # not a checkpoint: ignored
    return root


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    registry = ModelRegistry(models_dir, imported=False)
    limits = Limits(max_output_tokens=200, max_prompt_tokens=200, max_n=4)
    app = create_app(registry, limits, history_path=tmp_path_factory.mktemp("h") / "history.sqlite")
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def prompt_ids(http, model, messages):
    r = http.post("/tokenize", json={"model": model, "messages": messages})
    assert r.status_code == 200
    return r.json()["tokens"]


def test_models_lists_every_checkpoint_in_the_directory(client):
    ids = [m.id for m in client.models.list().data]
    assert sorted(ids) == sorted([GPT_ID, LLAMA_ID])
    assert client.models.retrieve(LLAMA_ID).id == LLAMA_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_chat_completion_reports_usage_and_timings(client, http):
    r = client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=12, seed=3)
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(prompt_ids(http, GPT_ID, HI))
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    timings = choice.model_extra["timings"]
    assert 0 < timings["ttft_ms"] <= timings["total_ms"]


@pytest.mark.parametrize("model", [GPT_ID, LLAMA_ID])
def test_streaming_gives_the_same_text_as_non_streaming(client, model):
    kw = dict(model=model, messages=HI, max_tokens=20, temperature=1.0, seed=7)
    whole = client.chat.completions.create(**kw)
    stream = client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sse_stream_ends_with_done(http):
    body = {"model": GPT_ID, "messages": HI, "max_tokens": 5, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_same_seed_same_text_and_n_choices_follow_seed_plus_index(client):
    kw = dict(model=LLAMA_ID, messages=HI, max_tokens=16, temperature=1.0)
    a = client.chat.completions.create(**kw, seed=11, n=3)
    b = client.chat.completions.create(**kw, seed=11, n=3)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1  # different seeds per choice on a random model: different samples
    # Choice i is what a single request with seed 11 + i gives.
    single = client.chat.completions.create(**kw, seed=12)
    assert single.choices[0].message.content == texts[1]
    other = client.chat.completions.create(**kw, seed=99)
    assert other.choices[0].message.content != texts[0]


def test_logprobs_match_the_models_own_probabilities(client, http, models_dir):
    r = client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    model, tok = load_model(models_dir / "tiny-gpt")
    ids = prompt_ids(http, GPT_ID, HI)
    generated = tok.encode("".join(e.token for e in content), allowed_special="all")
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids + generated]))
    logp = logits[0].log_softmax(-1)
    for i, entry in enumerate(content):
        row = logp[len(ids) - 1 + i]
        assert entry.logprob == pytest.approx(float(row.max()), abs=1e-4)  # greedy: the argmax token
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token


def test_stop_sequence_cuts_the_text_before_it(client):
    kw = dict(model=GPT_ID, prompt="The function returns", max_tokens=40, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    assert len(full) >= 8, full
    stop = full[4:7]
    cut = client.completions.create(**kw, stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_echo_logprobs_score_the_prompt_like_the_models_loss(client, models_dir):
    text = "The function returns a list of strings."
    r = client.completions.create(model=GPT_ID, prompt=text, max_tokens=0, echo=True, logprobs=2)
    choice = r.choices[0]
    assert choice.text == text
    lps = choice.logprobs.token_logprobs
    assert lps[0] is None and all(lp <= 0 for lp in lps[1:])
    model, tok = load_model(models_dir / "tiny-gpt")
    ids = tok.encode(text)
    assert len(lps) == len(ids) == r.usage.prompt_tokens
    with torch.no_grad():
        _, loss = model(torch.tensor([ids[:-1]]), targets=torch.tensor([ids[1:]]))
    assert sum(lps[1:]) == pytest.approx(-float(loss) * (len(ids) - 1), rel=1e-4)


def test_max_completion_tokens_and_content_parts(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "a token?"}]}]
    a = client.chat.completions.create(model=GPT_ID, messages=parts, max_completion_tokens=5, seed=1,
                                       extra_body={"min_p": 0.01, "top_k": 50, "repetition_penalty": 1.1})
    b = client.chat.completions.create(model=GPT_ID, messages=HI, max_completion_tokens=5, seed=1,
                                       extra_body={"min_p": 0.01, "top_k": 50, "repetition_penalty": 1.1})
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens <= 5


def test_invalid_values_are_400_in_openais_error_shape(client, http):
    bad = [dict(temperature=-1), dict(top_p=0), dict(n=9), dict(max_tokens=500), dict(top_logprobs=3)]
    for extra in bad:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=GPT_ID, messages=HI, **extra)
        assert e.value.status_code == 400
    r = http.post("/v1/chat/completions", json={"model": GPT_ID, "messages": HI, "temperature": "hot"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "temperature" and err["type"] == "invalid_request_error"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    with pytest.raises(openai.BadRequestError, match="image_url"):
        client.chat.completions.create(model=GPT_ID, messages=image)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=GPT_ID, prompt="word " * 300)
    assert e.value.code == "context_length_exceeded"


def test_out_of_range_sampling_values_name_the_request_field(http):
    for field, value in {"temperature": 2.5, "top_k": -2, "frequency_penalty": 3, "max_tokens": -1}.items():
        r = http.post("/v1/completions", json={"model": GPT_ID, "prompt": "x", field: value})
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == field and f"{field} must be" in err["message"], err
    off = http.post("/v1/completions", json={"model": GPT_ID, "prompt": "x", "max_tokens": 2, "top_k": -1})
    assert off.status_code == 200  # -1: no top-k, as in vLLM


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert e.value.code == "model_not_found" and "tiny-gpt" in e.value.message


def test_tokenize_and_detokenize_round_trip(http, models_dir):
    text = "Tokens: 12345, naïve café 🤖!"
    r = http.post("/tokenize", json={"model": GPT_ID, "prompt": text}).json()
    _, tok = load_model(models_dir / "tiny-gpt")
    assert r["tokens"] == tok.encode(text) and r["count"] == len(r["tokens"]) and r["max_model_len"] == 256
    assert "".join(r["token_strs"]).startswith("Tokens")
    assert http.post("/detokenize", json={"model": GPT_ID, "tokens": r["tokens"]}).json()["prompt"] == text
    assert http.post("/detokenize", json={"model": GPT_ID, "tokens": [10**6]}).status_code == 400


def test_api_key_gives_401_without_it(models_dir):
    registry = ModelRegistry(models_dir, imported=False)
    with BackgroundServer(create_app(registry, api_key="s3cret")) as srv:
        wrong = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.models.list()
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
        assert httpx.post(srv.url + "/tokenize", json={"model": GPT_ID, "prompt": "x"}).status_code == 401
        right = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert right.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=2).usage.completion_tokens >= 1
        assert httpx.get(srv.url + "/").status_code == 200  # the page itself loads; it asks for the key


def test_logit_bias_changes_the_output(client, http):
    plain = client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=4, temperature=0)
    forced = http.post("/tokenize", json={"model": GPT_ID, "prompt": "zebra"}).json()["tokens"][0]
    piece = http.post("/detokenize", json={"model": GPT_ID, "tokens": [forced]}).json()["prompt"]
    biased = client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=4, temperature=0,
                                            logit_bias={str(forced): 100})
    assert biased.choices[0].message.content == piece * 4 != plain.choices[0].message.content
    stream = client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=4, temperature=0, stream=True,
                                            logit_bias={str(forced): 100})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == piece * 4
    for bias in ({"5": 101}, {"999999": 1}):  # out of range; outside the vocabulary
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=2, logit_bias=bias)
        assert e.value.body["param"] == "logit_bias"


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_unknown_output_formats_and_tools_are_refused_not_ignored(client, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=2, **extra)
    assert e.value.body["param"] == param and e.value.code == "unsupported_parameter"
    ok = client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=2, response_format={"type": "text"},
                                        tool_choice="none")
    assert ok.choices[0].finish_reason == "length"


def test_seed_beyond_64_bits_and_invalid_json_are_400s_in_openais_shape(client, http):
    for seed in (2**64, -(2**63) - 1, 10**400):
        r = http.post("/v1/chat/completions", content=f'{{"model": "{GPT_ID}", "messages": {json.dumps(HI)}, '
                      f'"seed": {seed}}}', headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    assert client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=1, seed=2**63 - 1).choices
    r = http.post("/v1/chat/completions", content=b'{"model": "tiny-gpt", "messages": [',
                  headers={"content-type": "application/json"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] is None and error["code"] == "invalid_json"
    assert "byte 35" in error["message"]  # where the body ends


def test_an_unexpected_error_is_a_500_in_openais_shape(models_dir):
    app = create_app(ModelRegistry(models_dir, imported=False))

    def broken(*args):
        raise RuntimeError("a bug")

    app.state.generator.chat_prompt = broken
    with BackgroundServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model=GPT_ID, messages=HI, max_tokens=1)
        assert e.value.code == "internal_error" and "a bug" in e.value.message


def test_legacy_logprobs_show_partial_characters_as_bytes_with_character_offsets(client):
    prompt = "café 🤖 naïve"
    r = client.completions.create(model=GPT_ID, prompt=prompt, echo=True, logprobs=1, max_tokens=8, temperature=0)
    choice = r.choices[0]
    tokens, offsets = choice.logprobs.tokens, choice.logprobs.text_offset
    assert not any("\ufffd" in t for t in tokens)
    assert offsets == sorted(offsets) and offsets[0] == 0
    for t, off in zip(tokens, offsets):
        if not t.startswith("bytes:"):
            assert choice.text[off:off + len(t)] == t
    parts = [t for t in tokens[:len(tokens) - 8] if t.startswith("bytes:")]
    assert parts and all(set(p[6:].replace("\\x", "")) <= set("0123456789abcdef") for p in parts)
    assert tokens[offsets.index(4)].startswith(" ")  # after "café": four characters, however many tokens
    streamed = client.completions.create(model=GPT_ID, prompt=prompt, logprobs=1, max_tokens=8, temperature=0,
                                         stream=True)
    chunks = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    whole = client.completions.create(model=GPT_ID, prompt=prompt, logprobs=1, max_tokens=8, temperature=0)
    assert [o for c in chunks for o in c.text_offset] == whole.choices[0].logprobs.text_offset


def test_fit_chat_drops_the_fewest_oldest_turns_by_the_tokenizers_count(http):
    system = [{"role": "system", "content": "Be brief."}]
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"question {i} " + "about tokens " * 6},
                  {"role": "assistant", "content": f"answer {i} " + "with many words " * 6}]
    turns.append({"role": "user", "content": "and now?"})
    fit = http.post("/api/fit_chat", json={"model": GPT_ID, "messages": system + turns, "max_tokens": 64}).json()
    assert fit["fits"] and fit["budget"] == 256 - 64 and fit["dropped"] > 0 and turns[fit["dropped"]]["role"] == "user"
    kept = prompt_ids(http, GPT_ID, system + turns[fit["dropped"]:])
    assert len(kept) == fit["prompt_tokens"] <= fit["budget"]
    assert len(prompt_ids(http, GPT_ID, system + turns[fit["dropped"] - 2:])) > fit["budget"]  # one turn more is too many
    short = http.post("/api/fit_chat", json={"model": GPT_ID, "messages": turns[-3:]}).json()
    assert short["dropped"] == 0 and short["fits"]
    huge = http.post("/api/fit_chat", json={"model": GPT_ID, "messages": [{"role": "user", "content": "x " * 400}]})
    assert huge.json()["fits"] is False and huge.json()["dropped"] == 0
    assert http.post("/api/fit_chat", json={"model": GPT_ID, "messages": system}).status_code == 400
