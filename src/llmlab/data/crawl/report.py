"""The crawl report: what was stored, what failed and why, per host; as JSON and as markdown.

Counts come from the frontier, so they describe the whole crawl across resumed runs; the `run`
section describes the run that just ended.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

from llmlab.data.crawl.config import CrawlConfig
from llmlab.data.crawl.frontier import Frontier
from llmlab.files import write_json, write_text

MAX_LISTED = 50


def crawl_report(frontier: Frontier, config: CrawlConfig, run: dict, warc_path: Path) -> dict:
    """Summarise the frontier after a run; `run` holds the figures of the run that just ended."""
    stored, stored_bytes, truncated = frontier.rows(
        "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(truncated), 0) FROM urls WHERE state = 'stored'"
    )[0]
    hosts: dict[str, dict[str, int]] = {}
    for host, state, count, size in frontier.rows(
        "SELECT host, state, COUNT(*), COALESCE(SUM(bytes), 0) FROM urls GROUP BY host, state ORDER BY host"
    ):
        entry = hosts.setdefault(host, {"bytes": 0})
        entry[state] = count
        entry["bytes"] += size
    failures = [
        {"url": url, "state": state, "status": status, "reason": reason}
        for url, state, status, reason in frontier.rows(
            "SELECT url, state, status, reason FROM urls WHERE state IN ('failed', 'refused') ORDER BY seq LIMIT ?",
            [MAX_LISTED],
        )
    ]
    blocked = [url for (url,) in frontier.rows("SELECT url FROM urls WHERE state = 'blocked' ORDER BY seq LIMIT ?", [MAX_LISTED])]
    seconds = run["seconds"]
    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out_dir", "start_urls", "progress")}
    return {
        "start_urls": list(config.start_urls),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pages_stored": stored,
        "bytes_stored": stored_bytes,
        "pages_truncated": truncated,
        "urls_by_state": frontier.counts(),
        "urls_by_status": {
            str(status): count
            for status, count in frontier.rows(
                "SELECT status, COUNT(*) FROM urls WHERE status IS NOT NULL GROUP BY status ORDER BY status"
            )
        },
        "hosts": hosts,
        "robots_blocked": frontier.counts().get("blocked", 0),
        "robots_blocked_urls": blocked,
        "failures": failures,
        "warc": {"path": str(warc_path), "bytes": warc_path.stat().st_size if warc_path.exists() else 0},
        "run": {**run, "pages_per_second": round(run["pages_stored"] / seconds, 3) if seconds > 0 else None},
        "options": options,
    }


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines + [""]


def report_markdown(report: dict) -> str:
    run = report["run"]
    lines = [
        "# Crawl report",
        "",
        f"Start: {', '.join(report['start_urls'])}  ",
        f"Finished: {report['finished_at']}",
        "",
        f"**{report['pages_stored']} pages stored** ({report['bytes_stored']:,} bytes of bodies, "
        f"{report['pages_truncated']} cut at the size limit) in `{report['warc']['path']}` "
        f"({report['warc']['bytes']:,} bytes). This run: {run['pages_stored']} pages in {run['seconds']} s"
        + (f" ({run['pages_per_second']} pages/s)." if run["pages_per_second"] is not None else "."),
        "",
        "## URLs by state",
        "",
        *_table(("state", "URLs"), sorted(report["urls_by_state"].items())),
        "## URLs by HTTP status",
        "",
        *_table(("status", "URLs"), list(report["urls_by_status"].items())),
        "## Hosts",
        "",
    ]
    states = sorted({s for h in report["hosts"].values() for s in h} - {"bytes"})
    lines += _table(
        ("host", *states, "bytes"),
        [(host, *(h.get(s, 0) for s in states), f"{h['bytes']:,}") for host, h in report["hosts"].items()],
    )
    if run.get("robots"):
        lines += ["## robots.txt", "", *_table(("origin", "found"), list(run["robots"].items()))]
    lines += [f"## Blocked by robots.txt: {report['robots_blocked']}", ""]
    lines += [f"- {url}" for url in report["robots_blocked_urls"]] + ([""] if report["robots_blocked_urls"] else [])
    lines += [f"## Failures (first {MAX_LISTED})", ""]
    if report["failures"]:
        lines += _table(
            ("url", "state", "status", "reason"),
            [(f["url"], f["state"], f["status"] or "", f["reason"]) for f in report["failures"]],
        )
    else:
        lines += ["None.", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict) -> tuple[Path, Path]:
    """Write report.json and report.md atomically; returns their paths."""
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_json(json_path, report)
    write_text(md_path, report_markdown(report))
    return json_path, md_path
