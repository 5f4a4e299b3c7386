"""robots.txt: fetched once per origin, parsed by protego, asked before every request.

protego implements RFC 9309 as search engines do (the longest matching rule wins, `*` and `$`
wildcards, `Crawl-delay`), which the standard library's `urllib.robotparser` does not. What a failed
fetch means follows the RFC: a 4xx answer (no robots.txt) allows everything; a 5xx answer disallows
everything, since the site may be overloaded. A server that cannot be reached at all is not a rule:
its URLs fail (the host is down, or the URL names the wrong port or scheme), the answer is not cached,
so the next URL of that origin asks again, and a later run retries them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from protego import Protego

from llmlab.data.crawl.fetch import Fetcher
from llmlab.data.crawl.outcomes import UrlOutcome
from llmlab.data.crawl.urls import host_of, origin_of

MAX_ROBOTS_BYTES = 500 * 1024  # RFC 9309: parse at least 500 KiB
MAX_ROBOTS_REDIRECTS = 5  # RFC 9309: follow at least five


def agent_token(user_agent: str) -> str:
    """The product token robots.txt groups are matched against: "llmlab" in "llmlab/0.1 (+url)"."""
    return user_agent.split("/")[0].split()[0] if user_agent.strip() else "*"


@dataclass
class Robots:
    """The rules of one origin, or a blanket answer when robots.txt could not be read."""

    rules: Protego | None
    allow_all: bool
    note: str
    unreachable: str | None = None  # why robots.txt could not be fetched at all (network, safety guard)

    def allowed(self, url: str, agent: str) -> bool:
        return self.rules.can_fetch(url, agent) if self.rules is not None else self.allow_all

    def crawl_delay(self, agent: str) -> float | None:
        return self.rules.crawl_delay(agent) if self.rules is not None else None


class RobotsCache:
    """robots.txt per origin, fetched on first need; concurrent askers share one fetch."""

    def __init__(self, fetcher: Fetcher, agent: str) -> None:
        self.fetcher = fetcher
        self.agent = agent
        self._tasks: dict[str, asyncio.Task] = {}
        self._notes: dict[str, str] = {}

    async def for_url(self, url: str) -> Robots:
        origin = origin_of(url)
        task = self._tasks.get(origin)
        if task is None:
            task = self._tasks[origin] = asyncio.ensure_future(self._load(origin))
        robots = await task
        self._notes[origin] = robots.note
        if robots.unreachable and self._tasks.get(origin) is task:
            del self._tasks[origin]  # not an answer: ask again for the next URL of this origin
        return robots

    def notes(self) -> dict[str, str]:
        """What was found at each origin, for the crawl report."""
        return dict(self._notes)

    async def _load(self, origin: str) -> Robots:
        url = origin + "/robots.txt"
        try:
            response = await self.fetcher.follow(
                url, max_redirects=MAX_ROBOTS_REDIRECTS, max_bytes=MAX_ROBOTS_BYTES
            )
        except UrlOutcome as e:
            return Robots(None, allow_all=False, note=f"unreachable ({e.reason})", unreachable=e.reason)
        except httpx.HTTPError as e:  # an answer httpx cannot decode
            return Robots(None, allow_all=False, note=f"unreadable ({type(e).__name__}): everything disallowed")
        status = response.status
        if 200 <= status < 300:
            text = response.body.decode("utf-8", errors="replace")
            robots = Robots(Protego.parse(text), allow_all=True, note=f"{len(response.body)} bytes of rules")
        elif 400 <= status < 500 and status != 429:
            robots = Robots(None, allow_all=True, note=f"HTTP {status}: no rules, everything allowed")
        else:
            robots = Robots(None, allow_all=False, note=f"HTTP {status}: everything disallowed")
        self.fetcher.gates.set_crawl_delay(host_of(origin), robots.crawl_delay(self.agent))
        return robots
