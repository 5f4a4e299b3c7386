"""Readers: WARC (the crawler's output and Common Crawl's files), JSONL, Parquet and plain text.

Every reader yields `Document`s in file order, with `metadata["source"]` naming the file. WARC
`response` records keep their HTML for the extraction step, with the HTTP status and content type in
metadata (the extraction step drops non-200 and non-HTML pages with a reason, so they still show up in
`removed.parquet`); WET `conversion` records and the other formats arrive as text.

Inputs are local paths or URLs (`s3://`, `https://`, `gs://`, ... anything fsspec opens), so Common
Crawl's files are read where they lie; a path list (`warc.paths.gz`, `wet.paths.gz`: one relative path
a line) expands to its files under a base URL (`https://data.commoncrawl.org/` unless told otherwise).

Bad input is never passed over in silence: a truncated or damaged WARC/gzip file, a JSONL line that is
not UTF-8, not JSON or escapes half a UTF-16 pair (`\\ud800`, which no UTF-8 output can hold), a
record without text, or inputs that hold no document at all stop the run with the file and place.
With `InputProblems(skip=True)` (`llmlab clean --skip-bad-input`) the damaged record or tail is
skipped instead and counted for the report. A null text in a Parquet or JSONL
record is not damage: it becomes an empty document, which the extraction step removes (`empty`).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from llmlab.data.clean.documents import Document
from llmlab.errors import InputError

WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".arc", ".arc.gz")  # WET: "x.warc.wet.gz"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".md", ".rst")
HTML_SUFFIXES = (".html", ".htm")
PATHS_SUFFIXES = (".paths", ".paths.gz")  # Common Crawl's warc.paths.gz, wet.paths.gz
COMMON_CRAWL = "https://data.commoncrawl.org/"
Input = Path | str  # a local path, or a URL fsspec opens


def is_url(path: Input) -> bool:
    return "://" in str(path)


def input_name(path: Input) -> str:
    """The file name of a path or URL (for `source` and to choose the reader)."""
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_url(path) else Path(path).name


def open_input(path: Input):
    """A binary file object: local files with open(), URLs through fsspec."""
    if not is_url(path):
        return open(path, "rb")
    try:
        import fsspec

        return fsspec.open(str(path), "rb").open()
    except FileNotFoundError:
        raise InputError(f"input {path} does not exist") from None
    except (ImportError, ValueError) as e:  # no filesystem for the protocol, or its package missing
        raise InputError(
            f"cannot open {path}: {e}", hint="install llmlab[data] (fsspec; aiohttp for https, s3fs for s3)"
        ) from None


def read_path_list(path: Input, base: str = COMMON_CRAWL) -> list[Input]:
    """The files a Common Crawl path list names, each joined to `base` unless it is a URL or absolute."""
    with open_input(path) as f:
        data = f.read()
    if str(path).endswith(".gz"):
        data = gzip.decompress(data)
    lines = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    if is_url(base):
        return [line if is_url(line) else base.rstrip("/") + "/" + line.lstrip("/") for line in lines]
    return [line if is_url(line) or line.startswith("/") else Path(base) / line for line in lines]
_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


SKIP_HINT = "or pass --skip-bad-input to skip such records and count them in the report"
MAX_EXAMPLES = 20


@dataclass
class InputProblems:
    """Damaged input met while reading: an error by default, or (skip=True) counted and passed over."""

    skip: bool = False
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def bad(self, kind: str, message: str, hint: str) -> None:
        """Raise InputError(message), or when skipping record it under `kind`."""
        if not self.skip:
            raise InputError(message, hint=f"{hint}; {SKIP_HINT}")
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)

    def report(self) -> dict:
        return {"counts": dict(self.counts), "examples": list(self.examples)}


def decode_html(body: bytes, content_type: str = "") -> str:
    """Bytes -> str using the HTTP charset, else the page's <meta charset>, else UTF-8, else cp1252."""
    candidates = []
    m = re.search(r"charset=[\"']?([A-Za-z0-9_.:-]+)", content_type or "", re.IGNORECASE)
    if m:
        candidates.append(m.group(1))
    m = _META_CHARSET.search(body[:4096])
    if m:
        candidates.append(m.group(1).decode("ascii"))
    for charset in candidates + ["utf-8"]:
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode("cp1252", errors="replace")


def _is_html(content_type: str) -> bool:
    content_type = content_type.lower()
    return not content_type or "html" in content_type or "xml" in content_type


class _GzipEnd:
    """A gzip stream that ends quietly where the file is cut short, and remembers that it was.

    warcio reads a truncated .warc.gz to its last whole record and stops without a word (it takes
    the error for the end of the file). Decompressing with the gzip module, which raises at a missing
    end, and turning that into a plain end here lets warcio read every whole record before the cut,
    after which the reader reports the cut."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.error: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self.raw.read(size)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            self.error = e
            return b""


def read_warc(path: str | Path, problems: InputProblems | None = None) -> Iterator[Document]:
    """Response and conversion records; a file cut short (a download or copy that stopped) is caught:
    a missing gzip end, or a record whose block is shorter than its Content-Length."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    name = input_name(path)
    problems = problems or InputProblems()
    records = 0
    f = None
    try:
        with open_input(path) as handle, _decompressed(handle, name) as raw:
            f = _GzipEnd(raw)
            for record in ArchiveIterator(f, arc2warc=True):
                if record.rec_type not in ("response", "conversion"):
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI") or ""
                metadata = {
                    "source": name,
                    "fetch_time": record.rec_headers.get_header("WARC-Date"),
                    "record_id": record.rec_headers.get_header("WARC-Record-ID"),
                }
                body = record.content_stream().read()
                if getattr(record.raw_stream, "limit", 0) > 0:  # the block ended before its Content-Length
                    raise EOFError(f"record {records + 1} ({url}) is cut short")
                records += 1
                if record.rec_type == "conversion":
                    yield Document(url, text=body.decode("utf-8", errors="replace"), metadata=metadata)
                    continue
                status = int(record.http_headers.get_statuscode()) if record.http_headers else 200
                content_type = (record.http_headers.get_header("Content-Type") if record.http_headers else "") or ""
                metadata |= {"http_status": status, "content_type": content_type.split(";")[0].strip()}
                if status == 200 and _is_html(content_type):
                    yield Document(url, html=decode_html(body, content_type), metadata=metadata)
                elif status == 200 and content_type.lower().startswith("text/plain"):
                    yield Document(url, text=decode_html(body, content_type), metadata=metadata)
                else:
                    yield Document(url, metadata=metadata)
            if f.error is not None:
                raise f.error
    except (EOFError, zlib.error, gzip.BadGzipFile, AttributeError, ValueError) as e:
        # A cut inside a record's header leaves warcio a partial line it fails on in its own ways.
        if isinstance(e, (AttributeError, ValueError)):
            if f is None or f.error is None:
                raise
            e = f.error
        problems.bad(
            "truncated_warc",
            f"{path}: truncated or damaged after {records} records ({e or type(e).__name__})",
            "download or copy the file again (gzip -t checks a .gz file)",
        )
    except ArchiveLoadFailed as e:
        raise InputError(f"{path}: not a readable WARC file ({e})", hint="pass .warc or .warc.gz files") from e


def _decompressed(handle, name: str):
    return gzip.GzipFile(fileobj=handle, mode="rb") if name.lower().endswith(".gz") else contextlib.nullcontext(handle)


def _from_record(record: dict, source: str, fallback_url: str) -> Document:
    known = {"text", "html", "url"}
    metadata = {"source": source} | {k: v for k, v in record.items() if k not in known}
    url = str(record.get("url") or fallback_url)
    if isinstance(record.get("text"), str):
        return Document(url, text=record["text"], metadata=metadata)
    if isinstance(record.get("html"), str):
        return Document(url, html=record["html"], metadata=metadata)
    if ("text" in record or "html" in record) and all(record.get(k) is None for k in ("text", "html")):
        return Document(url, metadata=metadata)  # a null text: an empty document, removed as `empty`
    raise InputError(
        f"{fallback_url}: record has neither a 'text' nor an 'html' string field",
        hint="each record needs a text (or html) field and, ideally, a url",
    )


# JSON may escape UTF-16 surrogates (\ud83d\ude80 is one emoji); an unpaired one decodes to a str that
# no UTF-8 writer (Arrow, Parquet) accepts, so such a line is bad input like a line that is not UTF-8.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _is_unicode(record: dict) -> bool:
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_jsonl(path: str | Path, problems: InputProblems | None = None) -> Iterator[Document]:
    """One JSON object per line with `text` (or `html`) and `url`; a bad line stops with its line number."""
    name = input_name(path)
    problems = problems or InputProblems()
    lineno = 0
    try:
        with open_input(path) as handle, _decompressed(handle, name) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    problems.bad(
                        "not_utf8",
                        f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})",
                        "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)",
                    )
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    problems.bad(
                        "not_json",
                        f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})",
                        "fix or delete that line; nothing was written",
                    )
                    continue
                if not isinstance(record, dict):
                    problems.bad(
                        "not_object", f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}",
                        "write one object per line",
                    )
                    continue
                if _SURROGATE_ESCAPE.search(raw) and not _is_unicode(record):
                    problems.bad(
                        "lone_surrogate", f"{path}:{lineno}: a \\uXXXX escape of half a UTF-16 pair is no text",
                        "the writer cut a character in two; fix or delete that line",
                    )
                    continue
                yield _from_record(record, name, f"{path}:{lineno}")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        problems.bad("truncated_gzip", f"{path}: truncated or damaged after line {lineno} ({e})",
                     "download or copy the file again (gzip -t checks a .gz file)")


def open_parquet(path: str | Path):
    """A `pyarrow.parquet.ParquetFile` that holds documents, or a clear error."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(open_input(path))
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputError(f"{path}: not a readable Parquet file ({e})") from e
    names = set(table.schema_arrow.names)
    if not names & {"text", "html"}:
        raise InputError(f"{path}: no 'text' or 'html' column (columns: {', '.join(sorted(names))})")
    return table


def read_parquet(
    path: str | Path, problems: InputProblems | None = None, row_groups: Sequence[int] | None = None
) -> Iterator[Document]:
    """A Parquet table with a `text` (or `html`) column and, ideally, `url`; other columns become metadata.
    `row_groups` (consecutive) reads only those: a shard of the file."""
    table = open_parquet(path)
    row = 0
    if row_groups:
        row = sum(table.metadata.row_group(i).num_rows for i in range(row_groups[0]))
    for batch in table.iter_batches(batch_size=1024, row_groups=row_groups):
        for record in batch.to_pylist():
            row += 1
            yield _from_record(record, input_name(path), f"{path}#row{row}")


def read_text(path: str | Path, problems: InputProblems | None = None) -> Iterator[Document]:
    """One document per file: .html/.htm files as HTML, anything else as UTF-8 text."""
    with open_input(path) as f:
        data = f.read()
    url = str(path) if is_url(path) else Path(path).resolve().as_uri()
    metadata = {"source": input_name(path)}
    if input_name(path).lower().endswith(HTML_SUFFIXES):
        yield Document(url, html=decode_html(data), metadata=metadata)
    else:
        yield Document(url, text=data.decode("utf-8", errors="replace"), metadata=metadata)


def reader_for(path: Input):
    name = input_name(path).lower()
    if name.endswith(WARC_SUFFIXES):
        return read_warc
    if name.endswith(JSONL_SUFFIXES):
        return read_jsonl
    if name.endswith(PARQUET_SUFFIXES):
        return read_parquet
    return read_text


def input_files(paths: list[Input], paths_base: str = COMMON_CRAWL) -> list[Input]:
    """Expand directories (recursively, sorted; hidden and unknown file types skipped) and path lists
    (`warc.paths.gz`, under `paths_base`); local paths must exist, URLs are checked when opened."""
    known = WARC_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES + HTML_SUFFIXES
    files: list[Input] = []
    for given in paths:
        if input_name(given).lower().endswith(PATHS_SUFFIXES):
            files += read_path_list(given, str(paths_base))
            continue
        if is_url(given):
            files.append(str(given))
            continue
        p = Path(given)
        if p.is_dir():
            files += sorted(
                f for f in p.rglob("*")
                if f.is_file()
                and f.name.lower().endswith(known)
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"input {p} does not exist", hint="pass WARC, JSONL, Parquet or text files or directories")
    if not files:
        raise InputError(
            f"no input files in {', '.join(map(str, paths)) or '(nothing given)'}",
            hint=f"llmlab clean reads {', '.join(known)} files",
        )
    return files


def read_documents(
    paths: list[Input], limit: int | None = None, problems: InputProblems | None = None, paths_base: str = COMMON_CRAWL
) -> Iterator[Document]:
    """All documents of all inputs in order, stopping after `limit` documents if given.

    Inputs that hold no document at all (empty files) are an error: an empty output would look like a
    cleaning that removed everything."""
    files = input_files(paths, paths_base)
    count = 0
    for path in files:
        for doc in reader_for(path)(path, problems):
            if limit is not None and count >= limit:
                return
            count += 1
            yield doc
    if count == 0 and limit != 0:
        raise no_documents_error(files)


def no_documents_error(files: list[Input]) -> InputError:
    """Inputs that hold no document at all: an empty output would look like a cleaning that removed everything."""
    return InputError(
        f"the inputs hold no documents: {', '.join(str(p) for p in files[:5])}{' ...' if len(files) > 5 else ''}",
        hint="check that the files are not empty and are the ones you meant",
    )
