"""Which URLs belong to the crawl: the start hosts (same-site by default), allow and deny patterns.

A URL is in scope when its host is one of the crawl's hosts (or any host, with `any_host`), it matches
at least one `allow` pattern (when there are any) and no `deny` pattern. Patterns are Python regular
expressions searched in the normalised URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llmlab.data.crawl.urls import host_of
from llmlab.errors import ConfigError


def compile_patterns(patterns: list[str], option: str) -> list[re.Pattern]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise ConfigError(f"{option} {pattern!r} is not a valid regular expression: {e}") from None
    return compiled


@dataclass
class Scope:
    """The crawl's boundary; `hosts` grows when a start URL redirects to another host."""

    hosts: set[str]
    allow: list[re.Pattern] = field(default_factory=list)
    deny: list[re.Pattern] = field(default_factory=list)
    any_host: bool = False

    def why_not(self, url: str, extra_host: str | None = None) -> str | None:
        """None when `url` is in scope (counting `extra_host` as one of the crawl's), else the reason."""
        if not self.any_host and host_of(url) not in self.hosts and host_of(url) != extra_host:
            return f"host {host_of(url)} is outside the crawl (same-site)"
        if self.allow and not any(p.search(url) for p in self.allow):
            return "matches no --allow pattern"
        denied = next((p.pattern for p in self.deny if p.search(url)), None)
        return f"matches --deny {denied!r}" if denied else None
