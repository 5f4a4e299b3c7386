"""The crawler's pure parts: URL normalisation, the address guard, links and robots directives."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest

from llmlab.data.crawl.links import extract_links, robots_directives
from llmlab.data.crawl.outcomes import FetchFailed, Refused
from llmlab.data.crawl.politeness import HostGate
from llmlab.data.crawl.robots import agent_token
from llmlab.data.crawl.safety import Guard, address_problem, check_scheme
from llmlab.data.crawl.urls import UrlError, normalize_url, origin_of, url_key


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("HTTP://Example.COM/a", "http://example.com/a"),  # case of scheme and host
        ("http://example.com:80/a", "http://example.com/a"),  # default ports
        ("https://example.com:443", "https://example.com/"),  # empty path
        ("http://example.com:8080/a", "http://example.com:8080/a"),
        ("http://example.com/a#section", "http://example.com/a"),  # fragment
        ("http://example.com/a/./b/../c", "http://example.com/a/c"),  # dot segments
        ("http://example.com/?b=2&a=1&a=0", "http://example.com/?a=1&a=0&b=2"),  # sorted, repeats keep order
        ("http://example.com/a?", "http://example.com/a"),  # empty query
        ("http://example.com/%7euser/%e2%82%ac", "http://example.com/~user/%E2%82%AC"),  # unreserved decoded, hex upper
        ("http://example.com/a b?q=x y", "http://example.com/a%20b?q=x%20y"),  # spaces escaped
        ("http://example.com/a%2fb", "http://example.com/a%2Fb"),  # an escaped slash stays escaped
        ("http://example.com/100%", "http://example.com/100%25"),  # a lone percent sign
        ("http://user:secret@example.com/", "http://example.com/"),  # credentials never sent
        ("http://bücher.example/", "http://xn--bcher-kva.example/"),  # IDNA
        ("http://Example.com./", "http://example.com/"),  # trailing dot of the host
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
    ],
)
def test_normalize_url_canonical_forms(raw: str, expected: str) -> None:
    assert normalize_url(raw) == expected
    assert normalize_url(expected) == expected  # idempotent


def test_normalize_url_resolves_relative_links_against_base() -> None:
    assert normalize_url("../x.html#top", base="http://h/a/b/c.html") == "http://h/a/x.html"
    assert normalize_url("//other.org/p", base="https://h/") == "https://other.org/p"
    assert normalize_url("mailto:me@example.com", base="http://h/") == "mailto:me@example.com"


@pytest.mark.parametrize("bad", ["http:///nohost", "http://example.com:99999/", "http://[::1/"])
def test_normalize_url_rejects_unfetchable_urls(bad: str) -> None:
    with pytest.raises(UrlError):
        normalize_url(bad)


def test_url_key_drops_trailing_slash_but_the_url_keeps_it() -> None:
    url = normalize_url("http://h/docs/")
    assert url == "http://h/docs/"
    assert url_key(url) == url_key(normalize_url("http://h/docs")) == "http://h/docs"
    assert url_key("http://h/") == "http://h/"
    assert origin_of("https://h:8443/a/b?c") == "https://h:8443"


@pytest.mark.parametrize(
    "address, allowed_plain, allowed_with_loopback",
    [
        ("93.184.215.14", True, True),
        ("2606:4700::1111", True, True),
        ("127.0.0.1", False, True),
        ("127.9.9.9", False, True),
        ("::1", False, True),
        ("::ffff:127.0.0.1", False, True),  # IPv4-mapped loopback is loopback
        ("10.0.0.1", False, False),
        ("172.16.5.4", False, False),
        ("192.168.1.1", False, False),
        ("169.254.169.254", False, False),  # cloud metadata service
        ("fe80::1", False, False),
        ("fc00::1", False, False),
        ("224.0.0.1", False, False),
        ("ff02::1", False, False),
        ("0.0.0.0", False, False),  # reaches this machine on Linux
        ("100.64.0.1", False, False),  # carrier-grade NAT
        ("240.0.0.1", False, False),
        ("::ffff:10.0.0.1", False, False),
        ("64:ff9b::a00:1", False, False),  # NAT64 of 10.0.0.1
        ("64:ff9b::7f00:1", False, False),  # NAT64 of 127.0.0.1: a tunnel, not this machine
        ("2002:a00:1::", False, False),  # 6to4 of 10.0.0.1
    ],
)
def test_address_guard_classes(address: str, allowed_plain: bool, allowed_with_loopback: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert (address_problem(ip) is None) is allowed_plain
    assert (address_problem(ip, allow_loopback=True) is None) is allowed_with_loopback


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/x", "gopher://h/", "data:text/html,hi", "javascript:alert(1)"])
def test_non_http_schemes_are_refused(url: str) -> None:
    with pytest.raises(Refused, match="only http and https"):
        check_scheme(url)


def test_guard_keeps_only_safe_addresses_from_dns() -> None:
    answers = {"mixed.test": ["10.0.0.1", "93.184.215.14"], "private.test": ["192.168.0.2", "::1"]}

    async def resolver(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("Name or service not known")
        return answers[host]

    guard = Guard(allow_loopback=False, resolver=resolver)

    async def scenario() -> None:
        assert await guard.resolve("mixed.test", 80) == ["93.184.215.14"]  # connect only to the public one
        with pytest.raises(Refused, match="192.168.0.2 is a private address; ::1 is a loopback address"):
            await guard.resolve("private.test", 80)
        with pytest.raises(Refused, match="allow-loopback"):
            await guard.resolve("127.0.0.1", 80)
        with pytest.raises(FetchFailed, match="cannot resolve host nowhere.test"):
            await guard.resolve("nowhere.test", 80)

    asyncio.run(scenario())


def test_extract_links_resolves_base_and_honours_nofollow() -> None:
    html = b"""<html><head><base href="/docs/"><meta name="robots" content="noindex"></head><body>
    <a href="a.html#part">a</a> <A HREF="b/">b</A> <area href="c">
    <a href="a.html">again</a> <a rel="nofollow" href="/private">x</a>
    <a href="mailto:me@example.com">mail</a> <a href="javascript:void(0)">js</a> <a href="http://[bad">bad</a>
    <a href="https://other.example/">other</a></body></html>"""
    page = extract_links(html, "http://h/index.html", "utf-8", "llmlab")
    assert page.links == ["http://h/docs/a.html", "http://h/docs/b/", "http://h/docs/c", "https://other.example/"]
    assert page.noindex and not page.nofollow


def test_extract_links_decodes_non_ascii_links() -> None:
    html = '<meta charset="latin-1"><a href="/café.html">x</a>'.encode("latin-1")
    assert extract_links(html, "http://h/", None, "llmlab").links == ["http://h/caf%C3%A9.html"]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("noindex, nofollow", {"noindex", "nofollow"}),
        ("NOINDEX", {"noindex"}),
        ("none", {"none", "noindex", "nofollow"}),
        ("llmlab: noindex", {"noindex"}),
        ("otherbot: noindex", set()),
        ("max-snippet:50, nofollow", {"max-snippet", "nofollow"}),
    ],
)
def test_robots_directives(value: str, expected: set[str]) -> None:
    assert robots_directives(value, "llmlab") == expected


def test_agent_token_is_the_product_name() -> None:
    assert agent_token("llmlab/0.1.0 (+https://example.org)") == "llmlab"
    assert agent_token("MyBot") == "MyBot"


def test_host_delay_holds_when_the_event_loop_was_busy() -> None:
    """Requests that waited through a blocked loop must not fire together when it frees up."""

    async def main() -> list[float]:
        gate, starts = HostGate(0.2), []

        async def request() -> None:
            await gate.turn()
            starts.append(time.monotonic())

        async def parse_a_big_page() -> None:
            await asyncio.sleep(0.05)
            time.sleep(0.7)  # CPU work on the event loop's thread

        await asyncio.gather(parse_a_big_page(), *(request() for _ in range(5)))
        return starts

    starts = asyncio.run(main())
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) == 5 and min(gaps) >= 0.199, gaps
