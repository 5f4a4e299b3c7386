"""Per-host politeness: how many requests a host gets at once and how far apart they start.

A `HostGate` spaces request starts to one host by at least its delay (the crawl's `--delay`, raised to
the host's robots.txt `Crawl-delay`), and counts the pages in progress on the host so the scheduler
can give a busy host's turn to another host instead of waiting. It also notices a host that stopped
answering, so the crawl gives up on it instead of timing out once per queued URL.
"""

from __future__ import annotations

import asyncio
import time


# A host whose last requests all failed at the network level is taken for down: its remaining URLs
# fail at once instead of each waiting through its own timeouts and retries.
HOST_DOWN_AFTER = 3


class HostGate:
    """Spacing, in-progress count and network health of one host."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.active = 0
        self.failures_in_a_row = 0
        self.last_failure = ""
        self._next_start = 0.0

    @property
    def down(self) -> bool:
        return self.failures_in_a_row >= HOST_DOWN_AFTER

    def record(self, failure: str | None) -> None:
        """Note how a request ended: None for an HTTP answer (any status), else the network error."""
        if failure is None:
            self.failures_in_a_row = 0
        else:
            self.failures_in_a_row += 1
            self.last_failure = failure

    async def turn(self) -> None:
        """Wait until this host may receive the next request; reserve that start time."""
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + self.delay
        if start > now:
            await asyncio.sleep(start - now)


class HostGates:
    """The gates of every host the crawl has met, created on first use with the crawl's delay."""

    def __init__(self, delay: float, per_host: int) -> None:
        self.delay = delay
        self.per_host = per_host
        self._gates: dict[str, HostGate] = {}

    def __getitem__(self, host: str) -> HostGate:
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = HostGate(self.delay)
        return gate

    def busy_hosts(self) -> set[str]:
        """Hosts with as many pages in progress as they may have."""
        return {host for host, gate in self._gates.items() if gate.active >= self.per_host}

    def set_crawl_delay(self, host: str, crawl_delay: float | None) -> None:
        """Honour a robots.txt Crawl-delay: never go faster than it, nor than the crawl's own delay."""
        if crawl_delay is not None:
            self[host].delay = max(self.delay, float(crawl_delay))
