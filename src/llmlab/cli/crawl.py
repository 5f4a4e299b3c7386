"""Crawl a website politely into a WARC file, resumably.

Starts at URL, follows links on the same host (by default) breadth-first, obeys robots.txt (longest
match, wildcards, Crawl-delay) and a per-host delay, and writes every page to DIR/pages.warc.gz (as
Common Crawl does) with the visited set and queue in DIR/frontier.sqlite. Kill it at any moment and
run the same command again: it continues without fetching a stored page twice. Private, loopback and
link-local addresses are refused (also through redirects) unless --allow-loopback is given for a site
on this machine.

example:
  llmlab crawl https://docs.python.org/3/ --out runs/demo/crawl --max-pages 200 --allow '/3/library/'
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmlab.data.crawl import DEFAULT_USER_AGENT, CrawlConfig, crawl


def _size(text: str) -> int:
    """Bytes from "1048576", "512k", "2M"."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 1048576, 512k, 2M)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CrawlConfig(start_urls=[], out_dir=Path("."))
    parser.add_argument("urls", nargs="+", metavar="URL", help="start URL(s); their hosts define the site")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="crawl directory (e.g. runs/NAME/crawl)")
    parser.add_argument("--max-pages", type=int, default=defaults.max_pages, metavar="N", help="stop after this many stored pages, counting earlier runs; 0: no limit (default %(default)s)")
    parser.add_argument("--max-depth", type=int, default=defaults.max_depth, metavar="N", help="follow links at most this many clicks from a start URL (default %(default)s)")
    parser.add_argument("--allow", action="append", default=[], metavar="REGEX", help="only follow URLs matching one of these patterns (repeatable)")
    parser.add_argument("--deny", action="append", default=[], metavar="REGEX", help="never follow URLs matching this pattern (repeatable)")
    parser.add_argument("--any-host", action="store_true", help="follow links to other hosts too (bound the crawl with --allow)")
    parser.add_argument("--delay", type=float, default=defaults.delay, metavar="SECONDS", help="seconds between requests to one host; robots.txt Crawl-delay can raise it (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, metavar="N", help="requests in flight across all hosts (default %(default)s)")
    parser.add_argument("--host-concurrency", type=int, default=defaults.host_concurrency, metavar="N", help="pages in progress on one host (default %(default)s)")
    parser.add_argument("--allow-loopback", action="store_true", help="allow 127.0.0.0/8 and ::1, for a site served on this machine")
    parser.add_argument("--user-agent", default=DEFAULT_USER_AGENT, metavar="UA", help="User-Agent header; its first word is matched against robots.txt (default %(default)r)")
    parser.add_argument("--max-bytes", type=_size, default=defaults.max_bytes, metavar="SIZE", help="keep at most this much of a page body, e.g. 512k, 2M (default 1M)")
    parser.add_argument("--timeout", type=float, default=defaults.timeout, metavar="SECONDS", help="seconds to wait for a connection or data (default %(default)s)")
    parser.add_argument("--retries", type=int, default=defaults.retries, metavar="N", help="retries after 5xx/429, timeouts and dropped connections (default %(default)s)")
    parser.add_argument("--max-redirects", type=int, default=defaults.max_redirects, metavar="N", help="redirect hops followed per URL (default %(default)s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", dest="fresh", action="store_false", help="continue the crawl in DIR if there is one (the default)")
    mode.add_argument("--fresh", dest="fresh", action="store_true", help="delete DIR's frontier and WARC file and start over")
    parser.set_defaults(fresh=False)


def run(args: argparse.Namespace) -> int:
    result = crawl(
        CrawlConfig(
            start_urls=args.urls,
            out_dir=args.out,
            max_pages=args.max_pages or None,
            max_depth=args.max_depth,
            allow=args.allow,
            deny=args.deny,
            any_host=args.any_host,
            delay=args.delay,
            concurrency=args.concurrency,
            host_concurrency=args.host_concurrency,
            allow_loopback=args.allow_loopback,
            user_agent=args.user_agent,
            max_bytes=args.max_bytes,
            timeout=args.timeout,
            retries=args.retries,
            max_redirects=args.max_redirects,
            fresh=args.fresh,
        )
    )
    report = result.report
    states = ", ".join(f"{n} {s}" for s, n in sorted(report["urls_by_state"].items()))
    print(f"stored {report['pages_stored']} pages ({report['run']['pages_stored']} this run); URLs: {states}")
    print(f"pages:    {result.warc_path}")
    print(f"frontier: {result.frontier_path}")
    print(f"report:   {result.report_paths[1]}")
    if report["pages_stored"] == 0:
        first = report["failures"][0]["reason"] if report["failures"] else "see the report"
        print(f"no page could be stored: {first}")
        return 1
    return 0
