"""The web UI in headless Chromium: chat with streaming, switch models, compare, look inside, history.

Needs Debian's `chromium` and the `playwright` Python package (no browser download):
    apt-get install -y chromium && pip install playwright
Skipped when either is missing. Screenshots go to tests/artifacts/ui/ for a human to look at.
"""

import pytest
from ui_support import ARTIFACTS, open_page

from llmlab.serve import BackgroundServer, ModelRegistry, create_app
from llmlab.serve.tiny import make_tiny_checkpoint

pytestmark = pytest.mark.network_local


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / "tiny-gpt")
    make_tiny_checkpoint(root / "tiny-llama", family="tiny-llama", seed=1)
    app = create_app(ModelRegistry(root, imported=False), history_path=tmp_path_factory.mktemp("h") / "h.sqlite")
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server):
    with open_page(server.url + "/") as page:
        yield page


def shot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def send(page, text):
    before = page.locator(".msg.assistant .stats").count()
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant .stats').length > {before}", timeout=30_000)


def test_chat_streams_a_reply_with_coloured_tokens(page):
    page.fill("#seed", "7")
    page.check("#show-probs")  # answers as coloured tokens instead of rendered Markdown
    send(page, "What is a language model?")
    reply = page.locator(".msg.assistant").last
    assert reply.locator(".tok").count() > 0
    assert "tok/s" in reply.locator(".stats").inner_text()
    assert reply.locator(".tok").first.evaluate("e => e.style.background") != ""
    shot(page, "chat")
    reply.locator(".tok").nth(1).hover()
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    assert "top alternatives" in tooltip.inner_text()
    shot(page, "token-probabilities")


def test_switching_models_and_history(page):
    page.select_option("#model-select", "tiny-llama")
    send(page, "And what is a token?")
    assert page.locator(".msg.assistant .role").last.inner_text().lower() == "tiny-llama"
    page.wait_for_function("document.querySelectorAll('#history-list li[data-id]').length == 1")
    assert "What is a language model" in page.locator("#history-list li").first.inner_text()
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    page.locator("#history-list li[data-id]").first.click()
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length == 2")


def test_compare_runs_models_side_by_side(page):
    page.click(".tab[data-tab=compare]")
    page.click("#compare-run")
    page.wait_for_function(
        "[...document.querySelectorAll('.compare-col .stats')].filter(s => s.textContent.includes('tokens')).length == 2",
        timeout=30_000)
    headers = page.locator(".compare-col h3").all_inner_texts()
    assert any("tiny-gpt" in h for h in headers) and any("tiny-llama" in h for h in headers)
    assert "shared seed 7" in page.inner_text("#compare-note")
    shot(page, "compare")
    page.check("input[name=compare-mode][value=temps]")
    page.click("#compare-run")
    page.wait_for_function(
        "[...document.querySelectorAll('.compare-col .stats')].filter(s => s.textContent.includes('tokens')).length == 4",
        timeout=30_000)
    assert "T=0" in page.locator(".compare-col h3").first.inner_text()
    shot(page, "compare-temperatures")


def test_next_token_chart_and_temperature(page):
    page.click(".tab[data-tab=nexttoken]")
    page.click("#nt-run")
    page.wait_for_function("document.querySelectorAll('.bar-row').length >= 10")
    assert "entropy" in page.inner_text("#nt-summary")
    shot(page, "next-token")
    before = page.inner_text("#nt-summary")
    page.fill("#nt-temp", "0.3")
    page.dispatch_event("#nt-temp", "input")
    page.wait_for_function(f"document.querySelector('#nt-summary').innerText != {before!r}")
    first = page.locator(".bar-row").first
    prompt = page.input_value("#nt-input")
    first.click()
    page.wait_for_function(f"document.querySelector('#nt-input').value.length > {len(prompt)}")


def test_tokenizer_view_counts_tokens(page):
    page.click(".tab[data-tab=tokenizer]")
    page.wait_for_function("document.querySelectorAll('.tok-chip').length > 5")
    counts = page.inner_text("#tok-counts")
    n = page.locator(".tok-chip").count()
    assert f"{n}\ntokens" in counts
    shot(page, "tokenizer")


def test_attention_heatmap(page):
    page.click(".tab[data-tab=attention]")
    page.click("#att-run")
    page.wait_for_function("document.querySelector('#att-note').textContent.includes('heads')")
    assert page.locator("#att-layer option").count() == 2
    shot(page, "attention")


def test_page_made_no_request_outside_127_0_0_1(page, server):
    assert page.requests, "no requests recorded"
    outside = [u for u in page.requests if not u.startswith(server.url) and not u.startswith(("data:", "blob:"))]
    assert outside == []
