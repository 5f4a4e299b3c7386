"""Answers from a retrieval index through the OpenAI API: `MODEL+rag:INDEX` ids and the `rag` field put the
index's passages into the prompt the model sees, and the response names them (`llmlab_sources`) and the
ones the answer cites (`llmlab_cited`), streamed or not."""

import httpx
import pytest
from test_retrieve import DOCS

from llmlab.retrieve import build_index
from llmlab.serve import BackgroundServer, Limits, ModelRegistry, create_app
from llmlab.serve.tiny import make_tiny_checkpoint

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.network_local
QUESTION = [{"role": "user", "content": "Which module compresses files like gzip?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag")
    make_tiny_checkpoint(root / "models" / "tiny-gpt")  # a 256-token context window
    build_index(DOCS, root / "index", show_progress=False)
    registry = ModelRegistry(root / "models", imported=False, indexes={"docs": root / "index"})
    app = create_app(registry, Limits(max_output_tokens=256), history_path=root / "h.sqlite")
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def chat(http, **body):
    r = http.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 8, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


def prompt_tokens(http, model, messages):
    return len(http.post("/tokenize", json={"model": model, "messages": messages}).json()["tokens"])


def test_rag_models_are_listed_first_with_their_index(http):
    cards = http.get("/v1/models").json()["data"]
    assert [c["id"] for c in cards] == ["tiny-gpt+rag:docs", "tiny-gpt"]
    assert cards[0]["rag_index"] == "docs" and cards[0]["rag_chunks"] == len(DOCS)
    assert http.get("/v1/models/tiny-gpt+rag:docs").json()["rag_index"] == "docs"


def test_passages_go_into_the_prompt_and_the_response_names_them(http):
    plain = chat(http, model="tiny-gpt")
    grounded = chat(http, model="tiny-gpt+rag:docs")
    assert "llmlab_sources" not in plain
    sources = grounded["llmlab_sources"]
    assert sources[0]["url"] == "https://docs.test/gzip.html" and sources[0]["n"] == 1
    assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))
    assert grounded["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    # the prompt the model read holds the numbered passage (one, so none is trimmed to fit the 256-token window):
    # exactly what /tokenize counts for it
    from llmlab.retrieve import Passage, rag_messages

    one = chat(http, model="tiny-gpt", rag={"index": "docs", "k": 1})
    passages = [Passage(s["text"], s["title"], s["url"], s["score"], "") for s in one["llmlab_sources"]]
    messages, _ = rag_messages(QUESTION, passages, lambda s: 0, 10**6)
    assert "[1] gzip — https://docs.test/gzip.html" in messages[-1]["content"]
    assert one["usage"]["prompt_tokens"] == prompt_tokens(http, "tiny-gpt", messages)
    assert isinstance(grounded["choices"][0]["llmlab_cited"], list)


def test_tokenize_counts_the_prompt_with_its_passages(http):
    for model, extra in (("tiny-gpt+rag:docs", {}), ("tiny-gpt", {"rag": {"index": "docs", "k": 2}})):
        answered = chat(http, model=model, **extra)
        counted = http.post("/tokenize", json={"model": model, "messages": QUESTION, "max_tokens": 8, **extra}).json()
        assert counted["count"] == answered["usage"]["prompt_tokens"] > prompt_tokens(http, "tiny-gpt", QUESTION)
        assert "gzip.html" in "".join(counted["token_strs"])


def test_the_rag_field_equals_the_model_id_and_k_limits_the_passages(http):
    by_id = chat(http, model="tiny-gpt+rag:docs")
    by_field = chat(http, model="tiny-gpt", rag={"index": "docs"})
    assert by_field["llmlab_sources"] == by_id["llmlab_sources"]
    assert by_field["choices"][0]["message"] == by_id["choices"][0]["message"]
    assert len(chat(http, model="tiny-gpt", rag={"index": "docs", "k": 1})["llmlab_sources"]) == 1


def test_passages_stay_within_their_token_budget_and_the_context_window(http):
    small = chat(http, model="tiny-gpt", rag={"index": "docs", "max_tokens": 40})
    alone = prompt_tokens(http, "tiny-gpt", QUESTION)
    assert small["usage"]["prompt_tokens"] - alone <= 40 + 2  # the budget counts text; the template adds little
    assert len(small["llmlab_sources"]) < 3
    room = chat(http, model="tiny-gpt+rag:docs", max_tokens=250)  # 256-token window: no room for passages
    assert room["llmlab_sources"] == [] and room["usage"]["prompt_tokens"] == alone


def test_streaming_names_the_sources_first_and_the_citations_last(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    chunks = list(client.chat.completions.create(model="tiny-gpt+rag:docs", messages=QUESTION, max_tokens=8,
                                                 temperature=0, stream=True))
    first, last = chunks[0].model_extra, chunks[-1].choices[0].model_extra
    assert first["llmlab_sources"][0]["url"] == "https://docs.test/gzip.html"
    assert "llmlab_cited" in last and chunks[-1].choices[0].finish_reason is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    http = httpx.post(server.url + "/v1/chat/completions", timeout=120,
                      json={"model": "tiny-gpt+rag:docs", "messages": QUESTION, "max_tokens": 8, "temperature": 0})
    assert text == http.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("body, status, param", [
    ({"model": "tiny-gpt+rag:nope"}, 404, "model"),
    ({"model": "tiny-gpt", "rag": {"index": "nope"}}, 404, "rag"),
    ({"model": "tiny-gpt+rag:docs", "rag": {"index": "other"}}, 400, "rag"),
    ({"model": "tiny-gpt", "rag": {"index": "docs", "k": 0}}, 400, None),
    ({"model": "tiny-gpt", "rag": {"index": "docs", "colour": 1}}, 400, None),
])
def test_bad_retrieval_requests_are_openai_shaped_errors(http, body, status, param):
    r = http.post("/v1/chat/completions", json={"messages": QUESTION, **body})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and (param is None or error["param"] == param)


def test_completions_refuse_a_rag_model(http):
    r = http.post("/v1/completions", json={"model": "tiny-gpt+rag:docs", "prompt": "gzip"})
    assert r.status_code == 400 and "/v1/chat/completions" in r.json()["error"]["message"]


def test_a_missing_index_fails_when_the_server_starts(tmp_path):
    from llmlab.errors import InputError

    make_tiny_checkpoint(tmp_path / "models" / "tiny-gpt")
    with pytest.raises(InputError):
        ModelRegistry(tmp_path / "models", imported=False, indexes={"docs": tmp_path / "no-index"})
