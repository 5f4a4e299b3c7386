"""The chat tab's Tools control in headless Chromium: a checked calculator is run by the server, and the
call and its result show in the conversation, collapsed, above the answer (the scripted model of
test_serve_tools, which calls the calculator and answers once it sees the result)."""

import pytest
from test_serve_tools import scripted, server  # noqa: F401  (the fixtures: a server with the scripted model)
from ui_support import open_page

pytestmark = pytest.mark.network_local


def test_tools_checkbox_runs_the_calculator_and_shows_the_call(server):  # noqa: F811
    with open_page(server.url + "/") as page:
        page.select_option("#model-select", "scripted")
        page.check("#tool-calculator")
        page.fill("#chat-input", "What is 6 times 7?")
        page.press("#chat-input", "Enter")
        page.wait_for_selector(".msg.assistant details.tool-call", timeout=60_000)
        page.wait_for_function("document.querySelector('#chat-stop').classList.contains('hidden')", timeout=60_000)
        assert "The answer is 42." in page.inner_text(".msg.assistant .md")
        summary = page.inner_text("details.tool-call summary")
        assert summary.startswith("calculator(") and summary.endswith("→ 42")
        assert not page.is_visible("details.tool-call pre")  # collapsed until opened
        page.click("details.tool-call summary")
        assert '"expression": "6*7"' in page.inner_text("details.tool-call pre")
        # Unchecked again, the next answer streams as before (no tools in the request).
        page.uncheck("#tool-calculator")
        page.fill("#chat-input", "hello")
        page.press("#chat-input", "Enter")
        page.wait_for_function("document.querySelectorAll('.msg.assistant .stats').length == 2", timeout=60_000)
        assert page.locator("details.tool-call").count() == 1
        assert page.errors == []
