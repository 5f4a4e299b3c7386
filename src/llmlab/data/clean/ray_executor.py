"""The Ray executor: the same recipe, steps and output as the local executor, with the work spread
over a Ray cluster (a local one started on demand, or an existing one by address).

The inputs are cut into shards: one per input file, and a Parquet file into ranges of row groups.
Each shard is read in a Ray task, which also runs the recipe's first per-document segment (URL
filter, extraction, language ID, quality rules) with `run_steps`, batch by batch, as the local
executor does; its kept documents stay in Ray's object store. A deduplication step is split in two:
the tasks compute each document's signature (`DedupStep.signatures`), the driver joins them in input
order and finds the groups with the same `DedupStep.roots`, and every shard then drops its
duplicates in another task (`drop_duplicates`). So the earliest document of a group, in input order,
is kept whichever shard holds it, and the kept set equals the local executor's. Later per-document
segments (PII) run per shard again; the driver writes the shards' documents in input order.

A killed run resumes by shard: the driver saves each shard's first-segment output as it arrives
(`resume_log.ShardLog`), and a rerun with the same arguments reads those back instead of running them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from llmlab.data.clean.dedup import DedupStep
from llmlab.data.clean.documents import Document, Removed
from llmlab.data.clean.readers import (
    MAX_EXAMPLES, PARQUET_SUFFIXES, Input, InputProblems, input_name, no_documents_error, open_parquet, read_parquet,
    reader_for,
)
from llmlab.data.clean.resume_log import ShardLog
from llmlab.data.clean.segments import batches, drop_duplicates, run_steps, split_segments
from llmlab.data.clean.stats import StepStats
from llmlab.data.clean.steps import Step
from llmlab.errors import ConfigError, LlmlabError
from llmlab.progress import Progress

# A Parquet file is split into shards of about this many rows (whole row groups), so one big file
# still spreads over the workers.
SHARD_ROWS = 2048


def require_ray():
    """The `ray` module, or a clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            "the Ray executor needs the `ray` package", hint="pip install 'llmlab[ray]' (or use --executor local)"
        ) from e
    return ray


def worker_pythonpath() -> str:
    """A PYTHONPATH under which Ray workers import the same llmlab as this process (a source checkout too)."""
    package_root = str(Path(__file__).resolve().parents[3])
    return os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)


@contextlib.contextmanager
def ray_session(address: str | None, workers: int) -> Iterator:
    """Connect to Ray: the session already open in this process, the cluster at `address`, or a local
    Ray with `workers` CPUs and no dashboard, shut down again afterwards."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)  # the cluster's nodes must have llmlab installed
    else:
        runtime_env = {"env_vars": {"PYTHONPATH": worker_pythonpath()}}
        ray.init(num_cpus=workers, include_dashboard=False, runtime_env=runtime_env, **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class Shard:
    """A piece of the input read by one task: a file, or some of a Parquet file's row groups; `stop`
    reads at most that many documents (what a --limit leaves of it)."""

    path: Input
    row_groups: tuple[int, ...] | None = None
    stop: int | None = None

    def read(self, problems: InputProblems) -> Iterator[Document]:
        if self.row_groups is not None:
            docs = read_parquet(self.path, problems, self.row_groups)
        else:
            docs = reader_for(self.path)(self.path, problems)
        for i, doc in enumerate(docs):
            if self.stop is not None and i >= self.stop:
                return
            yield doc


def plan_shards(files: list[Input], rows: int = SHARD_ROWS) -> list[Shard]:
    """One shard per file, in input order; a Parquet file split into runs of row groups of about `rows` rows."""
    shards = []
    for path in files:
        if not input_name(path).lower().endswith(PARQUET_SUFFIXES):
            shards.append(Shard(path))
            continue
        meta = open_parquet(path).metadata
        group: list[int] = []
        count = 0
        for i in range(meta.num_row_groups):
            group.append(i)
            count += meta.row_group(i).num_rows
            if count >= rows:
                shards.append(Shard(path, tuple(group)))
                group, count = [], 0
        if group or not shards or shards[-1].path != path:
            shards.append(Shard(path, tuple(group)))
    return shards


# --- what the tasks run (plain functions: Ray wraps them in `ray_stream`) -------------------------

Info = tuple[list[Removed], list[StepStats]]


def _run_segment(docs: list[Document], segment: list[Step], batch_size: int) -> tuple[list[Document], Info]:
    kept: list[Document] = []
    removed: list[Removed] = []
    totals = [StepStats(s.name, s.kind) for s in segment]
    for batch in batches(docs, batch_size):
        k, r, stats = run_steps(segment, batch)
        kept += k
        removed += r
        for total, s in zip(totals, stats):
            total.add(s)
    return kept, (removed, totals)


def _read_and_run(shard: Shard, segment: list[Step], batch_size: int, skip_bad: bool) -> tuple[list[Document], tuple]:
    problems = InputProblems(skip=skip_bad)
    docs = list(shard.read(problems))
    kept, info = _run_segment(docs, segment, batch_size)
    return kept, (*info, len(docs), problems.report())


def _count(shard: Shard, skip_bad: bool) -> int:
    return sum(1 for _ in shard.read(InputProblems(skip=skip_bad)))


def _signatures(docs: list[Document], step: DedupStep) -> tuple[np.ndarray | None, list[str], float]:
    start = time.perf_counter()
    signatures = step.signatures(docs) if docs else None
    return signatures, [d.url for d in docs], time.perf_counter() - start


def _drop(
    docs: list[Document], step: DedupStep, roots: np.ndarray, start: int, urls: dict[int, str], seconds: float
) -> tuple[list[Document], Info]:
    kept, removed, stats = drop_duplicates(step, docs, roots, start, urls.__getitem__, seconds)
    return kept, (removed, stats)


# --- the driver ------------------------------------------------------------------------------------

def ray_stream(
    files: list[Input],
    steps: list[Step],
    totals: list[StepStats],
    on_removed: Callable[[list[Removed]], None],
    problems: InputProblems,
    workers: int = 1,
    batch_size: int = 32,
    limit: int | None = None,
    progress: Progress | None = None,
    address: str | None = None,
    shard_log: ShardLog | None = None,
) -> Iterator[list[Document]]:
    """Run `steps` over the documents of `files` on Ray; yields the kept documents in input order, a
    shard at a time, as `stream_pipeline` does (removed ones go to `on_removed`, counters into `totals`,
    damaged input into `problems`). With a `shard_log`, each shard's first segment is saved as it
    finishes, and shards an earlier run saved are read back instead of run again."""
    with ray_session(address, workers) as ray:
        try:
            yield from _drive(ray, files, steps, totals, on_removed, problems, batch_size, limit, progress, shard_log)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
            if isinstance(cause, LlmlabError):
                raise cause from None  # bad input found in a worker reads as it does locally
            raise


def _limit_shards(ray, shards: list[Shard], limit: int, skip_bad: bool) -> list[Shard]:
    """The shards that hold the first `limit` documents, the last one cut short (counted in tasks)."""
    count = ray.remote(_count)
    kept: list[Shard] = []
    left = limit
    for shard, n in zip(shards, ray.get([count.remote(s, skip_bad) for s in shards])):
        if left <= 0:
            break
        kept.append(Shard(shard.path, shard.row_groups, left if n > left else None))
        left -= min(n, left)
    return kept


def _drive(ray, files, steps, totals, on_removed, problems, batch_size, limit, progress, shard_log) -> Iterator[list[Document]]:
    segments = split_segments(steps)
    shards = plan_shards(files, SHARD_ROWS)
    if limit is not None:
        shards = _limit_shards(ray, shards, limit, problems.skip)
    first = [] if segments[0][0].corpus_wide else segments.pop(0)
    docs, infos = _read_shards(ray, shards, first, batch_size, problems.skip, progress, shard_log)
    if sum(read for _, _, read, _ in infos) == 0 and limit != 0:
        raise no_documents_error(files)
    for removed, stats, _, shard_problems in infos:
        _collect(removed, stats, totals, 0, on_removed)
        problems.counts.update(shard_problems["counts"])
        problems.examples += shard_problems["examples"][: max(0, MAX_EXAMPLES - len(problems.examples))]

    offset = len(first)
    run_segment = ray.remote(num_returns=2)(_run_segment)
    for segment in segments:
        if segment[0].corpus_wide:
            pairs = _deduplicate(ray, segment[0], docs)
        else:
            segment_ref = ray.put(segment)
            pairs = [run_segment.remote(ref, segment_ref, batch_size) for ref in docs]
        docs = [kept for kept, _ in pairs]
        for removed, stats in ray.get([info for _, info in pairs]):
            _collect(removed, stats, totals, offset, on_removed)
        offset += len(segment)

    for ref in docs:
        kept = ray.get(ref)
        if kept:
            yield kept


def _read_shards(ray, shards: list[Shard], segment: list[Step], batch_size: int, skip_bad: bool,
                 progress: Progress | None, shard_log: ShardLog | None) -> tuple[list, list[tuple]]:
    """Read every shard and run the first per-document `segment` on it in a task (or load the shard
    from `shard_log`); the kept documents' object refs and each shard's report, in input order."""
    read_and_run = ray.remote(num_returns=2)(_read_and_run)
    segment_ref = ray.put(segment)
    saved = shard_log.finished(repr(shards)) if shard_log is not None else set()
    docs: list = [None] * len(shards)
    infos: list = [None] * len(shards)
    waiting = {}
    counts = {"kept": 0, "removed": 0}

    def finished(index: int, info: tuple) -> None:
        infos[index] = info
        counts["kept"] += info[2] - len(info[0])
        counts["removed"] += len(info[0])
        if progress is not None:
            progress.update(info[2], **counts)

    for i, shard in enumerate(shards):
        if i in saved:
            kept, removed, stats, info = shard_log.load(i)
            docs[i] = ray.put(kept)
            finished(i, (removed, stats, info["read"], info["problems"]))
        else:
            docs[i], info_ref = read_and_run.remote(shard, segment_ref, batch_size, skip_bad)
            waiting[info_ref] = i
    # Reports come back as shards finish, for progress and the shard log.
    while waiting:
        done, _ = ray.wait(list(waiting), num_returns=1)
        i = waiting.pop(done[0])
        info = ray.get(done[0])
        if shard_log is not None:
            shard_log.save(i, ray.get(docs[i]), info[0], info[1], {"read": info[2], "problems": info[3]})
        finished(i, info)
    return docs, infos


def _deduplicate(ray, step: DedupStep, docs: list) -> list:
    """Signatures in tasks, the groups over all shards in the driver (input order), duplicates dropped
    in tasks: (kept ref, report ref) per shard."""
    signatures = ray.remote(_signatures)
    drop = ray.remote(num_returns=2)(_drop)
    results = ray.get([signatures.remote(ref, step) for ref in docs])
    start = time.perf_counter()
    found = [s for s, _, _ in results if s is not None]
    roots = step.roots(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    seconds = sum(t for _, _, t in results) + time.perf_counter() - start
    urls = [url for _, shard_urls, _ in results for url in shard_urls]
    roots_ref = ray.put(roots)
    pairs, begin = [], 0
    for i, (ref, (_, shard_urls, _)) in enumerate(zip(docs, results)):
        end = begin + len(shard_urls)
        # The URLs this shard's duplicates will name (their groups' first documents).
        wanted = {int(r): urls[int(r)] for r in np.unique(roots[begin:end])}
        pairs.append(drop.remote(ref, step, roots_ref, begin, wanted, seconds if i == 0 else 0.0))
        begin = end
    return pairs


def _collect(removed: list[Removed], stats: list[StepStats], totals: list[StepStats], offset: int, on_removed) -> None:
    if removed:
        on_removed(removed)
    for total, s in zip(totals[offset:], stats):
        total.add(s)
