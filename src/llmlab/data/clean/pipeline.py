"""Recipes and the runner: build steps from a TOML recipe, run them over batches on local cores.

A recipe is a list of named steps with their settings (`recipes/fineweb.toml` is the default). The
runner cuts the step list at corpus-wide steps (deduplication): each run of per-document steps is
applied batch by batch in a pool of worker processes (results come back in input order, so the
output does not depend on the number of workers); a corpus-wide step then sees all surviving
documents at once in the main process.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from llmlab.data.clean.resume_log import ResumeLog, fingerprint
from llmlab.data.clean.dedup import ExactDedup, MinHashDedup
from llmlab.data.clean.documents import Document, Removed
from llmlab.data.clean.extract import Extract
from llmlab.data.clean.langid import LanguageFilter
from llmlab.data.clean.pii import PiiRedaction
from llmlab.data.clean.quality import C4Quality, FineWebQuality, GopherQuality, GopherRepetition
from llmlab.data.clean.readers import input_files, read_documents
from llmlab.data.clean.stats import StepStats, build_report, doc_chars, write_report
from llmlab.data.clean.steps import Step
from llmlab.data.clean.url_filter import UrlFilter
from llmlab.errors import ConfigError
from llmlab.files import atomic_path
from llmlab.progress import Progress

STEPS: dict[str, type[Step]] = {
    cls.name: cls
    for cls in (
        UrlFilter, Extract, LanguageFilter, GopherRepetition, GopherQuality, C4Quality, FineWebQuality,
        ExactDedup, MinHashDedup, PiiRedaction,
    )
}
RECIPES_DIR = Path(__file__).parent / "recipes"


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

def run_steps(steps: list[Step], batch: list[Document]) -> tuple[list[Document], list[Removed], list[StepStats]]:
    """Apply `steps` in order to one batch; the building block every executor calls."""
    removed: list[Removed] = []
    stats = []
    for step in steps:
        s = StepStats(step.name, step.kind, docs_in=len(batch), chars_in=sum(map(doc_chars, batch)))
        start = time.perf_counter()
        result = step(batch)
        s.seconds = time.perf_counter() - start
        batch = result.kept
        s.docs_out, s.chars_out = len(batch), sum(map(doc_chars, batch))
        s.reasons.update(r.reason for r in result.removed)
        removed += result.removed
        stats.append(s)
    return batch, removed, stats


_worker_segments: list[list[Step]] = []  # set once per worker process by `_init_worker`


def _init_worker(segments: list[list[Step]]) -> None:
    global _worker_segments
    _worker_segments = segments


def _run_in_worker(task: tuple[int, list[Document]]):
    index, batch = task
    return run_steps(_worker_segments[index], batch)


def _batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def split_segments(steps: list[Step]) -> list[list[Step]]:
    """Runs of per-document steps, each corpus-wide step alone: [[a, b], [dedup], [c]]."""
    segments: list[list[Step]] = []
    for step in steps:
        if step.corpus_wide or not segments or segments[-1][0].corpus_wide:
            segments.append([step])
        else:
            segments[-1].append(step)
    return segments


@dataclass
class PipelineResult:
    kept: list[Document]
    removed: list[Removed]
    steps: list[StepStats] = field(default_factory=list)


def run_pipeline(
    documents: Iterable[Document],
    steps: list[Step],
    workers: int = 1,
    batch_size: int = 32,
    progress: Progress | None = None,
    resume_log: ResumeLog | None = None,
) -> PipelineResult:
    """Run `steps` over `documents` with `workers` processes; output order follows input order.

    With a `resume_log`, the first segment's saved output (`resume_log.load()`, for the documents
    `documents` no longer contains) comes first, and every batch it finishes is handed to it."""
    segments = split_segments(steps)
    totals = [StepStats(s.name, s.kind) for s in steps]
    removed: list[Removed] = []
    saved: list[Document] = []
    if resume_log is not None:
        saved, removed, saved_stats = resume_log.load()
        for total, s in zip(totals, saved_stats):
            total.add(s)
        documents = itertools.islice(documents, resume_log.consumed, None)
        if progress is not None and resume_log.consumed:
            progress.update(resume_log.consumed, kept=len(saved), removed=len(removed))
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(
            workers, initializer=_init_worker, initargs=(segments,)
        )
    try:
        docs: Iterable[Document] = documents
        offset = 0
        for index, segment in enumerate(segments):
            kept: list[Document] = saved if index == 0 else []
            if segment[0].corpus_wide:
                outputs: Iterable = [run_steps(segment, list(docs))]
            else:
                tasks = ((index, b) for b in _batches(docs, batch_size))
                outputs = pool.imap(_run_in_worker, tasks) if pool else (run_steps(segment, b) for _, b in tasks)
            for batch_kept, batch_removed, batch_stats in outputs:
                kept += batch_kept
                removed += batch_removed
                for total, s in zip(totals[offset : offset + len(segment)], batch_stats):
                    total.add(s)
                if index == 0:
                    if resume_log is not None:
                        resume_log.add(batch_kept, batch_removed, batch_stats)
                    if progress is not None:
                        progress.update(batch_stats[0].docs_in, kept=len(kept), removed=len(removed))
            if index == 0 and resume_log is not None:
                resume_log.save()
            offset += len(segment)
            docs = kept
        return PipelineResult(list(docs), removed, totals)
    finally:
        if pool is not None:
            pool.close()
            pool.join()


# --- outputs -------------------------------------------------------------------------------------

COLUMNS = ("language", "language_score", "source", "fetch_time")


def _document_rows(docs: list[Document]) -> dict[str, list]:
    rows: dict[str, list] = {"text": [], "url": [], **{c: [] for c in COLUMNS}, "metadata": []}
    for d in docs:
        rows["text"].append(d.text)
        rows["url"].append(d.url)
        for c in COLUMNS:
            rows[c].append(d.metadata.get(c))
        rest = {k: v for k, v in d.metadata.items() if k not in COLUMNS}
        rows["metadata"].append(json.dumps(rest, ensure_ascii=False, default=str))
    return rows


def write_documents(docs: list[Document], path: Path) -> None:
    """`documents.parquet`: text, url, language, language_score, source, fetch_time, metadata (JSON)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("text", pa.string()), ("url", pa.string()), ("language", pa.string()), ("language_score", pa.float64()),
         ("source", pa.string()), ("fetch_time", pa.string()), ("metadata", pa.string())]
    )
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(_document_rows(docs), schema=schema), tmp)


def write_removed(removed: list[Removed], path: Path) -> None:
    """`removed.parquet`: every dropped document with the step and reason, plus its text or HTML."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [r.document for r in removed]
    rows = _document_rows(docs)
    rows["step"] = [r.step for r in removed]
    rows["reason"] = [r.reason for r in removed]
    rows["html"] = [d.html for d in docs]
    schema = pa.schema(
        [("url", pa.string()), ("step", pa.string()), ("reason", pa.string()), ("text", pa.string()),
         ("html", pa.string()), ("language", pa.string()), ("language_score", pa.float64()),
         ("source", pa.string()), ("fetch_time", pa.string()), ("metadata", pa.string())]
    )
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({name: rows[name] for name in schema.names}, schema=schema), tmp)


def read_cleaned(path: str | os.PathLike) -> list[Document]:
    """Read `documents.parquet` back into documents (metadata columns merged back)."""
    import pyarrow.parquet as pq

    docs = []
    for row in pq.read_table(path).to_pylist():
        metadata = json.loads(row.pop("metadata") or "{}") | {c: row[c] for c in COLUMNS if row.get(c) is not None}
        docs.append(Document(row["url"], text=row["text"], metadata=metadata))
    return docs


def clean(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    recipe: str | os.PathLike | Recipe = "fineweb",
    workers: int | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    checkpoint_every_s: float = 30.0,
) -> dict:
    """Read `inputs`, run the recipe, write documents/removed Parquet and the report; return the stats.

    Work in progress is saved under `out_dir/checkpoint` every `checkpoint_every_s` seconds, so a
    killed run started again with the same arguments picks up where it stopped."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    steps = recipe.build()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    key = fingerprint(input_files(inputs), {"name": recipe.name, "steps": recipe.steps}, limit)
    resume_log = ResumeLog(out / "checkpoint", key, checkpoint_every_s)
    metrics = out / "progress.jsonl"
    metrics.unlink(missing_ok=True)
    start = time.perf_counter()
    with Progress(total=limit, desc=f"clean ({recipe.name})", unit="doc", metrics_path=metrics) as progress:
        result = run_pipeline(read_documents(inputs, limit), steps, workers, batch_size, progress, resume_log)
    seconds = time.perf_counter() - start
    write_documents(result.kept, out / "documents.parquet")
    write_removed(result.removed, out / "removed.parquet")
    report = build_report(recipe.name, [str(p) for p in inputs], result.steps, result.kept, seconds)
    write_report(out, report, result.kept)
    resume_log.remove()
    return report


def compare_recipes(documents: list[Document], recipes: list[str | Recipe], kinds: tuple[str, ...] = ("quality",)) -> dict[str, int]:
    """How many of `documents` (already extracted) each recipe's `kinds` steps would keep."""
    kept = {}
    for r in recipes:
        recipe = r if isinstance(r, Recipe) else load_recipe(r)
        steps = [s for s in recipe.build() if s.kind in kinds]
        kept[recipe.name] = len(run_steps(steps, list(documents))[0])
    return kept
