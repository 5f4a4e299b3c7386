"""Generation off the event loop: a bounded queue in front of a few worker threads.

The web server's event loop must never run a model forward (it would freeze every other client), so
each generation runs `Engine.stream` in a worker thread and hands its events back to the loop through
an `asyncio.Queue`. At most `max_concurrent` generations run at once; up to `max_queued` more wait
their turn; beyond that `submit` raises `Busy` (HTTP 429). Setting a job's `cancel` event (a client
disconnected) stops its generation at the next token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator

DONE = object()  # sentinel put on a job's queue after its last event


class Busy(Exception):
    """Every worker is busy and the waiting queue is full."""


@dataclass
class Job:
    """One generation: its events arrive on `queue`; timings are time.perf_counter() values.

    Create it on the event loop (it binds to the running loop).
    """

    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens: int = 0

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def timings(self) -> dict[str, float | None]:
        """Queue wait, time to first token, total time (ms) and decode speed (tokens/s) of this job."""
        end = self.finished_at or time.perf_counter()
        ms = lambda a, b: None if a is None or b is None else round((b - a) * 1000, 2)  # noqa: E731
        decode_s = None if self.first_token_at is None else end - self.first_token_at
        # Decode speed counts the tokens after the first, which arrive at the rate the model decodes.
        tps = (self.tokens - 1) / decode_s if decode_s and self.tokens > 1 else None
        return {
            "queue_ms": ms(self.submitted_at, self.started_at),
            "ttft_ms": ms(self.submitted_at, self.first_token_at),
            "total_ms": ms(self.submitted_at, end),
            "tokens_per_second": None if tps is None else round(tps, 2),
        }


class GenerationWorker:
    """Runs generation functions in worker threads, streaming their events back to the event loop."""

    def __init__(self, max_concurrent: int, max_queued: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="llmlab-generate")
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished (running + queued)
        self._running = 0
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "rejected": 0, "tokens": 0}

    def reserve(self) -> None:
        """Claim room for one job (running or waiting), or raise Busy."""
        with self._lock:
            if self._pending >= self.max_concurrent + self.max_queued:
                self.counts["rejected"] += 1
                raise Busy(
                    f"the server is busy: {self._running} generations running and "
                    f"{self._pending - self._running} waiting (limit {self.max_concurrent} + {self.max_queued})"
                )
            self._pending += 1

    def submit(self, job: Job, stream: Callable[[], Iterator[Any]]) -> None:
        """Run `stream()` for a job whose room was `reserve`d; each item it yields is put on the job's queue."""
        self._pool.submit(self._run, job, stream)

    def _run(self, job: Job, stream: Callable[[], Iterator[Any]]) -> None:
        outcome = "cancelled"
        try:
            if not job.cancel.is_set():
                with self._lock:
                    self._running += 1
                job.started_at = time.perf_counter()
                try:
                    outcome = self._drain(job, stream)
                finally:
                    with self._lock:
                        self._running -= 1
        except Exception as e:  # reported to the waiting request, which turns it into an error response
            outcome = "failed"
            job.put(e)
        finally:
            job.finished_at = time.perf_counter()
            with self._lock:
                self._pending -= 1
                self.counts[outcome] += 1
                self.counts["tokens"] += job.tokens
            job.put(DONE)

    @staticmethod
    def _drain(job: Job, stream: Callable[[], Iterator[Any]]) -> str:
        events = stream()
        try:
            for event in events:
                if job.cancel.is_set():
                    return "cancelled"
                if getattr(event, "token_id", None) is not None:
                    job.tokens += 1
                    if job.first_token_at is None:
                        job.first_token_at = time.perf_counter()
                job.put(event)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # let the engine free its KV cache now rather than at garbage collection
        return "completed"

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"running": self._running, "queued": self._pending - self._running,
                    "max_concurrent": self.max_concurrent, "max_queued": self.max_queued, **self.counts}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def events_of(job: Job) -> AsyncIterator[Any]:
    """Yield a job's events until it has finished; re-raise its error."""
    while True:
        item = await job.queue.get()
        if item is DONE:
            return
        if isinstance(item, Exception):
            raise item
        yield item
