"""FineWeb's URL filter: block-listed domains, sub-domains and URLs, banned and soft-banned words.

The rules, in FineWeb's order: the registered domain is listed (reason `domain`); the host or one of
its parent hosts below the registered domain is listed (`subdomain`); the exact URL is listed (`url`);
one of the URL's alphanumeric words is a banned word (`banned_word`); at least `soft_word_threshold`
soft-banned words appear (`soft_banned_words`); a banned sub-word occurs anywhere in the URL with
non-alphanumerics removed (`banned_subword`). Registered domains come from the `tld` package's bundled
Public Suffix List, so nothing is downloaded at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from tld import get_fld

from llmlab.data.clean.documents import Document
from llmlab.data.clean.steps import DocumentStep
from llmlab.errors import ConfigError

SHIPPED_LISTS = Path(__file__).parent / "blocklists"
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def read_list(path: str | Path) -> set[str]:
    """One entry per line; blank lines and `#` comments are skipped; entries are lower-cased."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"block list {path} does not exist", hint="check the path in the recipe's url_filter step")
    with open(path, encoding="utf-8", errors="replace") as f:
        return {s.strip().lower() for s in f if s.strip() and not s.lstrip().startswith("#")}


def _normalize_word(word: str) -> str:
    return _NON_ALNUM.sub("", word.lower())


@dataclass
class UrlFilter(DocumentStep):
    """Drop pages whose URL is block-listed; extra lists (e.g. UT1's) add to the small shipped ones."""

    name = "url_filter"
    kind = "filter"

    soft_word_threshold: int = 2
    use_shipped_lists: bool = True
    domains_files: list[str] = field(default_factory=list)
    urls_files: list[str] = field(default_factory=list)
    banned_words_files: list[str] = field(default_factory=list)
    banned_subwords_files: list[str] = field(default_factory=list)
    soft_banned_words_files: list[str] = field(default_factory=list)

    def _load(self, shipped: str, extra: list[str], normalize: bool) -> frozenset[str]:
        entries: set[str] = set()
        if self.use_shipped_lists:
            entries |= read_list(SHIPPED_LISTS / shipped)
        for path in extra:
            entries |= read_list(path)
        if normalize:
            entries = {_normalize_word(e) for e in entries} - {""}
        return frozenset(entries)

    @cached_property
    def lists(self) -> dict[str, frozenset[str]]:
        return {
            "domains": self._load("domains.txt", self.domains_files, normalize=False),
            "urls": self._load("urls.txt", self.urls_files, normalize=False),
            "banned_words": self._load("banned_words.txt", self.banned_words_files, normalize=True),
            "soft_banned_words": self._load("soft_banned_words.txt", self.soft_banned_words_files, normalize=True),
            "banned_subwords": self._load("banned_subwords.txt", self.banned_subwords_files, normalize=True),
        }

    @cached_property
    def _subword_pattern(self) -> re.Pattern | None:
        words = sorted(self.lists["banned_subwords"], key=len, reverse=True)
        return re.compile("|".join(map(re.escape, words))) if words else None

    def check(self, url: str) -> str | None:
        """The reason `url` is blocked, or None when it passes."""
        lists = self.lists
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
        registered = get_fld(host, fix_protocol=True, fail_silently=True) or host
        if registered in lists["domains"]:
            return "domain"
        # The host itself and each parent between it and the registered domain (a.b.example.com -> b.example.com).
        parts = host.split(".")
        n_registered = registered.count(".") + 1
        for i in range(0, len(parts) - n_registered):
            if ".".join(parts[i:]) in lists["domains"]:
                return "subdomain"
        # UT1's url lists leave out the scheme; FineWeb compares whole URLs. Accept both spellings.
        if {url, url.lower(), url.split("://", 1)[-1].lower()} & lists["urls"]:
            return "url"
        words = set(_NON_ALNUM.split(url.lower()))
        if words & lists["banned_words"]:
            return "banned_word"
        if len(words & lists["soft_banned_words"]) >= self.soft_word_threshold:
            return "soft_banned_words"
        if self._subword_pattern is not None and self._subword_pattern.search(_NON_ALNUM.sub("", url.lower())):
            return "banned_subword"
        return None

    def process(self, doc: Document) -> Document | str:
        return self.check(doc.url) or doc
