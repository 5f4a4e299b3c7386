"""The crawler against real HTTP servers on 127.0.0.1 that each test scripts and watches.

Every server logs the requests it receives, so the tests assert on what the crawler actually did on
the wire (what it fetched, how often, how far apart), not only on what it reports.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import httpx
import pytest
from warcio.archiveiterator import ArchiveIterator

from llmlab.cli import main as cli_main
from llmlab.data.crawl import CrawlConfig, crawl, politeness
from llmlab.errors import ConfigError, InputError

pytestmark = pytest.mark.network_local


@dataclass
class Page:
    """What a route answers."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "text/html; charset=utf-8"
    delay: float = 0.0


def html(*links: str, text: str = "", head: str = "") -> Page:
    anchors = "".join(f'<a href="{link}">{link}</a> ' for link in links)
    return Page(f"<html><head>{head}</head><body><p>{text}</p>{anchors}</body></html>".encode())


def redirect(location: str, status: int = 302) -> Page:
    return Page(status=status, headers={"Location": location})


@dataclass
class Hit:
    path: str
    time: float
    headers: dict[str, str]


Route = Page | Callable[[int], Page]  # a callable gets how many times the path was asked before


class Site:
    """A scripted HTTP/1.1 server on 127.0.0.1, port 0, in a thread; `hits` logs every request."""

    def __init__(self, routes: dict[str, Route], port: int = 0) -> None:
        self.routes = routes
        self.hits: list[Hit] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                with site._lock:
                    n = sum(1 for h in site.hits if h.path == self.path)
                    site.hits.append(Hit(self.path, time.monotonic(), dict(self.headers)))
                    site.active += 1
                    site.max_active = max(site.max_active, site.active)
                try:
                    route = site.routes.get(self.path, Page(b"not found", status=404))
                    page = route(n) if callable(route) else route
                    time.sleep(page.delay)
                    self.send_response(page.status)
                    if page.content_type:
                        self.send_header("Content-Type", page.content_type)
                    for name, value in page.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(page.body)))
                    self.end_headers()
                    self.wfile.write(page.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the crawler stopped reading (size limit, skipped type)
                finally:
                    with site._lock:
                        site.active -= 1

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        return sum(1 for h in self.hits if h.path == path)

    def times(self, path: str) -> list[float]:
        return [h.time for h in self.hits if h.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    sites: list[Site] = []

    def start(routes: dict[str, Route], port: int = 0) -> Site:
        sites.append(Site(routes, port))
        return sites[-1]

    yield start
    for site in sites:
        site.close()


def run(out: Path, *start: str, **options) -> dict:
    """Crawl with test-friendly defaults (no delay, fast retries, loopback allowed); returns the report."""
    settings = dict(delay=0.0, allow_loopback=True, backoff=0.05, retries=2, timeout=5.0, progress=False)
    settings.update(options)
    resolver = settings.pop("resolver", None)
    transport_factory = settings.pop("transport_factory", None)
    config = CrawlConfig(start_urls=list(start), out_dir=out, **settings)
    return crawl(config, resolver=resolver, transport_factory=transport_factory).report


def responses(warc: Path) -> list:
    """(url, status, headers, body, WARC headers) of every response record, in file order."""
    found = []
    with open(warc, "rb") as f:
        for record in ArchiveIterator(f):
            if record.rec_type == "response":
                found.append(
                    (
                        record.rec_headers.get_header("WARC-Target-URI"),
                        int(record.http_headers.get_statuscode()),
                        record.http_headers,
                        record.content_stream().read(),
                        record.rec_headers,
                    )
                )
    return found


def states(out: Path) -> dict[str, str]:
    with sqlite3.connect(out / "frontier.sqlite") as db:
        return dict(db.execute("SELECT url, state FROM urls"))


def reasons(out: Path) -> dict[str, str]:
    with sqlite3.connect(out / "frontier.sqlite") as db:
        return dict(db.execute("SELECT url, reason FROM urls WHERE reason IS NOT NULL"))


# -- output -----------------------------------------------------------------------------------------


def test_pages_are_stored_as_common_crawl_style_warc(serve, tmp_path) -> None:
    zipped = gzip.compress(b"<html><body>compressed page</body></html>")
    site = serve(
        {
            "/": html("/a.html", "/plain.txt", "/zipped.html", text="home"),
            "/a.html": html("/", text="page a"),
            "/plain.txt": Page(b"just text", content_type="text/plain"),
            "/zipped.html": Page(zipped, headers={"Content-Encoding": "gzip"}),
        }
    )
    report = run(tmp_path, site.url("/"))
    records = {url: rest for url, *rest in responses(tmp_path / "pages.warc.gz")}
    assert set(records) == {site.url(p) for p in ["/", "/a.html", "/plain.txt", "/zipped.html"]}
    status, http_headers, body, warc_headers = records[site.url("/a.html")]
    assert status == 200 and b"page a" in body
    assert http_headers.get_header("Content-Type") == "text/html; charset=utf-8"
    assert warc_headers.get_header("WARC-Date").endswith("Z") and warc_headers.get_header("WARC-IP-Address") == "127.0.0.1"
    assert warc_headers.get_header("WARC-Identified-Payload-Type") == "text/html"
    assert records[site.url("/plain.txt")][3].get_header("WARC-Identified-Payload-Type") == "text/plain"
    # Stored decoded, as Common Crawl does, with the original encoding kept under another name.
    _, http_headers, body, _ = records[site.url("/zipped.html")]
    assert body == b"<html><body>compressed page</body></html>"
    assert http_headers.get_header("X-Crawler-Content-Encoding") == "gzip"
    assert http_headers.get_header("Content-Length") == str(len(body))
    # Each response has its request record, which shows the User-Agent that was sent.
    with open(tmp_path / "pages.warc.gz", "rb") as f:
        kinds = [(r.rec_type, r.rec_headers.get_header("WARC-Record-ID"), r.rec_headers.get_header("WARC-Concurrent-To"), r.http_headers) for r in ArchiveIterator(f)]
    assert kinds[0][0] == "warcinfo"
    requests = {rid: h for kind, rid, _, h in kinds if kind == "request"}
    assert len(requests) == 4
    for kind, _, concurrent_to, _ in kinds:
        if kind == "response":
            assert requests[concurrent_to].get_header("User-Agent").startswith("llmlab/")
    assert all(h.headers["User-Agent"].startswith("llmlab/") for h in site.hits)
    assert report["pages_stored"] == 4 and report["urls_by_status"] == {"200": 4}
    assert (tmp_path / "report.md").read_text().startswith("# Crawl report")
    assert json.loads((tmp_path / "report.json").read_text())["pages_stored"] == 4


def test_xhtml_pages_carry_an_identified_payload_type_that_datatrove_reads(serve, tmp_path) -> None:
    warc_reader = pytest.importorskip("datatrove.pipeline.readers.warc")
    xhtml = b'<?xml version="1.0" encoding="utf-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><body><p>x</p></body></html>'
    site = serve({
        "/": html("/x.xhtml", "/served-as-html.html"),
        "/x.xhtml": Page(xhtml, content_type="application/xhtml+xml"),
        "/served-as-html.html": Page(xhtml),
    })
    run(tmp_path, site.url("/"))
    with open(tmp_path / "pages.warc.gz", "rb") as f:
        records = [r for r in ArchiveIterator(f) if r.rec_type == "response"]
        types = {r.rec_headers.get_header("WARC-Target-URI"): r.rec_headers.get_header("WARC-Identified-Payload-Type") for r in records}
    assert types[site.url("/x.xhtml")] == types[site.url("/served-as-html.html")] == "application/xhtml+xml"
    # datatrove selects pages by this header (without it, libmagic calls XHTML "text/xml" and drops it).
    with open(tmp_path / "pages.warc.gz", "rb") as f:
        read = [warc_reader.process_record(r) for r in ArchiveIterator(f)]
    assert sorted(d["url"] for d in read if d) == sorted(site.url(p) for p in ["/", "/x.xhtml", "/served-as-html.html"])


# -- politeness -------------------------------------------------------------------------------------

ROBOTS = b"""User-agent: otherbot
Disallow: /

User-agent: llmlab
Disallow: /private/
Allow: /private/public$
Disallow: /*.cgi$
"""


def test_robots_longest_match_wildcards_and_end_anchor(serve, tmp_path) -> None:
    paths = ["/ok.html", "/private/secret.html", "/private/public", "/private/public/deeper", "/run.cgi", "/run.cgi?x=1"]
    site = serve({"/robots.txt": Page(ROBOTS, content_type="text/plain"), "/": html(*paths), **{p: html() for p in paths}})
    report = run(tmp_path, site.url("/"))
    fetched = {h.path for h in site.hits}
    # "User-agent: otherbot / Disallow: /" is not ours; our group's longest match decides.
    assert {"/", "/ok.html", "/private/public", "/run.cgi?x=1"} <= fetched
    assert not fetched & {"/private/secret.html", "/private/public/deeper", "/run.cgi"}
    assert site.count("/robots.txt") == 1
    assert report["robots_blocked"] == 3
    assert set(report["robots_blocked_urls"]) == {site.url(p) for p in ["/private/secret.html", "/private/public/deeper", "/run.cgi"]}


def test_robots_groups_follow_a_custom_user_agent(serve, tmp_path) -> None:
    robots = b"User-agent: *\nDisallow: /\n\nUser-agent: mybot\nDisallow: /no/\n"
    site = serve({"/robots.txt": Page(robots, content_type="text/plain"), "/": html("/yes", "/no/x"), "/yes": html(), "/no/x": html()})
    run(tmp_path, site.url("/"), user_agent="mybot/2.0 (+https://example.org/bot)")
    assert {h.path for h in site.hits} == {"/robots.txt", "/", "/yes"}
    assert all(h.headers["User-Agent"] == "mybot/2.0 (+https://example.org/bot)" for h in site.hits)


def test_robots_txt_server_error_disallows_the_whole_site(serve, tmp_path) -> None:
    site = serve({"/robots.txt": Page(b"oops", status=503), "/": html()})
    report = run(tmp_path, site.url("/"), retries=0)
    assert [h.path for h in site.hits] == ["/robots.txt"]
    assert report["robots_blocked"] == 1 and "everything disallowed" in report["run"]["robots"][site.url("")]


def test_crawl_delay_from_robots_spaces_requests(serve, tmp_path) -> None:
    pages = [f"/p{i}.html" for i in range(4)]
    site = serve({"/robots.txt": Page(b"User-agent: *\nCrawl-delay: 0.3\n", content_type="text/plain"), "/": html(*pages), **{p: html() for p in pages}})
    run(tmp_path, site.url("/"), concurrency=4, host_concurrency=4)
    starts = [h.time for h in site.hits if h.path != "/robots.txt"]
    assert len(starts) == 5
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.28, gaps


def test_host_concurrency_limits_requests_in_flight(serve, tmp_path) -> None:
    pages = [f"/p{i}.html" for i in range(8)]
    site = serve({"/": html(*pages), **{p: Page(b"<p>slow</p>", delay=0.15) for p in pages}})
    run(tmp_path, site.url("/"), concurrency=6, host_concurrency=2)
    assert site.max_active == 2  # parallel, but never more than two at once on one host


# -- errors, redirects, limits ----------------------------------------------------------------------


def test_404_is_not_retried_and_server_errors_are_retried_with_backoff(serve, tmp_path) -> None:
    flaky_answers = [Page(status=500), Page(status=503), html(text="finally")]
    site = serve(
        {
            "/": html("/gone", "/flaky", "/down"),
            "/gone": Page(b"no", status=404),
            "/flaky": lambda n: flaky_answers[min(n, 2)],
            "/down": Page(status=500),
        }
    )
    report = run(tmp_path, site.url("/"), backoff=0.1, retries=2)
    assert site.count("/gone") == 1
    assert site.count("/flaky") == 3 and site.count("/down") == 3
    first, second, third = site.times("/flaky")
    assert 0.1 <= second - first < third - second  # exponential: 0.1 s, then 0.2 s (plus jitter)
    assert states(tmp_path)[site.url("/flaky")] == "stored"
    assert states(tmp_path)[site.url("/down")] == "failed"
    assert report["urls_by_status"] == {"200": 2, "404": 1, "500": 1}


def test_redirects_loops_and_limits(serve, tmp_path) -> None:
    chain = {f"/chain/{i}": redirect(f"/chain/{i + 1}") for i in range(20)}
    site = serve(
        {
            "/": html("/old", "/new/", "/loop-a", "/chain/0"),
            "/old": redirect("/new/", 301),
            "/new/": html(text="moved here"),
            "/loop-a": redirect("/loop-b"),
            "/loop-b": redirect("/loop-a"),
            **chain,
        }
    )
    run(tmp_path, site.url("/"), max_redirects=5)
    assert site.count("/new/") == 1  # reached through /old, then recognised when linked directly
    stored = {url: body for url, _, _, body, _ in responses(tmp_path / "pages.warc.gz")}
    assert b"moved here" in stored[site.url("/new/")]
    assert site.count("/loop-a") == 1 and site.count("/loop-b") == 1
    assert "redirect loop" in reasons(tmp_path)[site.url("/loop-a")]
    assert site.count("/chain/5") == 1 and site.count("/chain/6") == 0
    assert "more than 5 redirects" in reasons(tmp_path)[site.url("/chain/0")]


def test_non_html_is_skipped_and_oversized_pages_are_cut(serve, tmp_path) -> None:
    big = b"<html><body>" + b"x" * 300_000 + b"</body></html>"
    site = serve(
        {
            "/": html("/data.bin", "/big.html", "/image.png"),
            "/data.bin": Page(b"\0" * 1000, content_type="application/octet-stream"),
            "/image.png": Page(b"\x89PNG", content_type="image/png"),
            "/big.html": Page(big),
        }
    )
    run(tmp_path, site.url("/"), max_bytes=64 * 1024)
    records = {url: (body, warc) for url, _, _, body, warc in responses(tmp_path / "pages.warc.gz")}
    assert set(records) == {site.url("/"), site.url("/big.html")}
    body, warc_headers = records[site.url("/big.html")]
    assert body == big[: 64 * 1024] and warc_headers.get_header("WARC-Truncated") == "length"
    assert states(tmp_path)[site.url("/data.bin")] == "skipped"
    assert "image/png" in reasons(tmp_path)[site.url("/image.png")]


def test_links_to_other_hosts_are_not_followed_by_default(serve, tmp_path) -> None:
    other = serve({"/": html(text="elsewhere")})
    # "localhost" is another host name even though it is the same machine.
    site = serve({"/": html("/local.html", f"http://localhost:{other.port}/"), "/local.html": html()})
    run(tmp_path / "same-site", site.url("/"))
    assert site.count("/local.html") == 1 and other.hits == []
    run(tmp_path / "any-host", site.url("/"), any_host=True)
    assert other.count("/") == 1


def test_a_start_url_that_moves_to_another_host_takes_the_crawl_along(serve, tmp_path) -> None:
    site = serve({})
    site.routes.update({"/": redirect(site.url("/home")), "/home": html("/next.html"), "/next.html": html()})
    # "localhost" (may resolve to ::1 first, where nothing listens) moves to "127.0.0.1".
    report = run(tmp_path, f"http://localhost:{site.port}/")
    assert report["pages_stored"] == 2 and site.count("/next.html") == 1
    assert set(report["hosts"]) == {"localhost", "127.0.0.1"}


def test_allow_deny_patterns_depth_and_page_limits(serve, tmp_path) -> None:
    chain = {f"/docs/{i}.html": html(f"/docs/{i + 1}.html", "/blog/post.html") for i in range(10)}
    site = serve({"/": html("/docs/0.html", "/docs/skip-me.html"), "/blog/post.html": html(), **chain})
    run(tmp_path / "depth", site.url("/"), max_depth=3, allow=["/docs/"], deny=["skip-me"])
    assert {h.path for h in site.hits} == {"/robots.txt", "/", "/docs/0.html", "/docs/1.html", "/docs/2.html"}
    site.hits.clear()
    first = run(tmp_path / "pages", site.url("/"), max_pages=3)
    assert first["pages_stored"] == 3
    fetched_first = [h.path for h in site.hits if h.path != "/robots.txt"]
    site.hits.clear()
    second = run(tmp_path / "pages", site.url("/"), max_pages=6)  # resume with a higher limit
    assert second["pages_stored"] == 6 and second["run"]["pages_stored"] == 3
    assert not {h.path for h in site.hits} & set(fetched_first)


def test_meta_robots_noindex_and_nofollow(serve, tmp_path) -> None:
    site = serve(
        {
            "/": html("/noindex.html", "/nofollow.html", "/header.html"),
            "/noindex.html": html("/from-noindex.html", head='<meta name="robots" content="noindex">'),
            "/nofollow.html": html("/from-nofollow.html", head='<meta name="llmlab" content="nofollow">'),
            "/header.html": Page(b"<p>x</p>", headers={"X-Robots-Tag": "noindex"}),
            "/from-noindex.html": html(),
            "/from-nofollow.html": html(),
        }
    )
    run(tmp_path, site.url("/"))
    stored = {url for url, *_ in responses(tmp_path / "pages.warc.gz")}
    assert stored == {site.url(p) for p in ["/", "/nofollow.html", "/from-noindex.html"]}
    assert site.count("/from-nofollow.html") == 0


# -- unreachable and unsafe -------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hosts_are_recorded_not_fatal(tmp_path, capsys) -> None:
    port = _closed_port()

    async def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    report = run(tmp_path / "a", f"http://127.0.0.1:{port}/", retries=1)
    assert report["pages_stored"] == 0
    assert report["urls_by_state"] == {"failed": 1}  # a host that is down is a failure, not a robots rule
    assert report["robots_blocked"] == 0 and "ConnectError" in report["failures"][0]["reason"]
    assert "ConnectError" in report["run"]["robots"][f"http://127.0.0.1:{port}"]
    report = run(tmp_path / "b", "http://no-such-host.test/", resolver=resolver)
    assert report["failures"][0]["reason"].startswith("cannot resolve host no-such-host.test")
    code = cli_main(["crawl", f"http://127.0.0.1:{port}/", "--out", str(tmp_path / "c"), "--allow-loopback", "--retries", "0"])
    assert code == 1 and "no page could be stored" in capsys.readouterr().out


def test_a_host_that_stops_answering_is_given_up_quickly(serve, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(politeness, "HOST_REST_S", 0.05)
    pages = [f"/hang{i}.html" for i in range(10)]
    site = serve({"/": html(*pages), **{p: Page(b"late", delay=1.0) for p in pages}})
    report = run(tmp_path, site.url("/"), timeout=0.2, retries=0, concurrency=1)
    # Three timeouts rest the host; three probes after growing rests fail too; then it is given up.
    assert sum(site.count(p) for p in pages) == 6
    assert report["urls_by_state"] == {"stored": 1, "failed": 10}
    assert sum("is not answering" in f["reason"] for f in report["failures"]) == 4


def test_slow_pages_rest_a_host_but_do_not_give_it_up(serve, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(politeness, "HOST_REST_S", 0.05)
    slow = [f"/slow{i}.html" for i in range(3)]
    fast = [f"/fast{i}.html" for i in range(5)]
    site = serve({"/": html(*slow, *fast), **{p: Page(b"late", delay=1.0) for p in slow}, **{p: html() for p in fast}})
    report = run(tmp_path, site.url("/"), timeout=0.2, retries=0, concurrency=1)
    assert all(site.count(p) == 1 for p in fast)  # after its rest the host answered, so it was used again
    assert report["urls_by_state"] == {"stored": 6, "failed": 3}
    # A rerun retries the failures (the network errors, not a 404).
    site.routes.update({p: html() for p in slow})
    report = run(tmp_path, site.url("/"), timeout=0.2, retries=0, concurrency=1)
    assert report["urls_by_state"] == {"stored": 9} and all(site.count(p) == 2 for p in slow)
    assert all(site.count(p) == 1 for p in fast)


def test_an_unreachable_start_url_fails_and_a_rerun_reaches_it(serve, tmp_path) -> None:
    port = _closed_port()
    report = run(tmp_path, f"http://127.0.0.1:{port}/", retries=0)
    assert report["urls_by_state"] == {"failed": 1}
    assert "robots.txt disallows" not in report["failures"][0]["reason"]
    site = serve({"/": html("/a.html"), "/a.html": html()}, port=port)
    report = run(tmp_path, site.url("/"), retries=0)
    assert report["urls_by_state"] == {"stored": 2} and site.count("/") == 1


def test_https_to_a_plain_http_port_says_so(serve, tmp_path) -> None:
    site = serve({"/": html()})
    report = run(tmp_path, f"https://127.0.0.1:{site.port}/", retries=0)
    assert report["urls_by_state"] == {"failed": 1} and report["robots_blocked"] == 0
    assert "TLS handshake failed" in report["failures"][0]["reason"]
    assert "http:// port" in report["failures"][0]["reason"]


def test_loopback_is_refused_without_the_flag(serve, tmp_path) -> None:
    site = serve({"/": html()})
    with pytest.raises(ConfigError, match="loopback") as e:
        run(tmp_path, site.url("/"), allow_loopback=False)
    assert "--allow-loopback" in e.value.hint
    with pytest.raises(InputError, match="only http and https"):
        run(tmp_path, "file:///etc/passwd")
    assert site.hits == []


class ToLocalServer(httpx.AsyncBaseTransport):
    """Stands in for the internet: sends every connection to one local server and logs where it was aimed."""

    def __init__(self, port: int, targets: list[str]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.port = port
        self.targets = targets

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.targets.append(request.url.host)
        request.url = request.url.copy_with(host="127.0.0.1", port=self.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_redirects_to_private_addresses_are_refused(serve, tmp_path) -> None:
    """SSRF through redirects: a public site bounces the crawler at loopback, metadata and LAN addresses."""
    dns = {"www.example.test": ["93.184.215.14"], "intranet.example.test": ["10.0.0.7"]}

    async def resolver(host: str, port: int) -> list[str]:
        return dns[host]

    site = serve({})
    targets: list[str] = []
    site.routes.update(
        {
            "/": html("/to-loopback", "/to-metadata", "/to-intranet", "/to-mapped", "/to-file", "/fine.html"),
            "/to-loopback": redirect(f"http://127.0.0.1:{site.port}/secret"),
            "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
            "/to-intranet": redirect("http://intranet.example.test/admin"),
            "/to-mapped": redirect("http://[::ffff:10.0.0.1]/"),
            "/to-file": redirect("file:///etc/passwd"),
            "/fine.html": html(text="public page"),
            "/secret": html(text="never"),
        }
    )
    report = run(
        tmp_path,
        "http://www.example.test/",
        allow_loopback=False,
        any_host=True,  # so that the address guard, not the same-site rule, is what stops them
        resolver=resolver,
        transport_factory=lambda: ToLocalServer(site.port, targets),
    )
    assert "/secret" not in {h.path for h in site.hits}
    assert set(targets) == {"93.184.215.14"}  # every connection went to the address that was checked
    assert all(h.headers["Host"] == "www.example.test" for h in site.hits)
    got = states(tmp_path)
    assert got["http://www.example.test/fine.html"] == "stored"
    for path in ["/to-loopback", "/to-metadata", "/to-intranet", "/to-mapped", "/to-file"]:
        assert got[f"http://www.example.test{path}"] == "refused", path
    why = reasons(tmp_path)
    assert "loopback" in why["http://www.example.test/to-loopback"]
    assert "link-local" in why["http://www.example.test/to-metadata"]
    assert "10.0.0.7 is a private address" in why["http://www.example.test/to-intranet"]
    assert "scheme file:" in why["http://www.example.test/to-file"]
    assert len(report["failures"]) == 5


def test_allow_loopback_still_refuses_other_private_addresses(serve, tmp_path) -> None:
    site = serve({"/": html("/meta"), "/meta": redirect("http://169.254.169.254/")})
    run(tmp_path, site.url("/"))
    assert states(tmp_path)[site.url("/meta")] == "refused"


# -- resuming ---------------------------------------------------------------------------------------


def test_cli_resumes_by_default_and_fresh_starts_over(serve, tmp_path, capsys) -> None:
    site = serve({"/": html("/a.html"), "/a.html": html()})
    args = ["crawl", site.url("/"), "--out", str(tmp_path), "--allow-loopback", "--delay", "0"]
    assert cli_main(args) == 0
    assert "pages.warc.gz" in capsys.readouterr().out
    assert site.count("/") == 1 and site.count("/a.html") == 1
    assert cli_main(args) == 0  # resumed: everything is stored already
    assert site.count("/") == 1 and site.count("/a.html") == 1
    assert cli_main(args + ["--fresh"]) == 0
    assert site.count("/") == 2 and len(responses(tmp_path / "pages.warc.gz")) == 2


def test_torn_warc_tail_is_trimmed_on_resume(serve, tmp_path) -> None:
    pages = [f"/p{i}.html" for i in range(6)]
    site = serve({"/": html(*pages), **{p: html(text=p) for p in pages}})
    run(tmp_path, site.url("/"), max_pages=4)
    warc = tmp_path / "pages.warc.gz"
    # A kill can leave half a gzip member, or a whole record the frontier never marked stored.
    with open(warc, "ab") as f:
        f.write(gzip.compress(b"WARC/1.1\r\nWARC-Type: response\r\n")[:25])
    run(tmp_path, site.url("/"), max_pages=7)
    urls = [url for url, *_ in responses(warc)]
    assert sorted(urls) == sorted(site.url(p) for p in ["/", *pages])
    assert all(site.count(p) == 1 for p in ["/", *pages])


def test_killed_crawl_resumes_without_refetching(serve, tmp_path) -> None:
    pages = [f"/p{i:02d}.html" for i in range(30)]
    site = serve({"/": html(*pages), **{p: Page(html(text=p).body, delay=0.05) for p in pages}})
    command = [sys.executable, "-m", "llmlab", "crawl", site.url("/"), "--out", str(tmp_path), "--allow-loopback",
               "--delay", "0", "--concurrency", "3", "--host-concurrency", "3"]
    env = {**os.environ, "LLMLAB_PROGRESS": "0"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while len(site.hits) < 12 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    before = {h.path for h in site.hits}
    with sqlite3.connect(tmp_path / "frontier.sqlite") as db:
        stored_before = {url for (url,) in db.execute("SELECT url FROM urls WHERE state = 'stored'")}
    assert 0 < len(stored_before) < 31
    kill_point = len(site.hits)

    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, timeout=60)
    after = [h.path for h in site.hits[kill_point:] if h.path != "/robots.txt"]
    assert len(after) == len(set(after))  # nothing fetched twice after the kill
    assert not set(after) & {p for p in before if site.url(p) in stored_before}  # nor anything already stored
    refetched = set(after) & before
    assert len(refetched) <= 3  # at most the pages in flight at the kill
    urls = [url for url, *_ in responses(tmp_path / "pages.warc.gz")]
    assert sorted(urls) == sorted(site.url(p) for p in ["/", *pages])  # every page, each exactly once
