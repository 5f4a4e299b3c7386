"""The crawler: a polite, resumable, SSRF-safe web crawl into a Common Crawl-style WARC file.

    from llmlab.data.crawl import CrawlConfig, crawl
    result = crawl(CrawlConfig(["https://docs.python.org/3/"], out_dir=Path("runs/x/crawl"), max_pages=50))
    result.warc_path, result.report["pages_stored"]

See docs/crawler.md for how each part works and why.
"""

from llmlab.data.crawl.config import DEFAULT_USER_AGENT, CrawlConfig
from llmlab.data.crawl.crawler import Crawler, CrawlResult, crawl

__all__ = ["DEFAULT_USER_AGENT", "CrawlConfig", "CrawlResult", "Crawler", "crawl"]
