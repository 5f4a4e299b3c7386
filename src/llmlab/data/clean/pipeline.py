"""Recipes and the runner: build steps from a TOML recipe, stream documents through them on local cores.

A recipe is a list of named steps with their settings (`recipes/fineweb.toml` is the default). The
runner cuts the step list at corpus-wide steps (deduplication): each run of per-document steps is
applied batch by batch in a pool of worker processes (results come back in input order, so the
output does not depend on the number of workers); a deduplication step keeps one small signature per
document in memory and the documents in a spill file until it knows the groups. Documents flow from
the readers to the Parquet writers a batch at a time, so peak memory does not grow with the corpus.
`clean(executor="ray")` hands the same steps to `ray_executor` instead, which writes the same output.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import multiprocessing
import os
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from llmlab.data.clean.resume_log import ResumeLog, ShardLog, fingerprint
from llmlab.data.clean.dedup import DedupStep, ExactDedup, MinHashDedup
from llmlab.data.clean.documents import Document, Removed
from llmlab.data.clean.extract import Extract
from llmlab.data.clean.langid import LanguageFilter
from llmlab.data.clean.pii import PiiRedaction
from llmlab.data.clean.quality import C4Quality, FineWebQuality, GopherQuality, GopherRepetition
from llmlab.data.clean.outputs import output_sinks
from llmlab.data.clean.ray_executor import ray_stream
from llmlab.data.clean.readers import COMMON_CRAWL, InputProblems, input_files, read_documents
from llmlab.data.clean.segments import Output, batches, drop_duplicates, run_steps, split_segments
from llmlab.data.clean.spill import Spill
from llmlab.data.clean.stats import KeptSummary, StepStats, build_report, write_report
from llmlab.data.clean.steps import Step
from llmlab.data.clean.url_filter import UrlFilter
from llmlab.errors import ConfigError
from llmlab.progress import Progress

STEPS: dict[str, type[Step]] = {
    cls.name: cls
    for cls in (
        UrlFilter, Extract, LanguageFilter, GopherRepetition, GopherQuality, C4Quality, FineWebQuality,
        ExactDedup, MinHashDedup, PiiRedaction,
    )
}
RECIPES_DIR = Path(__file__).parent / "recipes"
EXECUTORS = ("local", "ray")


@dataclass
class Recipe:
    """A named list of (step name, settings) pairs."""

    name: str
    steps: list[tuple[str, dict[str, Any]]]
    description: str = ""

    def build(self) -> list[Step]:
        return [build_step(name, settings) for name, settings in self.steps]


def build_step(name: str, settings: dict[str, Any]) -> Step:
    if name not in STEPS:
        raise ConfigError(f"unknown cleaning step {name!r}", hint=f"known steps: {', '.join(STEPS)}")
    cls = STEPS[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(settings) - allowed
    if unknown:
        raise ConfigError(
            f"step {name!r} has no setting {', '.join(sorted(unknown))}",
            hint=f"its settings are: {', '.join(sorted(allowed)) or 'none'}",
        )
    return cls(**settings)


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """A shipped recipe by name (`fineweb`, `documentation`) or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix and (RECIPES_DIR / f"{path}.toml").is_file():
        path = RECIPES_DIR / f"{path}.toml"
    if not path.is_file():
        raise ConfigError(
            f"no recipe {str(name_or_path)!r}",
            hint=f"use one of {', '.join(available_recipes())} or the path of a .toml recipe",
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {path} is not valid TOML: {e}") from e
    steps = []
    for i, entry in enumerate(data.get("steps", []), 1):
        entry = dict(entry)
        if "step" not in entry:
            raise ConfigError(f"recipe {path}: step #{i} has no 'step' name", hint='write step = "extract" etc.')
        name = entry.pop("step")
        # TOML has no null: `false` switches an optional threshold off.
        settings = {k: (None if v is False and _optional(name, k) else v) for k, v in entry.items()}
        steps.append((name, settings))
    if not steps:
        raise ConfigError(f"recipe {path} has no [[steps]]")
    recipe = Recipe(data.get("name", path.stem), steps, data.get("description", ""))
    recipe.build()  # validate names and settings now, not in a worker
    return recipe


def _optional(step: str, setting: str) -> bool:
    cls = STEPS.get(step)
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
    return setting in fields and "None" in str(fields[setting].type)


# --- running -------------------------------------------------------------------------------------

_worker_segments: list[list[Step]] = []  # set once per worker process by `_init_worker`


def _init_worker(segments: list[list[Step]]) -> None:
    global _worker_segments
    _worker_segments = segments


def _run_in_worker(index: int, batch: list[Document]):
    return run_steps(_worker_segments[index], batch)


def _map_segment(pool, index: int, segment: list[Step], batches: Iterable[list[Document]], window: int) -> Iterator[Output]:
    """Run a per-document segment over `batches`, in input order, with at most `window` batches in flight."""
    if pool is None:
        for batch in batches:
            yield run_steps(segment, batch)
        return
    pending: collections.deque = collections.deque()
    for batch in batches:
        pending.append(pool.apply_async(_run_in_worker, (index, batch)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _dedup_segment(step: DedupStep, batches: Iterable[list[Document]], spill_dir: Path) -> Iterator[Output]:
    """A corpus-wide step with only signatures in memory: documents wait in a spill file on disk until
    every signature is known, then are read back in order and split into kept and removed."""
    signatures: list[np.ndarray] = []
    seconds = 0.0
    with Spill(spill_dir) as spill:
        for batch in batches:
            start = time.perf_counter()
            signatures.append(step.signatures(batch))
            seconds += time.perf_counter() - start
            spill.write(batch)
        if not signatures:
            return
        start = time.perf_counter()
        roots = step.roots(np.concatenate(signatures))
        seconds += time.perf_counter() - start
        del signatures
        # Only the URLs that others repeat are remembered, for `duplicate_of`.
        wanted = set(roots[roots != np.arange(len(roots))].tolist())
        urls: dict[int, str] = {}
        index = 0
        for batch in spill.batches():
            for i, doc in enumerate(batch, index):
                if i in wanted:
                    urls[i] = doc.url
            yield drop_duplicates(step, batch, roots, index, urls.__getitem__, seconds)
            index += len(batch)
            seconds = 0.0  # counted once


def stream_pipeline(
    documents: Iterable[Document],
    steps: list[Step],
    totals: list[StepStats],
    on_removed: Callable[[list[Removed]], None],
    workers: int = 1,
    batch_size: int = 32,
    progress: Progress | None = None,
    resume_log: ResumeLog | None = None,
    spill_dir: str | os.PathLike | None = None,
) -> Iterator[list[Document]]:
    """Run `steps` over `documents` a batch at a time; yields kept batches in input order.

    Memory stays bounded whatever the corpus size: per-document segments keep at most two batches per
    worker in flight, deduplication keeps signatures and spills documents to `spill_dir`. Removed
    documents go to `on_removed` as they are found, step counters are added into `totals`. With a
    `resume_log`, the first segment's saved output is replayed first (the documents it covers are
    skipped), and every batch it finishes is handed to it."""
    segments = split_segments(steps)
    spill = Path(spill_dir or tempfile.gettempdir())
    pool = None
    if workers > 1 and any(not seg[0].corpus_wide for seg in segments):
        pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(
            workers, initializer=_init_worker, initargs=(segments,)
        )

    def run_segment(index: int, batches: Iterable[list[Document]]) -> Iterator[Output]:
        segment = segments[index]
        if segment[0].corpus_wide:
            return _dedup_segment(segment[0], batches, spill)
        return _map_segment(pool, index, segment, batches, 2 * workers)

    counts = {"kept": 0, "removed": 0}

    def first_segment(docs: Iterable[Document]) -> Iterator[Output]:
        if resume_log is not None:
            for total, s in zip(totals, resume_log.load()):
                total.add(s)
            docs = itertools.islice(docs, resume_log.consumed, None)
            for kept, removed in resume_log.replay(batch_size):
                counts["kept"] += len(kept)
                counts["removed"] += len(removed)
                yield kept, removed, []
            if progress is not None and resume_log.consumed:
                progress.update(resume_log.consumed, **counts)
        for kept, removed, stats in run_segment(0, batches(docs, batch_size)):
            counts["kept"] += len(kept)
            counts["removed"] += len(removed)
            if resume_log is not None:
                resume_log.add(kept, removed, stats)
            if progress is not None and stats:
                progress.update(stats[0].docs_in, **counts)
            yield kept, removed, stats
        if resume_log is not None:
            resume_log.save()

    def drain(outputs: Iterable[Output], offset: int) -> Iterator[list[Document]]:
        for kept, removed, stats in outputs:
            if removed:
                on_removed(removed)
            for total, s in zip(totals[offset:], stats):
                total.add(s)
            if kept:
                yield kept

    try:
        stream = drain(first_segment(documents), 0)
        offset = len(segments[0])
        for index in range(1, len(segments)):
            stream = drain(run_segment(index, stream), offset)
            offset += len(segments[index])
        yield from stream
    finally:
        if pool is not None:
            pool.close()
            pool.join()


@dataclass
class PipelineResult:
    kept: list[Document]
    removed: list[Removed]
    steps: list[StepStats] = field(default_factory=list)


def run_pipeline(
    documents: Iterable[Document], steps: list[Step], workers: int = 1, batch_size: int = 32
) -> PipelineResult:
    """`stream_pipeline` collected into lists: for small corpora, tests and benchmarks."""
    totals = [StepStats(s.name, s.kind) for s in steps]
    removed: list[Removed] = []
    batches = stream_pipeline(documents, steps, totals, removed.extend, workers, batch_size)
    kept = [doc for batch in batches for doc in batch]
    return PipelineResult(kept, removed, totals)


def clean(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    recipe: str | os.PathLike | Recipe = "fineweb",
    workers: int | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    checkpoint_every_s: float = 30.0,
    skip_bad_input: bool = False,
    paths_base: str = COMMON_CRAWL,
    executor: str = "local",
    ray_address: str | None = None,
) -> dict:
    """Read `inputs`, run the recipe, write documents/removed Parquet and the report; return the stats.

    Inputs are read, cleaned and written a batch at a time, so memory does not grow with the corpus.
    Work in progress is saved under `out_dir/checkpoint` every `checkpoint_every_s` seconds, so a
    killed run started again with the same arguments picks up where it stopped. Bad input (a truncated
    WARC file, a line that is not UTF-8 or not JSON) stops the run with its place, or with
    `skip_bad_input` is skipped and counted in the report's `input_problems`. Inputs may be URLs
    (s3://, https://) and Common Crawl path lists (`warc.paths.gz`, resolved under `paths_base`).

    `executor="ray"` runs the same steps on Ray (`ray_executor`): a local Ray with `workers` CPUs, or
    the cluster at `ray_address`; the output equals the local executor's. It resumes by shard: finished
    shards are saved under `out_dir/checkpoint-ray` as they arrive."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}", hint=f"use one of {', '.join(EXECUTORS)}")
    if ray_address and executor != "ray":
        raise ConfigError("a Ray address is only used by the Ray executor", hint="add --executor ray")
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    steps = recipe.build()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    files = input_files(inputs, paths_base)
    key = fingerprint(files, {"name": recipe.name, "steps": recipe.steps}, limit)
    resume_log = ResumeLog(out / "checkpoint", key, checkpoint_every_s)
    shard_log = ShardLog(out / "checkpoint-ray", key)
    problems = InputProblems(skip=skip_bad_input)
    metrics = out / "progress.jsonl"
    metrics.unlink(missing_ok=True)
    totals = [StepStats(s.name, s.kind) for s in steps]
    summary = KeptSummary()
    start = time.perf_counter()
    with (
        Progress(total=limit, desc=f"clean ({recipe.name})", unit="doc", metrics_path=metrics) as progress,
        tempfile.TemporaryDirectory(dir=out, prefix=".spill-") as spill,
        output_sinks(out) as (kept_sink, removed_sink),
    ):
        if executor == "ray":
            kept_batches = ray_stream(
                files, steps, totals, removed_sink.add_removed, problems, workers, batch_size, limit, progress,
                ray_address, shard_log,
            )
        else:
            kept_batches = stream_pipeline(
                read_documents(files, limit, problems), steps, totals, removed_sink.add_removed, workers, batch_size,
                progress, resume_log, spill,
            )
        for batch in kept_batches:
            kept_sink.add_documents(batch)
            summary.add(batch)
    seconds = time.perf_counter() - start
    report = build_report(recipe.name, [str(p) for p in inputs], totals, summary, seconds)
    report["input_problems"] = problems.report()
    write_report(out, report, summary)
    resume_log.remove()
    shard_log.remove()
    return report


def compare_recipes(documents: list[Document], recipes: list[str | Recipe], kinds: tuple[str, ...] = ("quality",)) -> dict[str, int]:
    """How many of `documents` (already extracted) each recipe's `kinds` steps would keep."""
    kept = {}
    for r in recipes:
        recipe = r if isinstance(r, Recipe) else load_recipe(r)
        steps = [s for s in recipe.build() if s.kind in kinds]
        kept[recipe.name] = len(run_steps(steps, list(documents))[0])
    return kept
