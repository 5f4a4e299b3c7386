"""Generation off the event loop: one continuously batched model per thread, a bounded queue in front.

The web server's event loop must never run a model forward (it would freeze every other client). Each
model gets a `BatchLoop`: a thread that owns the model's `llmlab.infer.batching.Batcher`, admits new
requests between decoding steps (at most `max_batch` rows decode together; at most `step_tokens` prompt
tokens are prefilled per step, so a long prompt does not stall the running streams) and hands each
event back to its request through an `asyncio.Queue`. Requests beyond the rows wait in the batcher;
beyond `max_batch + max_queued` requests `reserve` raises `Busy` (HTTP 429). Setting a job's `cancel`
event (a client disconnected) frees its rows at the next step. Single computations that are not
generation (scoring a prompt, a look inside the model) run on a small thread pool.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator

from llmlab.infer import SamplingParams
from llmlab.infer.batching import Batcher, BatchRequest
from llmlab.infer.compiled import CompiledDecodeStep
from llmlab.model.frozen import compute_dtype

DONE = object()  # sentinel put on a job's queue after its last event


class Busy(Exception):
    """Every row of the batch is taken and the waiting queue is full."""


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
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop has closed (the server is stopping): nobody is listening
            self.cancel.set()

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
    """Runs generations in one continuous batch per model and computations on a small pool."""

    def __init__(self, max_batch: int, max_queued: int, step_tokens: int = 256, compute_threads: int = 2) -> None:
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.step_tokens = step_tokens
        self._pool = ThreadPoolExecutor(max_workers=compute_threads, thread_name_prefix="llmlab-compute")
        self._loops: dict[int, BatchLoop] = {}  # by id(model): models stay loaded once loaded
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished (running + queued)
        self.counts = {"completed": 0, "cancelled": 0, "failed": 0, "rejected": 0, "tokens": 0}

    def reserve(self) -> None:
        """Claim room for one job (running or waiting), or raise Busy."""
        with self._lock:
            if self._pending >= self.max_batch + self.max_queued:
                self.counts["rejected"] += 1
                running = self._running()
                raise Busy(
                    f"the server is busy: {running} generations running and "
                    f"{self._pending - running} waiting (limit {self.max_batch} + {self.max_queued})"
                )
            self._pending += 1

    def generate(self, job: Job, model: Any, tokenizer: Any, prompt: list[int], params: SamplingParams) -> None:
        """Queue the generation of a `reserve`d job into its model's batch; events arrive on job.queue."""
        with self._lock:
            loop = self._loops.get(id(model))
            if loop is None:
                loop = self._loops[id(model)] = BatchLoop(self, model, tokenizer)
        loop.add(job, prompt, params)

    def submit(self, job: Job, stream: Callable[[], Iterator[Any]]) -> None:
        """Run `stream()` for a `reserve`d job on the pool; each item it yields is put on the job's queue."""
        self._pool.submit(self._compute, job, stream)

    def _compute(self, job: Job, stream: Callable[[], Iterator[Any]]) -> None:
        outcome = "cancelled"
        try:
            if not job.cancel.is_set():
                job.started_at = time.perf_counter()
                for item in stream():
                    job.put(item)
                outcome = "completed"
        except Exception as e:  # reported to the waiting request, which turns it into an error response
            outcome = "failed"
            job.put(e)
        finally:
            self.finish(job, outcome)

    def finish(self, job: Job, outcome: str) -> None:
        """Count a job's end and tell its waiting request."""
        job.finished_at = time.perf_counter()
        with self._lock:
            self._pending -= 1
            self.counts[outcome] += 1
            self.counts["tokens"] += job.tokens
        job.put(DONE)

    def _running(self) -> int:
        """Jobs not waiting for rows: decoding, prefilling, computing, or just handed to a batch."""
        return self._pending - sum(loop.queued for loop in self._loops.values())

    def stats(self) -> dict[str, int]:
        with self._lock:
            running = self._running()
            return {"running": running, "queued": self._pending - running, "max_batch": self.max_batch,
                    "max_queued": self.max_queued, "step_tokens": self.step_tokens, **self.counts}

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for loop in list(self._loops.values()):
            loop.stop()


class BatchLoop:
    """One model's continuous batch, stepped by its own thread whenever it has work."""

    def __init__(self, worker: GenerationWorker, model: Any, tokenizer: Any) -> None:
        self.worker, self.model, self.tokenizer = worker, model, tokenizer
        model.eval()  # a served model only generates: no dropout, and no per-step mode switching
        first = next(model.parameters())
        # On CUDA the batch decodes through a compiled step, kept across batchers so it compiles once.
        self.decode_step = (CompiledDecodeStep(model, worker.max_batch, first.device, compute_dtype(model))
                            if first.device.type == "cuda" else None)
        self.batcher = self._new_batcher()
        self.queued = 0  # requests waiting for rows in the batcher, read by stats()
        self._inbox: list[tuple[Job, list[int], SamplingParams]] = []
        self._live: dict[BatchRequest, Job] = {}
        self._wake = threading.Condition()
        self._stopping = False
        threading.Thread(target=self._run, name="llmlab-batch", daemon=True).start()

    def _new_batcher(self) -> Batcher:
        return Batcher(self.model, self.tokenizer, self.worker.max_batch, self.worker.step_tokens, self.decode_step)

    def add(self, job: Job, prompt: list[int], params: SamplingParams) -> None:
        with self._wake:
            self._inbox.append((job, prompt, params))
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._inbox or self._live or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    return
                arrivals, self._inbox = self._inbox, []
            for job, prompt, params in arrivals:
                self._submit(job, prompt, params)
            self._step()

    def _submit(self, job: Job, prompt: list[int], params: SamplingParams) -> None:
        if job.cancel.is_set():
            self.worker.finish(job, "cancelled")
            return
        try:
            self._live[self.batcher.submit(prompt, params)] = job
        except Exception as e:
            job.put(e)
            self.worker.finish(job, "failed")

    def _step(self) -> None:
        for request, job in self._live.items():
            if job.cancel.is_set():
                self.batcher.cancel(request)  # its rows are freed at the start of this step
        try:
            events = self.batcher.step()
        except Exception as e:  # the batch's state is unknown now: fail its requests, start afresh
            for job in self._live.values():
                job.put(e)
                self.worker.finish(job, "failed")
            self._live.clear()
            self.batcher = self._new_batcher()
            self.queued = 0
            return
        now = time.perf_counter()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any]]] = {}
        for request, event in events:
            job = self._live[request]
            job.tokens += 1
            job.first_token_at = job.first_token_at or now
            by_loop.setdefault(job.loop, []).append((job, event))
        for loop, items in by_loop.items():  # one wake-up of the event loop per step, not one per token
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop has closed (the server is stopping): stop its jobs
                for job, _ in items:
                    job.cancel.set()
        for request, job in list(self._live.items()):
            job.started_at = request.started_at
            if request.done:
                del self._live[request]
                self.worker.finish(job, "cancelled" if request.cancelled else "completed")
        self.queued = sum(1 for request in self.batcher.waiting if not request.started)


def _deliver(items: list[tuple[Job, Any]]) -> None:
    for job, item in items:
        job.queue.put_nowait(item)


async def events_of(job: Job) -> AsyncIterator[Any]:
    """Yield a job's events until it has finished; re-raise its error."""
    while True:
        item = await job.queue.get()
        if item is DONE:
            return
        if isinstance(item, Exception):
            raise item
        yield item
