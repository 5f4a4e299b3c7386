"""The chat tab's turns and history in headless Chromium: a reply stays in the conversation it was asked in,
Stop keeps the partial answer, a failed turn is not kept, old turns are dropped to fit the context window
(and the page says so), and the open conversation comes back after a reload.

A "slow" model (the tiny GPT, 0.05 s per token, 48 tokens at most) keeps a reply streaming long enough to act during it.
"""

import httpx
import pytest
import torch
from test_serve_limits import SlowGPT
from ui_support import ARTIFACTS, open_page

from llmlab.model import preset
from llmlab.serve import BackgroundServer, ModelRegistry, create_app
from llmlab.serve.tiny import make_tiny_checkpoint, tiny_tokenizer

pytestmark = pytest.mark.network_local


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
    with open_page(server.url + "/") as page:
        page.fill("#seed", "3")
        page.dispatch_event("#seed", "change")
        page.fill("#max_tokens", "48")
        page.dispatch_event("#max_tokens", "input")
        yield page
        assert page.errors == []


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
    page.wait_for_function(f"document.querySelectorAll('.msg .streaming .tok').length >= {at_least}", timeout=30_000)


def test_a_reply_stays_in_its_own_conversation_when_the_user_switches(page, server):
    page.click("#new-chat")
    ask(page, "tiny-gpt", "the other chat")
    page.wait_for_function("document.querySelectorAll('#history-list li[data-id]').length == 1")
    page.click("#new-chat")
    ask(page, "slow", "first question", wait=False)
    streaming_tokens(page, 2)
    page.locator("#history-list li[data-id]").first.click()  # to the other chat, mid-stream
    # the open chat also holds two messages until the other one arrives, so wait for its text
    page.wait_for_function("document.querySelector('#messages').innerText.includes('the other chat')")
    assert page.locator(".msg").count() == 2
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
    # the stopped turn is saved before the chat takes a new message (Enter while busy sends nothing)
    page.wait_for_function("document.querySelector('#chat-stop').classList.contains('hidden')")
    partial = page.locator(".msg.assistant .tokens").last.text_content()
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
    failure = {"error": {"message": "boom", "type": "server_error", "param": None, "code": "internal_error"}}
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=500, json=failure))
    ask(page, "tiny-gpt", "the server fails")
    page.unroute("**/v1/chat/completions")
    assert page.locator(".msg.assistant .error").last.inner_text() == "boom"
    assert page.input_value("#chat-input") == "the server fails"
    page.fill("#chat-input", "")
    ask(page, "tiny-gpt", "short again")
    assert page.locator(".msg.assistant .error").count() == 2
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


MARKDOWN = """## Heading
- one
- **two**

| a | b |
|---|---|
| 1 | 2 |

```python
def f():
    return 1
```
<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script>
[click](javascript:window.pwned=3) <a href="javascript:window.pwned=4">x</a>"""


def open_saved(page, server, messages):
    conv = httpx.post(server.url + "/api/conversations", json={"model": "tiny-gpt", "messages": messages}).json()
    page.click("#new-chat")
    page.locator(f"#history-list li[data-id='{conv['id']}']").click()
    page.wait_for_function(f"document.querySelectorAll('.msg').length == {len(messages)}")
    return conv["id"]


def test_answers_render_as_sanitised_markdown_with_copy_buttons(page, server):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    open_saved(page, server, [{"role": "user", "content": "show me markdown"},
                              {"role": "assistant", "content": MARKDOWN}])
    md = page.locator(".msg.assistant .md").last
    assert md.locator("h2").inner_text() == "Heading" and md.locator("li").count() == 2
    assert md.locator("strong").inner_text() == "two" and md.locator("td").count() == 2
    assert md.locator("pre code.hljs .hljs-keyword").first.inner_text() == "def"
    assert page.evaluate("window.pwned") is None
    assert md.locator("img, script, [onerror]").count() == 0 and md.locator("a[href^='javascript']").count() == 0
    assert "<img src=x" in md.inner_text()  # raw HTML is shown as text
    shot = ARTIFACTS / "chat-markdown.png"
    page.screenshot(path=str(shot))
    md.locator(".copy-code").click()
    assert page.evaluate("navigator.clipboard.readText()") == "def f():\n    return 1\n"
    page.locator(".msg.assistant .actions .copy").last.click()
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN


def test_edit_and_resend_replaces_the_question_and_what_followed(page, server):
    conv = open_saved(page, server, [{"role": "user", "content": "first ask"}, {"role": "assistant", "content": "a1"},
                                     {"role": "user", "content": "second ask"}, {"role": "assistant", "content": "a2"}])
    page.locator(".msg.user .actions .edit").first.click()
    assert page.input_value("#chat-input") == "first ask" and page.is_visible("#edit-note")
    ask(page, "tiny-gpt", "first ask, edited")
    saved = httpx.get(server.url + "/api/conversations/" + conv).json()["messages"]
    assert [(m["role"], m["content"]) for m in saved][0] == ("user", "first ask, edited") and len(saved) == 2
    assert page.locator(".regenerate").count() == 1
    with page.expect_request("**/v1/chat/completions") as request:
        page.locator(".regenerate").click()
    page.wait_for_function("document.querySelector('#chat-stop').classList.contains('hidden')", timeout=60_000)
    assert request.value.post_data_json["messages"][-1] == {"role": "user", "content": "first ask, edited"}
    saved = httpx.get(server.url + "/api/conversations/" + conv).json()["messages"]
    assert [m["role"] for m in saved] == ["user", "assistant"] and page.locator(".msg").count() == 2


def test_stop_sequences_and_penalties_reach_the_request(page):
    page.fill("#stop", r"zz, \n")
    page.fill("#frequency_penalty", "0.5")
    page.dispatch_event("#frequency_penalty", "input")
    page.click("#new-chat")
    with page.expect_request("**/v1/chat/completions") as request:
        ask(page, "tiny-gpt", "penalised")
    body = request.value.post_data_json
    assert body["stop"] == ["zz", "\n"] and body["frequency_penalty"] == 0.5 and body["presence_penalty"] == 0
    assert page.inner_text("#frequency_penalty-val") == "0.50"
    page.fill("#stop", "")
    page.fill("#frequency_penalty", "0")
    page.dispatch_event("#frequency_penalty", "input")


def test_reference_tokenizer_context_and_the_attention_tooltip(page):
    reference = {"tokens": [64], "count": 1, "max_model_len": None, "token_strs": ["a"], "token_bytes": [[97]]}
    page.route("**/tokenize", lambda route: route.fulfill(json=reference))
    page.click(".tab[data-tab=tokenizer]")
    page.wait_for_function("document.querySelector('#tok-counts').innerText.includes('no model context')")
    assert "null" not in page.inner_text("#tok-counts")
    page.unroute("**/tokenize")
    page.click(".tab[data-tab=attention]")
    page.click("#att-run")
    page.wait_for_function("document.querySelector('#att-note').textContent.includes('heads')")
    g = page.evaluate("(({margin, cell}) => ({margin, cell}))(document.querySelector('#att-canvas')._geom)")
    page.locator("#att-canvas").hover(position={"x": g["margin"] + g["cell"] / 2, "y": g["margin"] + 1.5 * g["cell"]})
    assert "attention weight =" in page.inner_text("#tooltip .tt-head")
    page.click(".tab[data-tab=chat]")


def test_every_tab_is_reachable_in_a_narrow_window(page):
    try:
        page.set_viewport_size({"width": 800, "height": 700})
        right = page.evaluate("Math.max(...[...document.querySelectorAll('.tab')].map(t => t.getBoundingClientRect().right))")
        assert right <= 800
        page.set_viewport_size({"width": 480, "height": 700})
        for tab in page.locator(".tab").all():
            tab.evaluate("t => t.scrollIntoView({inline: 'nearest'})")
            box = tab.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 480
        page.click(".tab[data-tab=attention]")
        assert page.is_visible("#panel-attention")
        page.click(".tab[data-tab=chat]")
    finally:
        page.set_viewport_size({"width": 1400, "height": 860})
