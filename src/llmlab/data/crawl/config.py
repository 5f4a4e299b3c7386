"""What a crawl is asked to do (`CrawlConfig`), apart from the crawler so its report can name it too."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmlab import __version__
from llmlab.errors import ConfigError

# Site operators read this to know who is crawling; --user-agent should add the operator's own contact.
DEFAULT_USER_AGENT = f"llmlab/{__version__} (educational crawler; obeys robots.txt)"


@dataclass
class CrawlConfig:
    """Everything a crawl is asked to do; the defaults are polite for a public site."""

    start_urls: list[str]
    out_dir: Path
    max_pages: int | None = 1000
    max_depth: int | None = 10
    allow: list[str] = field(default_factory=list)
    deny: list[str] = field(default_factory=list)
    any_host: bool = False
    delay: float = 1.0  # seconds between request starts to one host (robots.txt Crawl-delay can raise it)
    concurrency: int = 4  # requests in flight across all hosts
    host_concurrency: int = 1  # pages in progress on one host
    allow_loopback: bool = False
    user_agent: str = DEFAULT_USER_AGENT
    max_bytes: int = 1 << 20  # body bytes kept per page (Common Crawl also cuts at 1 MiB)
    timeout: float = 20.0
    retries: int = 3
    backoff: float = 0.5  # first retry wait; doubles each time
    max_redirects: int = 10
    content_types: tuple[str, ...] = ("text/html", "application/xhtml+xml", "text/plain")
    fresh: bool = False
    progress: bool | None = None  # None: on unless LLMLAB_PROGRESS=0

    def validate(self) -> None:
        if not self.start_urls:
            raise ConfigError("no start URL given")
        for name in ("max_pages", "max_depth"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        for name in ("concurrency", "host_concurrency", "max_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("delay", "timeout", "retries", "backoff", "max_redirects"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.user_agent.strip():
            raise ConfigError("the user agent must not be empty", hint="name your crawler and a contact URL")
