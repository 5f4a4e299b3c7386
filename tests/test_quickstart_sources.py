"""The quickstart's embedded sources: the pydoc site and the documentation instruction set."""

import random
import urllib.request

from llmlab.quickstart.instructions import build_instructions, first_sentence, own_doc, questions_for_module
from llmlab.quickstart.site import render_site, serve_directory


def test_site_renders_linked_pages_and_serves_them(tmp_path):
    n = render_site(tmp_path, max_pages=5)
    assert n == 5
    pages = sorted(p.name for p in tmp_path.glob("*.html"))
    assert "index.html" in pages and len(pages) == 6
    with serve_directory(tmp_path) as base:
        assert base.startswith("http://127.0.0.1:")
        index = urllib.request.urlopen(base).read().decode()
        robots = urllib.request.urlopen(base + "robots.txt").read().decode()
    assert all(f'href="{p}"' in index for p in pages if p != "index.html")
    assert "User-agent: *" in robots


def test_render_resumes_without_rewriting(tmp_path):
    render_site(tmp_path, max_pages=3)
    first = sorted(tmp_path.glob("*.html"))[0]
    first.write_text("kept")
    render_site(tmp_path, max_pages=3)
    assert first.read_text() == "kept"


def test_first_sentence_rules():
    assert first_sentence("Return the cosine of x.\n\nMore text.") == "Return the cosine of x."
    assert first_sentence("loads(s) -> object") is None
    assert first_sentence(None) is None
    assert first_sentence("Short.") is None


def test_inherited_docstrings_are_not_answers():
    class Base:
        """Base documentation that subclasses inherit."""

    class Child(Base):
        pass

    assert own_doc(Child) is None and own_doc(Base).startswith("Base")


def test_questions_come_from_docstrings_and_split_is_seeded():
    qas = questions_for_module("json", random.Random(0))
    assert qas[0].subject == "json" and "JSON" in qas[0].answer
    assert any(q.subject == "json.dumps" for q in qas)
    a = build_instructions(["json", "textwrap", "fnmatch"], seed=1)
    b = build_instructions(["json", "textwrap", "fnmatch"], seed=1)
    assert a == b and a[1] and not set(a[0]) & set(a[1])
