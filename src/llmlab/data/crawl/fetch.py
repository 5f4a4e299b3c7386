"""HTTP fetching: one GET with safety, politeness, retries, size and type limits; redirects by hand.

Each request connects to an address the `Guard` approved (the URL's host is replaced by that address;
the Host header and TLS server name keep the real name), waits for its host's turn, and streams the
body only as far as `max_bytes`. Server errors (5xx, 429), timeouts and dropped connections are
retried with exponential backoff; 4xx answers are final. Redirects are not followed by httpx but by
`Fetcher.follow`, so every hop passes the same checks as a link would.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from llmlab.data.crawl.outcomes import FetchFailed, Skipped
from llmlab.data.crawl.politeness import HostGates
from llmlab.data.crawl.safety import Guard, check_scheme
from llmlab.data.crawl.urls import DEFAULT_PORTS, UrlError, normalize_url

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
MAX_RETRY_WAIT = 60.0

# Builds the transport of each host's client; tests pass one that routes to a local server.
TransportFactory = Callable[[], httpx.AsyncBaseTransport]


@dataclass
class Response:
    """A final HTTP answer as the crawl keeps it: decoded body, raw headers, and where it came from."""

    url: str
    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]]
    request_headers: list[tuple[str, str]]
    ip: str
    fetched_at: datetime
    body: bytes = b""
    truncated: bool = False

    def header(self, name: str) -> str | None:
        """A header's value; repeated headers joined with ", " as HTTP list semantics allow."""
        name = name.lower()
        values = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(values) if values else None

    @property
    def mime_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        for param in (self.header("content-type") or "").split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset":
                return value.strip().strip("\"'") or None
        return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _describe(error: Exception, scheme: str) -> str:
    """A network error as one line; a TLS handshake refused by a plain-HTTP port says so."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if scheme == "https" and isinstance(error, httpx.ConnectError) and "SSL" in str(error):
        return f"TLS handshake failed ({error}): is this an http:// port?"
    return text


def _decode_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


class Fetcher:
    """GETs pages politely and safely; one httpx client per host so connections never mix hosts."""

    def __init__(
        self,
        *,
        user_agent: str,
        guard: Guard,
        gates: HostGates,
        timeout: float = 20.0,
        retries: int = 3,
        backoff: float = 0.5,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.user_agent = user_agent
        self.guard = guard
        self.gates = gates
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.transport_factory = transport_factory
        self._clients: dict[str, httpx.AsyncClient] = {}

    def _client(self, host: str) -> httpx.AsyncClient:
        client = self._clients.get(host)
        if client is None:
            transport = self.transport_factory() if self.transport_factory else None
            # trust_env=False: an environment proxy would connect to hosts the guard never saw.
            client = httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, trust_env=False, transport=transport
            )
            self._clients[host] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    async def get(self, url: str, *, max_bytes: int, accept: Callable[[str], bool] | None = None) -> Response:
        """GET `url` once, retrying transient failures; raises FetchFailed, Refused or Skipped."""
        check_scheme(url)
        parts = urlsplit(url)
        host = parts.hostname or ""
        addresses = await self.guard.resolve(host, parts.port or DEFAULT_PORTS[parts.scheme])
        gate = self.gates[host]
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2**attempt * (1 + 0.25 * random.random())
            if not gate.given_up:
                await gate.turn()  # waits out the host's delay, and its rest when it stopped answering
            if gate.given_up:  # (checked again: a probe may have failed during the wait)
                raise FetchFailed(
                    f"host {host} is not answering: {gate.failures_in_a_row} requests in a row failed"
                    f" (last: {gate.last_failure}); the next run tries again"
                )
            try:
                response = await self._request(url, addresses, max_bytes, accept)
            except _RETRY_ERRORS as e:
                error = _describe(e, parts.scheme)
                if attempt == self.retries:
                    gate.record(error)
                    raise FetchFailed(f"{error} (after {attempt + 1} attempts)") from None
            else:
                gate.record(None)
                if response.status not in RETRY_STATUSES or attempt == self.retries:
                    return response
                wait = max(wait, min(_retry_after(response.header("retry-after")) or 0.0, MAX_RETRY_WAIT))
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _request(
        self, url: str, addresses: list[str], max_bytes: int, accept: Callable[[str], bool] | None
    ) -> Response:
        parts = urlsplit(url)
        host = parts.hostname or ""
        client = self._client(host)
        headers = {"Host": parts.netloc, "User-Agent": self.user_agent, "Accept": "text/html,*/*;q=0.8"}
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        for i, address in enumerate(addresses):
            literal = f"[{address}]" if ":" in address else address
            netloc = literal if parts.port is None else f"{literal}:{parts.port}"
            pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
            request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
            try:
                reply = await client.send(request, stream=True)
            except httpx.ConnectError:
                if i == len(addresses) - 1:
                    raise
                continue  # the host's next address
            try:
                return await self._read(url, address, reply, max_bytes, accept)
            finally:
                await reply.aclose()
        raise AssertionError("unreachable")

    async def _read(
        self, url: str, address: str, reply: httpx.Response, max_bytes: int, accept: Callable[[str], bool] | None
    ) -> Response:
        response = Response(
            url=url,
            status=reply.status_code,
            reason=reply.reason_phrase,
            http_version=reply.http_version,
            headers=_decode_headers(reply.headers.raw),
            request_headers=_decode_headers(reply.request.headers.raw),
            ip=address,
            fetched_at=datetime.now(timezone.utc),
        )
        if not 200 <= reply.status_code < 300:
            return response  # only successful bodies are kept
        if accept is not None and not accept(response.mime_type):
            raise Skipped(f"content type {response.mime_type or '(none)'} not crawled", status=reply.status_code)
        chunks, size = [], 0
        async for chunk in reply.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # stop reading: the rest is never downloaded
                response.truncated = True
                break
        response.body = b"".join(chunks)[:max_bytes]
        return response

    async def follow(
        self,
        url: str,
        *,
        max_redirects: int,
        max_bytes: int,
        accept: Callable[[str], bool] | None = None,
        check: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> Response:
        """GET `url` and follow redirects by hand; `check(url, hop)` vets every URL before it is requested."""
        seen = [url]
        while True:
            if check is not None:
                await check(url, len(seen) - 1)
            response = await self.get(url, max_bytes=max_bytes, accept=accept)
            location = response.header("location")
            if response.status not in REDIRECT_STATUSES or not location:
                return response
            try:
                target = normalize_url(location, base=url)
            except UrlError as e:
                raise FetchFailed(f"bad redirect Location {location!r}: {e}", status=response.status) from None
            if target in seen:
                chain = " -> ".join(seen + [target])
                raise FetchFailed(f"redirect loop: {chain}", status=response.status)
            if len(seen) > max_redirects:
                raise FetchFailed(f"more than {max_redirects} redirects from {seen[0]}", status=response.status)
            seen.append(target)
            url = target
