"""URL normalisation: one spelling per page, so the visited set recognises a URL it has seen.

`normalize_url` rewrites a URL into a canonical form that fetches the same resource (RFC 3986 section
6 plus the usual crawler rules): lower-case scheme and host, IDNA host, no default port, no fragment,
no credentials, dot segments removed, percent-encoding with upper-case hex and unreserved characters
decoded, query parameters sorted. `url_key` goes one step further for the visited set only: it also
drops a trailing slash, because servers answer `/docs` with a redirect to `/docs/` and both name one
page; the crawler still fetches the URL as written, since relative links resolve differently.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Characters left as they are in a path or query (RFC 3986 pchar / query), besides existing escapes.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


class UrlError(ValueError):
    """A string that cannot be a fetchable URL (no host, bad port, unparseable)."""


def _normalize_escapes(text: str, safe: str) -> str:
    text = _LONE_PERCENT.sub("%25", text)
    text = quote(text, safe=safe, encoding="utf-8", errors="strict")

    def fix(match: re.Match) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(fix, text)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, on an absolute path."""
    output: list[str] = []
    segments = path.split("/")
    for i, segment in enumerate(segments[1:], start=1):
        last = i == len(segments) - 1
        if segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        elif segment == ".":
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


def _normalize_host(host: str) -> str:
    host = host.lower().rstrip(".")
    if not host:
        raise UrlError("URL has no host")
    if ":" in host:  # an IPv6 literal
        return f"[{host}]"
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise UrlError(f"invalid host name {host!r}: {e}") from None


def _normalize_query(query: str) -> str:
    pairs = [_normalize_escapes(p, _QUERY_SAFE.replace("&", "")) for p in query.split("&") if p]
    # Sort by name, keeping the original order of repeated names (a=2&a=1 is not a=1&a=2).
    return "&".join(sorted(pairs, key=lambda p: p.split("=", 1)[0]))


def normalize_url(url: str, base: str | None = None) -> str:
    """The canonical spelling of `url` (resolved against `base` when given); raises `UrlError`."""
    url = url.strip()
    try:
        if base is not None:
            url = urljoin(base, url)
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UrlError(f"cannot parse URL {url!r}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        # Not crawlable; keep it recognisable so safety checks can name the scheme.
        return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))
    host = _normalize_host(parts.hostname or "")
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _normalize_escapes(_remove_dot_segments(parts.path or "/"), _PATH_SAFE)
    return urlunsplit((scheme, netloc, path, _normalize_query(parts.query), ""))


def url_key(url: str) -> str:
    """The visited-set key of a normalised URL: the URL without a trailing slash on its path."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") if parts.path != "/" else parts.path
    return urlunsplit((parts.scheme, parts.netloc, path or "/", parts.query, ""))


def host_of(url: str) -> str:
    """The lower-case host name of a URL (no port)."""
    return (urlsplit(url).hostname or "").lower()


def origin_of(url: str) -> str:
    """scheme://host[:port] of a normalised URL: the unit robots.txt rules apply to (RFC 9309)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
