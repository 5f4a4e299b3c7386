"""The chat tab's turns and history in headless Chromium: a reply stays in the conversation it was asked in,
Stop keeps the partial answer, a failed turn is not kept, old turns are dropped to fit the context window
(and the page says so), and the open conversation comes back after a reload.

A "slow" model (the tiny GPT, 0.05 s per token, 48 tokens at most) keeps a reply streaming long enough to act during it.
"""

import shutil
from pathlib import Path

import httpx
import pytest
import torch
from test_serve_limits import SlowGPT

from llmlab.model import preset
from llmlab.serve import BackgroundServer, ModelRegistry, create_app
from llmlab.serve.tiny import make_tiny_checkpoint, tiny_tokenizer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

pytestmark = pytest.mark.network_local
ARTIFACTS = Path(__file__).parent / "artifacts" / "ui"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


class SlowerGPT(SlowGPT):
    delay = 0.05


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / "tiny-gpt")  # a 256-token context window
    registry = ModelRegistry(root, imported=False)
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    registry.add("slow", SlowerGPT(preset("tiny", vocab_size=tok.vocab_size, context_length=256)), tok)
    app = create_app(registry, history_path=tmp_path_factory.mktemp("h") / "h.sqlite")
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelectorAll('#model-select option').length == 2")
        page.fill("#seed", "3")
        page.dispatch_event("#seed", "change")
        page.fill("#max_tokens", "48")
        page.dispatch_event("#max_tokens", "input")
        yield page
        assert page.errors == []
        browser.close()


def conversations(server):
    """Every saved conversation's messages, as (role, content) pairs, by first message."""
    out = {}
    for c in httpx.get(server.url + "/api/conversations").json()["data"]:
        messages = httpx.get(server.url + "/api/conversations/" + c["id"]).json()["messages"]
        out[messages[0]["content"]] = [(m["role"], m["content"]) for m in messages]
    return out


def ask(page, model, text, wait=True):
    page.select_option("#model-select", model)
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")
    if wait:
        page.wait_for_function("document.querySelector('#chat-stop').classList.contains('hidden')", timeout=60_000)


def streaming_tokens(page, at_least):
    page.wait_for_function(f"document.querySelectorAll('.body.streaming .tok').length >= {at_least}", timeout=30_000)


def test_a_reply_stays_in_its_own_conversation_when_the_user_switches(page, server):
    page.click("#new-chat")
    ask(page, "tiny-gpt", "the other chat")
    page.wait_for_function("document.querySelectorAll('#history-list li[data-id]').length == 1")
    page.click("#new-chat")
    ask(page, "slow", "first question", wait=False)
    streaming_tokens(page, 2)
    page.locator("#history-list li[data-id]").first.click()  # to the other chat, mid-stream
    page.wait_for_function("document.querySelectorAll('.msg').length == 2")
    assert "the other chat" in page.inner_text("#messages")
    page.wait_for_function("document.querySelectorAll('#history-list li[data-id]').length == 2", timeout=60_000)
    saved = conversations(server)
    assert len(saved["the other chat"]) == 2
    assert [r for r, _ in saved["first question"]] == ["user", "assistant"] and saved["first question"][1][1]
    assert page.locator(".msg").count() == 2  # the open chat did not receive the reply

    page.click("#new-chat")  # "New chat" mid-stream keeps question and answer together
    ask(page, "slow", "second question", wait=False)
    streaming_tokens(page, 2)
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    page.wait_for_function("document.querySelectorAll('#history-list li[data-id]').length == 3", timeout=60_000)
    assert [r for r, _ in conversations(server)["second question"]] == ["user", "assistant"]


def test_stop_keeps_the_partial_answer_and_turns_alternate(page, server):
    page.click("#new-chat")
    ask(page, "slow", "please stop me", wait=False)
    streaming_tokens(page, 3)
    page.click("#chat-stop")
    page.wait_for_function("document.querySelector('.msg.assistant .stats')?.textContent.includes('stopped by you')")
    partial = page.locator(".msg.assistant .body").last.inner_text()
    assert partial
    ask(page, "tiny-gpt", "and again")
    saved = conversations(server)["please stop me"]
    assert [r for r, _ in saved] == ["user", "assistant", "user", "assistant"] and saved[1][1] == partial


def test_a_failed_turn_is_not_kept(page, server):
    page.click("#new-chat")
    ask(page, "tiny-gpt", "hello")
    too_long = "far too long " * 200
    ask(page, "tiny-gpt", too_long)
    assert "context window" in page.locator(".msg.assistant .error").last.inner_text()
    assert page.input_value("#chat-input") == too_long.strip()  # back in the box to edit
    page.fill("#chat-input", "")
    ask(page, "tiny-gpt", "short again")
    assert page.locator(".msg.assistant .error").count() == 1
    assert [c for _, c in conversations(server)["hello"]][::2] == ["hello", "short again"]


def test_old_turns_are_dropped_to_fit_the_context_and_the_page_says_so(page, server):
    page.click("#new-chat")
    for i in range(4):
        ask(page, "tiny-gpt", f"turn {i}: tell me more about tokens, context windows and attention heads")
    assert page.locator(".msg.assistant .error").count() == 0
    assert page.locator(".msg.assistant .stats").count() == 4
    note = page.inner_text(".context-note")
    assert "256-token context" in note and page.locator(".msg.dropped").count() >= 2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-context-dropped.png"))


def test_the_open_conversation_reopens_after_a_reload(page):
    shown = page.locator(".msg").count()
    assert shown == 8
    page.reload()
    page.wait_for_function(f"document.querySelectorAll('.msg').length == {shown}")
    assert page.locator(".context-note").count() == 1
    assert "turn 3" in page.locator(".msg.user").last.inner_text()
