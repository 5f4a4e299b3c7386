"""Heuristic quality filters: Gopher repetition and quality rules, C4's rules, FineWeb's own rules.

Thresholds default to the published ones (Gopher: Rae et al. 2021, table A1 and section A.1.1; C4:
Raffel et al. 2020 as FineWeb configured it; FineWeb: Penedo et al. 2024). Each rule drops a document
with a reason naming the rule, so `removed.parquet` says exactly which one fired. A threshold set to
`None` (omitted in TOML: use `false`) switches its rule off.

Words are split the way spaCy's English tokenizer splits them (the word splitter datatrove uses for
these filters): punctuation marks are their own tokens, `n't` and `'s` are split off, URLs, numbers
such as 3.11.7 and dotted names such as os.path stay whole. A few regular expressions do it an order of
magnitude faster than loading and running spaCy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from llmlab.data.clean.documents import Document
from llmlab.data.clean.steps import DocumentStep

# spaCy's English rules, condensed: split on whitespace, then peel prefixes (opening quotes and
# brackets, currency, '#', '&', '_') and suffixes (closing punctuation, '...', a final '.', '+' after a
# digit, contractions such as 's and n't) off each chunk, then split infixes (hyphens, '/', ':', '='
# between letters; '-', '+', '*', '^' between digits, as in dates 2024-08-17).
# URLs and abbreviations like "e.g." stay whole.
_PREFIX = re.compile(r"""\.{2,}|[\"'`“”‘’«»(\[{<¿¡$£€#§*_…&]""")
_SUFFIX = re.compile(r"""(?:\):|''|\.{2,}|…|(?<=[0-9])\+|n['’]t|N['’]T|['’](?:s|S|re|ve|ll|d|m)|[\"'`“”‘’»()\]}>,;:!?%_*.])$""")
_INFIX = re.compile(r"((?<=[^\W_])(?:-+|[/:=<>])(?=[^\W\d_])|(?<=[0-9])[-+*^](?=[0-9-])|(?<=[a-z])\.(?=[A-Z]))")
_KEEP_WHOLE = re.compile(r"^(?:(?:https?://|www\.)\S+[\w/]|(?:[A-Za-z]\.)+)$")
# Chunks spaCy keeps whole although they are punctuation (emoticons, quotes), and words it splits.
_EMOTICONS = """'' (*_*) (-: (-; (-_-) (._.) (: (; (= (>_<) (^_^) )-: ): -_- -__- ._. :'( :') :'-( :'-) :( :(( :(((
    :() :) :)) :))) :* :-( :-(( :-((( :-) :-)) :-))) :-* :-/ :-> :-] :-| :-} :/ :> :] :| :} ;) ;-) ;_; <.< =( =) =/
    =[ =] =| >.< >.> >:( ><(((*> @_@ [-: [: [= \\") ]= ^_^ ^__^ ^___^""".split()
_SPECIAL = {**{e: [e] for e in _EMOTICONS}, "...": ["..."], "cannot": ["can", "not"], "Cannot": ["Can", "not"]}
# A chunk of punctuation alone ("|---|", "----+----", "~~", "<!--"): spaCy sheds only these prefixes and
# suffixes from it, one at a time, and keeps the rest whole.
_RUN_PREFIX = re.compile(r"""\.\.+|[!"#$%&'()*+,:;<=>?\[\]_`{}§—–…·«»“”‘’´‚„¿¡]""")
_RUN_SUFFIX = re.compile(r"""(?:\.\.+|[!"#&'()*,:;<>?\[\]_`{}—–…·«»“”‘’´‚„¿¡]|(?<![$/=@\\^~§—–])\.)$""")
_LONGEST_EMOTICON = max(map(len, _EMOTICONS))
# Tokens made only of these characters are "symbols", not words (Gopher counts words without them).
_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~—–“”‘’«»„…·•►■□▪●★☆、。，；：！？（）【】《》〈〉「」")
TERMINAL_PUNCTUATION = tuple(".!?。！？｡．।॥؟۔።፧‼⁇⁈⁉‽")
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


def _split_run(chunk: str, out: list[str]) -> None:
    """A chunk without letters or digits, split as spaCy's affix loop splits it."""
    prefixes: list[str] = []
    suffixes: list[str] = []
    while chunk and chunk not in _SPECIAL:
        m = _RUN_PREFIX.match(chunk)
        pre = m.end() if m else 0
        if pre and chunk[pre:] in _SPECIAL:
            prefixes.append(chunk[:pre])
            chunk = chunk[pre:]
            break
        m = _RUN_SUFFIX.search(chunk, pre)
        suf = len(m.group()) if m else 0
        if suf and chunk[:-suf] in _SPECIAL:
            suffixes.append(chunk[-suf:])
            chunk = chunk[:-suf]
            break
        if not pre and not suf:
            break
        if pre:
            prefixes.append(chunk[:pre])
        if suf and pre + suf <= len(chunk):
            suffixes.append(chunk[len(chunk) - suf :])
            chunk = chunk[pre : len(chunk) - suf]
        else:
            chunk = chunk[pre:]
    tokens = prefixes + ([chunk] if chunk else []) + suffixes[::-1]
    # spaCy then merges neighbouring pieces that spell an emoticon (":" ")" -> ":)"), longest first.
    i = 0
    while i < len(tokens):
        for j in range(len(tokens), i + 1, -1):
            joined = "".join(tokens[i:j])
            if len(joined) <= _LONGEST_EMOTICON and joined in _SPECIAL:
                tokens[i:j] = [joined]
                break
        out.append(tokens[i])
        i += 1


def _split_chunk(chunk: str, out: list[str]) -> None:
    if chunk in _SPECIAL:
        out.extend(_SPECIAL[chunk])
        return
    if not any(c.isalnum() for c in chunk):
        _split_run(chunk, out)
        return
    suffixes: list[str] = []
    while chunk and not _KEEP_WHOLE.match(chunk):
        m = _PREFIX.match(chunk)
        if m:
            out.append(m.group())
            chunk = chunk[m.end() :]
            continue
        m = _SUFFIX.search(chunk)
        if m and m.start() > 0:
            suffixes.append(m.group())
            chunk = chunk[: m.start()]
            continue
        break
    if chunk and _KEEP_WHOLE.match(chunk):
        out.append(chunk)
    elif chunk:
        out.extend(p for p in _INFIX.split(chunk) if p)
    out.extend(reversed(suffixes))


def split_words(text: str) -> list[str]:
    """Word and punctuation tokens of `text`, following spaCy's English tokenizer."""
    out: list[str] = []
    for chunk in text.split():
        if chunk.isalnum() and chunk not in _SPECIAL:
            out.append(chunk)
        else:
            _split_chunk(chunk, out)
    return out


def _is_symbol(token: str) -> bool:
    return all(ch in _PUNCTUATION for ch in token)


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, characters in those repeats): Gopher's duplicate measures."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """One 64-bit key per n-gram of word ids (random odd multipliers; wrapping arithmetic is intended)."""
    multipliers = np.random.default_rng(n).integers(1, 2**63, size=n, dtype=np.uint64) | np.uint64(1)
    m = len(ids) - n + 1
    keys = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            keys += ids[j : j + m] * multipliers[j]
    return keys


@dataclass
class GopherRepetition(DocumentStep):
    """Gopher's repetition removal: duplicated lines and paragraphs, top n-grams, duplicated n-grams."""

    name = "gopher_repetition"
    kind = "quality"

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_ngrams: dict[str, float] = field(default_factory=lambda: {"2": 0.20, "3": 0.18, "4": 0.16})
    dup_ngrams: dict[str, float] = field(
        default_factory=lambda: {"5": 0.15, "6": 0.14, "7": 0.13, "8": 0.12, "9": 0.11, "10": 0.10}
    )

    def process(self, doc: Document) -> Document | str:
        text = doc.text
        if not text:
            return "empty"
        n_chars = len(text)
        paragraphs = re.split(r"\n{2,}", text.strip())
        count, chars = duplicates(paragraphs)
        if self.dup_para_frac is not None and count / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if self.dup_para_char_frac is not None and chars / n_chars > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = re.split(r"\n+", text)
        count, chars = duplicates(lines)
        if self.dup_line_frac is not None and count / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if self.dup_line_char_frac is not None and chars / n_chars > self.dup_line_char_frac:
            return "dup_line_char_frac"

        words = split_words(text)
        vocab: dict[str, int] = {}
        ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.uint64, count=len(words))
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        cumulative = np.concatenate([[0], np.cumsum(lengths)])
        for n_str, threshold in self.top_ngrams.items():
            n = int(n_str)
            if len(words) < n:
                continue
            keys = _ngram_keys(ids, n)
            _, first, counts = np.unique(keys, return_index=True, return_counts=True)
            best = first[counts == counts.max()].min()  # the most frequent n-gram seen first
            ngram_chars = int(cumulative[best + n] - cumulative[best]) + n - 1  # joined with spaces
            if ngram_chars * counts.max() / n_chars > threshold:
                return f"top_{n}_gram"
        for n_str, threshold in self.dup_ngrams.items():
            n = int(n_str)
            if len(words) < n:
                continue
            keys_array = _ngram_keys(ids, n)
            ngram_chars_array = cumulative[n:] - cumulative[:-n]
            # Upper bound first (vectorised): every n-gram that occurred earlier anywhere. The greedy
            # scan below counts a subset of these, so when the bound passes, the document passes.
            _, first = np.unique(keys_array, return_index=True)
            repeats = np.ones(len(keys_array), dtype=bool)
            repeats[first] = False
            if ngram_chars_array[repeats].sum() / n_chars <= threshold:
                continue
            # Greedy scan as in Gopher: a repeated n-gram's characters count once, then skip past it.
            keys, ngram_chars = keys_array.tolist(), ngram_chars_array.tolist()
            seen: set[int] = set()
            repeated = idx = 0
            while idx < len(keys):
                if keys[idx] in seen:
                    repeated += ngram_chars[idx]
                    idx += n
                else:
                    seen.add(keys[idx])
                    idx += 1
            if repeated / n_chars > threshold:
                return f"duplicated_{n}_grams"
        return doc


@dataclass
class GopherQuality(DocumentStep):
    """Gopher's quality rules: length, mean word length, symbols, bullets, ellipses, alphabetic words, stop words."""

    name = "gopher_quality"
    kind = "quality"

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: list[str] = field(default_factory=lambda: list(GOPHER_STOP_WORDS))

    def process(self, doc: Document) -> Document | str:
        text = doc.text
        words = split_words(text)
        n_words = len(words)
        real_words = [w for w in words if not _is_symbol(w)]
        if self.min_words is not None and len(real_words) < self.min_words:
            return "too_few_words"
        if self.max_words is not None and len(real_words) > self.max_words:
            return "too_many_words"
        if not real_words:
            return "too_few_words"
        mean_length = sum(map(len, real_words)) / len(real_words)
        if self.min_avg_word_length is not None and mean_length < self.min_avg_word_length:
            return "short_words"
        if self.max_avg_word_length is not None and mean_length > self.max_avg_word_length:
            return "long_words"
        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n_words > self.max_symbol_word_ratio:
                return "hash_ratio"
            if (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
                return "ellipsis_ratio"
        lines = text.splitlines() or [""]
        if self.max_bullet_lines_ratio is not None:
            bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return "bullet_lines"
        if self.max_ellipsis_lines_ratio is not None:
            ellipses = sum(line.rstrip().endswith(("...", "…")) for line in lines)
            if ellipses / len(lines) > self.max_ellipsis_lines_ratio:
                return "ellipsis_lines"
        if self.min_alpha_words_ratio is not None:
            alpha = sum(any(c.isalpha() for c in w) for w in words)
            if alpha / n_words < self.min_alpha_words_ratio:
                return "alpha_words"
        if self.min_stop_words is not None:
            present = set(self.stop_words) & {w.lower() for w in words}
            if len(present) < self.min_stop_words:
                return "stop_words"
        return doc


_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def count_sentences(line: str) -> int:
    """Sentences in one line: each terminal-punctuation boundary ends one, trailing text is one more."""
    ends = list(_SENTENCE_END.finditer(line))
    tail = line[ends[-1].end() :].strip() if ends else line.strip()
    return len(ends) + (1 if tail else 0)


@dataclass
class C4Quality(DocumentStep):
    """C4's rules as FineWeb ran them: drop bad lines, then drop the page if too little is left.

    Lines are removed when they have a word over `max_word_length`, fewer than `min_words_per_line`
    words, mention javascript, or quote a cookie/terms policy (and, if `require_terminal_punct`, when
    they lack terminal punctuation: FineWeb turned that rule off). The page is removed for "lorem
    ipsum", a curly bracket, or fewer than `min_sentences` sentences in the kept lines. Kept pages
    come back with only their kept lines.
    """

    name = "c4_quality"
    kind = "quality"

    require_terminal_punct: bool = False
    remove_citations: bool = True
    min_sentences: int | None = 5
    min_words_per_line: int | None = 3
    max_word_length: int | None = 1000
    drop_lorem_ipsum: bool = True
    drop_javascript_lines: bool = True
    drop_curly_bracket: bool = True
    drop_policy_lines: bool = True

    def process(self, doc: Document) -> Document | str:
        kept: list[str] = []
        sentences = 0
        for line in doc.text.splitlines():
            line = line.strip()
            words = line.split()
            if self.max_word_length is not None and any(len(w) > self.max_word_length for w in words):
                continue
            if self.remove_citations:
                line = _CITATION.sub("", line)
            if self.require_terminal_punct and (not line.endswith((".", "?", "!", '"', "'")) or line.endswith("...")):
                continue
            if self.min_words_per_line is not None and len(words) < self.min_words_per_line:
                continue
            lowered = line.lower()
            if self.drop_lorem_ipsum and "lorem ipsum" in lowered:
                return "lorem_ipsum"
            if self.drop_javascript_lines and "javascript" in lowered:
                continue
            if self.drop_curly_bracket and "{" in line:
                return "curly_bracket"
            if self.drop_policy_lines and any(p in lowered for p in POLICY_PHRASES):
                continue
            sentences += count_sentences(line)
            kept.append(line)
        if self.min_sentences is not None and sentences < self.min_sentences:
            return "too_few_sentences"
        return doc.replace(text="\n".join(kept).strip())


@dataclass
class FineWebQuality(DocumentStep):
    """FineWeb's own rules: lines ending in punctuation, short lines, duplicated-line characters, list-like pages."""

    name = "fineweb_quality"
    kind = "quality"

    min_line_punct_ratio: float | None = 0.12
    max_short_line_ratio: float | None = 0.67
    short_line_length: int = 30
    # The FineWeb paper: drop when >= 10% of characters sit in duplicated lines (datatrove's default is 0.01).
    max_dup_line_char_ratio: float | None = 0.1
    max_newline_word_ratio: float | None = 0.3

    def process(self, doc: Document) -> Document | str:
        text = doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return "empty"
        if self.min_line_punct_ratio is not None:
            ratio = sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / len(lines)
            if ratio < self.min_line_punct_ratio:
                return "line_punct_ratio"
        if self.max_short_line_ratio is not None:
            ratio = sum(len(line) <= self.short_line_length for line in lines) / len(lines)
            if ratio > self.max_short_line_ratio:
                return "short_line_ratio"
        if self.max_dup_line_char_ratio is not None:
            ratio = duplicates(lines)[1] / max(1, len(text) - text.count("\n"))
            if ratio > self.max_dup_line_char_ratio:
                return "dup_line_char_ratio"
        if self.max_newline_word_ratio is not None:
            n_words = len(split_words(text))
            if n_words == 0 or text.count("\n") / n_words > self.max_newline_word_ratio:
                return "list_ratio"
        return doc

