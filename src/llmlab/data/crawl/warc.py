"""Writing pages to a WARC file the way Common Crawl does, one gzip member per record.

Each page becomes a `request` record (what llmlab sent) and a `response` record (status line, headers
and body as received), linked by `WARC-Concurrent-To`; a `warcinfo` record opens the file. Like Common
Crawl, the body is stored decoded, so `Content-Encoding`, `Transfer-Encoding` and the original
`Content-Length` are kept under `X-Crawler-` names and `Content-Length` is the stored length; a body cut
at the size limit carries `WARC-Truncated: length`. Records are appended and flushed one page at a time
and the caller notes their byte offsets, so a file left by a killed crawl can be cut back to its last
complete, recorded page.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from urllib.parse import urlsplit

from warcio.statusandheaders import StatusAndHeaders
from warcio.timeutils import datetime_to_iso_date
from warcio.warcwriter import WARCWriter

from llmlab import __version__
from llmlab.data.crawl.fetch import Response

WARC_VERSION = "1.1"
_RENAMED = {"content-encoding", "transfer-encoding", "content-length"}


def identified_payload_type(response: Response) -> str:
    """What the body is, judged from its first bytes, for `WARC-Identified-Payload-Type`.

    Common Crawl's WARCs carry this header (from content detection), and readers such as datatrove's
    select pages by it; without it they guess with libmagic, which calls an XHTML page "text/xml" and
    drops it. An XML declaration followed by an <html> element is XHTML; markup that opens with a
    doctype, <html>, <head> or <body> is HTML; anything else keeps the type the server declared.
    """
    head = response.body[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<?xml") and b"<html" in head:
        return "application/xhtml+xml"
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "text/html"
    return response.mime_type or "application/octet-stream"


def _stored_headers(response: Response) -> list[tuple[str, str]]:
    headers = [(f"X-Crawler-{k}" if k.lower() in _RENAMED else k, v) for k, v in response.headers]
    headers.append(("Content-Length", str(len(response.body))))
    return headers


class PageWarc:
    """An append-only gzipped WARC file of crawled pages."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        self._file.seek(0, os.SEEK_END)
        self._writer = WARCWriter(self._file, gzip=True, warc_version=WARC_VERSION)
        self.warcinfo_id: str | None = None

    def size(self) -> int:
        return self._file.seek(0, os.SEEK_END)

    def truncate(self, size: int) -> None:
        """Cut the file back to `size` bytes: drops a torn last record or records nobody marked stored."""
        self._file.truncate(size)
        self._file.seek(0, os.SEEK_END)

    def write_warcinfo(self, info: dict[str, str]) -> tuple[str, int]:
        """Open the file with a warcinfo record; returns its record id and end offset."""
        record = self._writer.create_warcinfo_record(self.path.name, {"software": f"llmlab/{__version__}", **info})
        self._write([record])
        self.warcinfo_id = record.rec_headers.get_header("WARC-Record-ID")
        return self.warcinfo_id, self._file.tell()

    def write_page(self, response: Response) -> tuple[int, int]:
        """Append the request and response records of one page; returns their (start, end) offsets."""
        date = datetime_to_iso_date(response.fetched_at.replace(tzinfo=None), use_micros=True)
        common = {"WARC-Date": date, "WARC-IP-Address": response.ip}
        if self.warcinfo_id:
            common["WARC-Warcinfo-ID"] = self.warcinfo_id
        parts = urlsplit(response.url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        request = self._writer.create_warc_record(
            response.url,
            "request",
            http_headers=StatusAndHeaders(
                # httpx speaks HTTP/1.1; the server may answer in another version.
                f"GET {target} HTTP/1.1", response.request_headers, is_http_request=True
            ),
            warc_headers_dict=dict(common),
        )
        response_headers = dict(common)
        response_headers["WARC-Concurrent-To"] = request.rec_headers.get_header("WARC-Record-ID")
        response_headers["WARC-Identified-Payload-Type"] = identified_payload_type(response)
        if response.truncated:
            response_headers["WARC-Truncated"] = "length"
        record = self._writer.create_warc_record(
            response.url,
            "response",
            payload=io.BytesIO(response.body),
            length=len(response.body),
            http_headers=StatusAndHeaders(
                f"{response.status} {response.reason}".strip(), _stored_headers(response), protocol=response.http_version
            ),
            warc_headers_dict=response_headers,
        )
        start = self._file.tell()
        self._write([request, record])
        return start, self._file.tell()

    def _write(self, records: list) -> None:
        for record in records:
            self._writer.write_record(record)
        # Flushed to the OS before the frontier marks the page stored: a killed process loses nothing.
        self._file.flush()

    def close(self) -> None:
        self._file.close()
