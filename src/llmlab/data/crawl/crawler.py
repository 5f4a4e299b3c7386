"""The crawl's main loop: take a URL from the frontier, fetch it politely, store it, queue its links.

Workers share one frontier (SQLite) and one WARC file. The scheduler hands each worker the shallowest
queued URL whose host has a free slot, so one slow host never stalls the others. Storing a page is two
steps in a fixed order — append its records to the WARC file (flushed), then mark it `stored` together
with its links in one SQLite transaction — and `reconcile_warc` repairs the only gap a kill can leave
between them, so a crawl stopped at any moment resumes where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from llmlab.data.crawl.config import CrawlConfig
from llmlab.data.crawl.fetch import Fetcher, Response, TransportFactory
from llmlab.data.crawl.frontier import Entry, Frontier
from llmlab.data.crawl.links import HTML_TYPES, PageLinks, extract_links, robots_directives
from llmlab.data.crawl.outcomes import FetchFailed, Refused, RobotsBlocked, Skipped, UrlOutcome
from llmlab.data.crawl.politeness import HostGates
from llmlab.data.crawl.report import crawl_report, write_report
from llmlab.data.crawl.robots import RobotsCache, agent_token
from llmlab.data.crawl.safety import Guard, Resolver, check_scheme, system_resolver
from llmlab.data.crawl.scope import Scope, compile_patterns
from llmlab.data.crawl.urls import DEFAULT_PORTS, UrlError, host_of, normalize_url, origin_of, url_key
from llmlab.data.crawl.warc import PageWarc
from llmlab.errors import ConfigError, InputError
from llmlab.progress import Progress

WARC_NAME = "pages.warc.gz"
FRONTIER_NAME = "frontier.sqlite"
LOCK_NAME = ".crawl.lock"


@dataclass
class CrawlResult:
    """Where a crawl wrote its files, and its report (the same dict as report.json)."""

    out_dir: Path
    warc_path: Path
    frontier_path: Path
    report_paths: tuple[Path, Path]
    report: dict


def reconcile_warc(frontier: Frontier, warc: PageWarc) -> dict[str, int]:
    """Make the WARC file hold exactly the records of the pages the frontier marks stored.

    A kill can leave a torn last gzip member, or a complete record written just before its page was
    marked: both lie past the last recorded offset and are cut off (the page is fetched again). A file
    shorter than the frontier expects (lost to a crash of the machine) sends the missing pages back to
    the queue. A new or emptied file gets its warcinfo record.
    """
    size = warc.size()
    requeued = frontier.unstore_beyond(size) if size < frontier.warc_committed_end() else 0
    end = frontier.warc_committed_end()
    trimmed = max(0, size - end)
    if trimmed:
        warc.truncate(end)
    if end == 0:
        warcinfo_id, warcinfo_end = warc.write_warcinfo({"format": "WARC File Format 1.1"})
        frontier.set_meta("warcinfo_id", warcinfo_id)
        frontier.set_meta("warcinfo_end", warcinfo_end)
    else:
        warc.warcinfo_id = frontier.get_meta("warcinfo_id")
    return {"trimmed_bytes": trimmed, "requeued": requeued}


@contextlib.contextmanager
def _crawl_lock(out_dir: Path):
    """One crawl per directory: a second one would interleave WARC records."""
    with open(out_dir / LOCK_NAME, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another crawl is writing to {out_dir}", hint="wait for it to finish, or choose another --out"
            ) from None
        yield


def _start_over(out_dir: Path) -> None:
    for name in (FRONTIER_NAME, f"{FRONTIER_NAME}-wal", f"{FRONTIER_NAME}-shm", WARC_NAME):
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()


class Crawler:
    """One crawl run over `config.out_dir`; `resolver` and `transport_factory` let tests stand in for DNS and the network."""

    def __init__(
        self,
        config: CrawlConfig,
        *,
        resolver: Resolver | None = None,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.agent = agent_token(config.user_agent)
        self.guard = Guard(config.allow_loopback, resolver or system_resolver)
        self.gates = HostGates(config.delay, config.host_concurrency)
        self.fetcher = Fetcher(
            user_agent=config.user_agent,
            guard=self.guard,
            gates=self.gates,
            timeout=config.timeout,
            retries=config.retries,
            backoff=config.backoff,
            transport_factory=transport_factory,
        )
        self.robots = RobotsCache(self.fetcher, self.agent)
        self.seeds = [self._seed(url) for url in config.start_urls]
        self.scope = Scope(
            {host_of(url) for url in self.seeds},
            compile_patterns(config.allow, "--allow"),
            compile_patterns(config.deny, "--deny"),
            config.any_host,
        )
        self.outcomes: Counter[str] = Counter()
        self._inflight = 0
        self._stored = 0

    @staticmethod
    def _seed(url: str) -> str:
        try:
            url = normalize_url(url)
        except UrlError as e:
            raise InputError(f"bad start URL: {e}") from None
        try:
            check_scheme(url)
        except Refused as e:
            raise InputError(f"refusing start URL {url}: {e.reason}") from None
        return url

    async def _check_seeds(self) -> None:
        """Refuse unsafe start URLs up front, with the fix, instead of recording them as failures."""
        for url in self.seeds:
            parts = urlsplit(url)
            try:
                await self.guard.resolve(parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme])
            except Refused as e:
                hint = "add --allow-loopback to crawl a site on this machine" if "loopback" in e.reason else None
                raise ConfigError(f"refusing start URL {url}: {e.reason}", hint=hint) from None
            except FetchFailed:
                pass  # recorded as the start URL's failure in the report

    async def run(self) -> CrawlResult:
        config = self.config
        out_dir = Path(config.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        await self._check_seeds()
        with _crawl_lock(out_dir):
            if config.fresh:
                _start_over(out_dir)
            self.frontier = Frontier(out_dir / FRONTIER_NAME)
            self.warc = PageWarc(out_dir / WARC_NAME)
            started = time.monotonic()
            try:
                repaired = reconcile_warc(self.frontier, self.warc)
                self.scope.hosts |= set(self.frontier.get_meta("hosts", []))
                self.frontier.set_meta("hosts", sorted(self.scope.hosts))
                self.frontier.add(Entry(url_key(u), u, host_of(u), 0) for u in self.seeds)
                self._stored = self.frontier.stored_count()
                with Progress(
                    total=config.max_pages,
                    desc="crawl",
                    unit="page",
                    initial=self._stored,
                    metrics_path=out_dir / "metrics.jsonl",
                    disable=None if config.progress is None else not config.progress,
                ) as self.progress:
                    await self._run_workers()
                run_info = {
                    "seconds": round(time.monotonic() - started, 3),
                    "pages_stored": self.outcomes["stored"],
                    "outcomes": dict(self.outcomes),
                    "warc_repair": repaired,
                    "robots": self.robots.notes(),
                }
                report = crawl_report(self.frontier, config, run_info, out_dir / WARC_NAME)
            finally:
                await self.fetcher.aclose()
                self.warc.close()
                self.frontier.close()
            paths = write_report(out_dir, report)
        return CrawlResult(out_dir, out_dir / WARC_NAME, out_dir / FRONTIER_NAME, paths, report)

    # -- scheduling ---------------------------------------------------------------------------------
    async def _run_workers(self) -> None:
        self._changed = asyncio.Condition()
        workers = [asyncio.create_task(self._worker()) for _ in range(self.config.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()

    def _next_entry(self) -> Entry | None:
        limit = self.config.max_pages
        if limit is not None and self._stored + self._inflight >= limit:
            return None
        return self.frontier.claim(self.gates.busy_hosts(), self.config.max_depth)

    async def _worker(self) -> None:
        while True:
            async with self._changed:
                entry = self._next_entry()
                while entry is None:
                    if self._inflight == 0:
                        self._changed.notify_all()  # nothing left anywhere: let the others finish too
                        return
                    await self._changed.wait()
                    entry = self._next_entry()
                self._inflight += 1
                self.gates[entry.host].active += 1
            try:
                await self._process(entry)
            finally:
                async with self._changed:
                    self._inflight -= 1
                    self.gates[entry.host].active -= 1
                    self._changed.notify_all()

    # -- one URL ------------------------------------------------------------------------------------
    async def _process(self, entry: Entry) -> None:
        try:
            response = await self.fetcher.follow(
                entry.url,
                max_redirects=self.config.max_redirects,
                max_bytes=self.config.max_bytes,
                accept=lambda mime: mime in self.config.content_types,
                check=lambda url, hop: self._check(entry, url, hop),
            )
            state = self._keep(entry, response)
        except UrlOutcome as o:
            self.frontier.finish(entry.key, o.state, o.reason, status=o.status)
            state = o.state
        except httpx.HTTPError as e:  # malformed answers httpx cannot decode
            self.frontier.finish(entry.key, "failed", f"{type(e).__name__}: {e}")
            state = "failed"
        self.outcomes[state] += 1
        self.progress.update(
            1 if state == "stored" else 0,
            stored=self._stored,
            failed=self.outcomes["failed"] + self.outcomes["refused"],
            blocked=self.outcomes["blocked"],
        )

    async def _check(self, entry: Entry, url: str, hop: int) -> None:
        """Vet a URL before any request: scheme and address (SSRF), scope, robots.txt."""
        check_scheme(url)
        parts = urlsplit(url)
        await self.guard.resolve(parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme])
        why = None if entry.depth == 0 and hop == 0 else self.scope.why_not(url)
        if why and entry.depth == 0 and self.scope.why_not(url, extra_host=host_of(url)) is None:
            # A start URL redirected to another host (example.com -> www.example.com): the site moved there.
            self.scope.hosts.add(host_of(url))
            self.frontier.set_meta("hosts", sorted(self.scope.hosts))
            why = None
        if why:
            raise Skipped(f"redirect to {url}: {why}" if hop else why)
        robots = await self.robots.for_url(url)
        if robots.unreachable:
            raise FetchFailed(f"cannot fetch robots.txt of {origin_of(url)}: {robots.unreachable}")
        if not robots.allowed(url, self.agent):
            raise RobotsBlocked(f"robots.txt disallows {url}" + (f" (redirect from {entry.url})" if hop else ""))

    def _keep(self, entry: Entry, response: Response) -> str:
        """Store a final response, or say why not; returns the URL's new state."""
        if not 200 <= response.status < 300:
            raise FetchFailed(f"HTTP {response.status} {response.reason}".strip(), status=response.status)
        final_key = url_key(response.url)
        if final_key != entry.key and self.frontier.state_of(final_key) in ("stored", "inflight"):
            self.frontier.finish(entry.key, "duplicate", f"redirects to {response.url}", status=response.status)
            return "duplicate"
        page = PageLinks()
        if response.mime_type in HTML_TYPES:
            page = extract_links(response.body, response.url, response.charset, self.agent)
        header_words = robots_directives(response.header("x-robots-tag"), self.agent)
        found = [] if page.nofollow or "nofollow" in header_words else self._in_scope(page.links, entry.depth + 1)
        if page.noindex or "noindex" in header_words:
            self.frontier.add(found)
            raise Skipped("the page asks not to be indexed (robots noindex)", status=response.status)
        start, end = self.warc.write_page(response)
        self.frontier.store(
            entry,
            found,
            final_key,
            status=response.status,
            final_url=response.url,
            content_type=response.mime_type,
            bytes=len(response.body),
            truncated=int(response.truncated),
            fetched_at=response.fetched_at.isoformat(),
            warc_offset=start,
            warc_end=end,
        )
        self._stored += 1
        return "stored"

    def _in_scope(self, links: list[str], depth: int) -> list[Entry]:
        if self.config.max_depth is not None and depth > self.config.max_depth:
            return []
        return [Entry(url_key(url), url, host_of(url), depth) for url in links if self.scope.why_not(url) is None]


def crawl(
    config: CrawlConfig,
    *,
    resolver: Resolver | None = None,
    transport_factory: TransportFactory | None = None,
) -> CrawlResult:
    """Run (or resume) a crawl to completion and write its report; see `CrawlConfig` for the options."""
    return asyncio.run(Crawler(config, resolver=resolver, transport_factory=transport_factory).run())
