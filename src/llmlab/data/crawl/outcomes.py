"""Why a URL ended without a stored page.

A crawl meets many URLs it must not or cannot store; each such end is an exception carrying the
frontier state it leads to and a reason a person can read in the crawl report. None of them stops the
crawl: the main loop records them and moves on.
"""

from __future__ import annotations


class UrlOutcome(Exception):
    """A URL that ends in frontier state `state` (not `stored`) for `reason`."""

    state = "failed"

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Refused(UrlOutcome):
    """Unsafe to fetch: a non-http(s) scheme, or a host that resolves to a non-public address."""

    state = "refused"


class RobotsBlocked(UrlOutcome):
    """robots.txt disallows the URL for our user agent (or could not be fetched, which disallows all)."""

    state = "blocked"


class Skipped(UrlOutcome):
    """Fetched or reachable, but not a page we keep: wrong content type, noindex, out of scope."""

    state = "skipped"


class FetchFailed(UrlOutcome):
    """The network or the server failed: unresolvable host, refused connection, 4xx/5xx, redirect loop."""

    state = "failed"
