"""The embedded default source: Python's standard-library documentation as a local website.

Every Python installation can render its own documentation with `pydoc`, so the quickstart needs no
internet: it writes one HTML page per module (with pydoc's links between modules), adds an index and a
robots.txt, and serves the folder on 127.0.0.1 for the real crawler to fetch over HTTP.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib
import io
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Iterator

from llmlab.files import write_text
from llmlab.progress import Progress

# Modules whose import has side effects (opens a browser, prints, needs a display) or that only exist
# on other platforms.
SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "ensurepip", "lib2to3",
    "msilib", "winreg", "winsound", "nt", "_winapi", "msvcrt", "_msi", "pydoc_data", "test", "venv",
}
LINK = re.compile(r'href="([A-Za-z_][\w.]*)\.html')


def _page(name: str) -> str | None:
    """pydoc's HTML page for module `name`, or None when it cannot be imported quietly."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
            return pydoc_html(module, name)
    except BaseException:  # noqa: BLE001 - any failure (even SystemExit) just leaves the page out
        return None


def pydoc_html(module: object, name: str) -> str:
    import pydoc

    return pydoc.html.page(pydoc.describe(module), pydoc.html.document(module, name))


def public_stdlib_modules() -> list[str]:
    return sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP)


def render_site(out_dir: str | Path, max_pages: int = 600) -> int:
    """Render stdlib modules (top-level ones, then modules they link to) as HTML; return the page count.

    Pages are written atomically and an existing page is kept, so an interrupted render continues.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    roots = public_stdlib_modules()
    stdlib_roots = set(sys.stdlib_module_names)
    queue, seen, written = list(roots), set(roots), []
    with Progress(total=None, desc="render pydoc site", unit="page") as bar:
        while queue and len(written) < max_pages:
            name = queue.pop(0)
            path = out / f"{name}.html"
            if path.exists():
                html = path.read_text(encoding="utf-8")
            else:
                html = _page(name)
                if html is None:
                    continue
                write_text(path, html)
            written.append(name)
            bar.update(1)
            for target in LINK.findall(html):
                if target not in seen and target.split(".")[0] in stdlib_roots and target.split(".")[0] not in SKIP:
                    seen.add(target)
                    queue.append(target)
    links = "\n".join(f'<li><a href="{n}.html">{n}</a></li>' for n in sorted(written))
    write_text(
        out / "index.html",
        "<!doctype html><html><head><title>Python standard library documentation</title></head><body>"
        f"<h1>Python {sys.version.split()[0]} standard library</h1><p>Rendered by pydoc.</p><ul>{links}</ul>"
        "</body></html>",
    )
    write_text(out / "robots.txt", "User-agent: *\nAllow: /\n")
    return len(written)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass


@contextlib.contextmanager
def serve_directory(directory: str | Path, port: int = 0) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 in a background thread (port 0: a free one); yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
