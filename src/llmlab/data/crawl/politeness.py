"""Per-host politeness: how many requests a host gets at once and how far apart they start.

A `HostGate` spaces request starts to one host by at least its delay (the crawl's `--delay`, raised to
the host's robots.txt `Crawl-delay`), and counts the pages in progress on the host so the scheduler
can give a busy host's turn to another host instead of waiting. It also notices a host that stopped
answering and rests it instead of timing out once per queued URL.

The spacing is measured from the moment the previous request was released, checked again after every
wait: a start time is never reserved ahead, so requests that waited through a busy event loop (a big
page being parsed) cannot all fire together when it frees up.
"""

from __future__ import annotations

import asyncio
import math
import time

# A host whose last requests all failed at the network level is taken for down and rested: its
# requests wait HOST_REST_S, then one goes ahead as a probe. An answer (any HTTP status) makes the host
# healthy again; a failed probe doubles the rest. After HOST_PROBES failed probes the host is given up
# for this run: its remaining URLs fail at once, and the next run tries them again.
HOST_DOWN_AFTER = 3
HOST_REST_S = 5.0
HOST_PROBES = 3


class HostGate:
    """Spacing, in-progress count and network health of one host."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.active = 0
        self.failures_in_a_row = 0
        self.failed_probes = 0
        self.last_failure = ""
        self.resting_until = 0.0
        self._last_start = -math.inf

    @property
    def given_up(self) -> bool:
        return self.failed_probes >= HOST_PROBES

    def record(self, failure: str | None) -> None:
        """Note how a request ended: None for an HTTP answer (any status), else the network error."""
        if failure is None:
            self.failures_in_a_row = self.failed_probes = 0
            self.resting_until = 0.0
            return
        self.failures_in_a_row += 1
        self.last_failure = failure
        if self.failures_in_a_row > HOST_DOWN_AFTER:
            self.failed_probes += 1
        if self.failures_in_a_row >= HOST_DOWN_AFTER:
            self.resting_until = time.monotonic() + HOST_REST_S * 2**self.failed_probes

    async def turn(self) -> None:
        """Wait until this host may receive the next request (its delay since the last start, its rest)."""
        while True:
            ready = max(self._last_start + self.delay, self.resting_until)
            now = time.monotonic()
            if now >= ready:
                self._last_start = now
                return
            await asyncio.sleep(ready - now)


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
