"""The playground's answers from a retrieval index, in headless Chromium: the `+rag:` model is offered first,
its answer lists the passages it was given (linked, with scores and ranks), the [n] citations link to
their sources, a source whose URL is not http(s) gets no link, and the sources come back after a reload."""

import json

import pytest
from test_retrieve import DOCS
from ui_support import open_page

from llmlab.retrieve import build_index
from llmlab.serve import BackgroundServer, ModelRegistry, create_app
from llmlab.serve.tiny import make_tiny_checkpoint

pytestmark = pytest.mark.network_local


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("rag-ui")
    make_tiny_checkpoint(root / "models" / "tiny-gpt")
    build_index(DOCS, root / "index", show_progress=False)
    registry = ModelRegistry(root / "models", imported=False, indexes={"docs": root / "index"})
    with BackgroundServer(create_app(registry, history_path=root / "h.sqlite")) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server):
    with open_page(server.url + "/") as page:
        page.fill("#max_tokens", "8")
        page.dispatch_event("#max_tokens", "input")
        yield page
        assert page.errors == []


def send(page, text):
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")
    page.wait_for_function("document.querySelector('#chat-stop').classList.contains('hidden')", timeout=60_000)


def test_the_rag_model_is_the_default_and_its_answer_lists_the_sources(page):
    assert page.input_value("#model-select") == "tiny-gpt+rag:docs"
    assert "answers from index" in page.inner_text("#model-info")
    page.click("#new-chat")
    send(page, "Which module compresses files like gzip?")
    sources = page.locator(".msg.assistant .sources-list li")
    assert sources.count() >= 1
    first = sources.first.locator("a").first
    assert first.get_attribute("href") == "https://docs.test/gzip.html" and first.inner_text() == "gzip"
    assert "score" in sources.first.inner_text()


def test_citations_link_to_their_sources_and_bad_urls_get_no_link(page):
    sources = [{"n": 1, "title": "gzip", "url": "https://docs.test/gzip.html", "score": 0.03, "bm25_rank": 1,
                "dense_rank": 2, "text": "The gzip module compresses files."},
               {"n": 2, "title": "evil", "url": "javascript:alert(1)", "score": 0.01, "bm25_rank": None,
                "dense_rank": 1, "text": "<img src=x onerror=alert(1)>"}]
    head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "tiny-gpt+rag:docs"}
    chunks = [{**head, "llmlab_sources": sources, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
              {**head, "choices": [{"index": 0, "delta": {"content": "gzip does it [1], not [2] or [7]. `[1]`"}}]},
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "llmlab_cited": [1, 2]}]}]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, body=body, content_type="text/event-stream"))
    page.click("#new-chat")
    send(page, "Which module compresses files?")
    page.unroute("**/v1/chat/completions")
    answer = page.locator(".msg.assistant").last
    cites = answer.locator(".md a.cite")
    assert cites.count() == 2  # [1] and [2]; [7] names no source and code is left alone
    assert cites.nth(0).get_attribute("href") == "https://docs.test/gzip.html"
    assert cites.nth(1).get_attribute("href") is None  # a javascript: URL is never a link
    assert answer.locator(".sources-list li").nth(1).locator("a").count() == 0
    assert answer.locator(".sources-list img").count() == 0  # passage text is text, not HTML
    assert "2 cited" in answer.locator(".sources summary").first.inner_text()

    page.reload()  # the open conversation comes back with its sources
    page.wait_for_function("document.querySelectorAll('.msg.assistant .sources-list li').length == 2")
    assert page.locator(".msg.assistant .md a.cite").first.get_attribute("href") == "https://docs.test/gzip.html"
