"""PII redaction: e-mail addresses, phone numbers, public IP addresses, card numbers and IBANs.

Each match is replaced by a fixed placeholder (`<EMAIL>`, `<PHONE>`, `<IP_ADDRESS>`, `<CREDIT_CARD>`,
`<IBAN>`), so the same input always gives the same output and a model trained on the text learns
where such things appear without learning them.

Values reserved for examples (example.com's domains and address, 555-01XX, counting digits: see
`pii_reserved.py`) are kept. Documentation is full of numbers that look like PII, so each kind needs
more than a pattern:
- Cards pass the Luhn checksum *and* look like a card: a known network's prefix and length (Visa,
  Mastercard, Amex, Discover, Diners, JCB, UnionPay), written as one run of digits or in the groups
  cards print (4-4-4-4, Amex 4-6-5) with one separator throughout, and not one repeated digit. Luhn
  alone passes one random digit string in ten: `0000 0000 0000 0000`, `ls -l` columns, table rows.
- IBANs pass ISO 13616 mod-97.
- Only globally routable IP addresses are personal: IPv4 outside the private, loopback, documentation
  and reserved ranges, and IPv6 global unicast (2000::/3, less its documentation and other special
  blocks); clock times, C++ scopes and networks (`192.0.2.0/24`, `2002::/16`) are not addresses. A
  dotted quad that reads as a version (`Python 3.11.7.1`, `v1.2.3.4`, `1.2.3.4-rc1`, part of
  `1.2.3.4.5`, four one-digit numbers as in `zlib 1.2.3.4`) or as a section number (after "Section",
  "§", "Chapter"..., or opening a line as a heading's number does: `3.3.2.4. __slots__`) is left alone.
- Phones: international (`+49 30 12345678`, `0049 30 12345678`, `+1 (555) 123-4567`), North
  American (`(555) 123-4567`, `555-123-4567`, `1-800-555-2671`; area codes start with 2-9, so
  `123-456-7890` is no number) and national trunk-prefix forms (`020 7946 0958`, `06 1234 5678`,
  `(02) 9876 5432`), 7-15 digits, and, when written with spaces only, not one cell of a row of
  numbers (`--> 012 013 023 123`).

Inside interactive-interpreter transcripts (`>>> ` examples) the documentation recipe keeps phone
numbers and IP addresses (`keep_in_transcripts`): what a manual types at the prompt or the interpreter
computes is example data. E-mail addresses are still redacted there: transcripts of live sessions show
real people's (a news article's `From:` header, a package's `author_email`). Prose beside a
transcript is redacted as usual.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field

from llmlab.data.clean.documents import Document
from llmlab.data.clean.pii_reserved import (
    EXAMPLE_DOMAIN_ADDRESSES, fictional_phone, placeholder_ipv4, reserved_domain, transcript_spans,
)
from llmlab.data.clean.steps import DocumentStep
from llmlab.errors import ConfigError

KINDS = ("email", "iban", "credit_card", "ip_address", "phone")
PLACEHOLDERS = {kind: f"<{kind.upper()}>" for kind in KINDS}

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
CARD = re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d-]|\.\d)")
# Card networks' prefixes (IIN ranges) and the lengths their numbers have.
_CARD_NETWORKS = (
    (re.compile(r"4"), (13, 16, 19)),  # Visa
    (re.compile(r"5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)"), (16,)),  # Mastercard
    (re.compile(r"3[47]"), (15,)),  # American Express
    (re.compile(r"6(?:011|5|4[4-9])"), (16, 19)),  # Discover
    (re.compile(r"3(?:0[0-5]|[689])"), (14, 16)),  # Diners Club
    (re.compile(r"35(?:2[89]|[3-8]\d)"), (16, 19)),  # JCB
    (re.compile(r"62"), (16, 19)),  # UnionPay
)
# How printed cards group their digits: one run, fours (Visa 13: 4-4-5), Amex/Diners 4-6-5 / 4-6-4.
_CARD_GROUPS = {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 4, 5), (4, 6, 5), (4, 6, 4)}
IPV4 = re.compile(r"(?<![\w.-])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w-]|\.\w)")
# Candidates only: 2000::/3 addresses start with 2 or 3; `ipaddress` decides what is valid and global.
IPV6 = re.compile(r"(?<![\w:.])[23][0-9A-Fa-f]{0,3}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:]|\.\w)")
GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
PHONE = re.compile(
    r"(?<![\w.+-])(?:"
    r"(?:\+|00)[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,8}){1,4}"  # +44 20 7946 0958, 0049 30 12345678
    r"|(?:1[ .-]?)?\([2-9]\d{2}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567 (NANP area codes start 2-9)
    r"|(?:1([.-]))?[2-9]\d{2}([.-])\d{3}\2\d{4}"  # 555-123-4567, 1-800-555-2671
    # 020 7946 0958, 06 1234 5678, 03-1234-5678, (02) 9876 5432: a trunk prefix 0; numbers start 1-9
    r"|(?:0[1-9]\d{0,3}|\(0[1-9]\d{0,3}\))( |-)[1-9]\d{2,3}\3\d{3,4}"
    r"|0[1-9]\d{1,3}[ /-]\d{6,8}"  # 030 12345678
    r")(?![\w-]|\.\d)"
)
# Words that announce a section number just before a dotted quad ("Section 4.1.2.3", "§ 4.8.1.1").
# A list of them counts too: "Sections 4.1.2.2 and 4.1.2.3".
_SECTION_CUE = re.compile(
    r"(?:\bsections?|\bsecs?\.|§+|\bchapters?|\bch\.|\bclauses?|\bparts?|\bsteps?|\bfig(?:ure)?s?\.?|\btables?"
    r"|\bappendix|\barticles?|\barts?\.|\bparagraphs?|\bitems?|\brules?)"
    r"\s*(?:\d+(?:\.\d+)*\.?\s*(?:,|and|or|to|through|-|–)\s*)*$",
    re.IGNORECASE,
)
_TITLE_AFTER = re.compile(r"(\.)?[^\S\n]+(\S)")
# Words that announce a version number just before a dotted quad.
_VERSION_CUE = re.compile(
    r"(?:\bv|\bversion|\bver\.?|\brelease|\brev\.?|\bbuild|\bpython|\bupdate|\bpatch|\bfirmware|\bkernel|[=<>~]=?|(?<=\w)/)\s*$",
    re.IGNORECASE,
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    iban = candidate.replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def in_number_row(match: re.Match) -> bool:
    """Whether the match is one cell of a row of numbers: a digit just before or after it, one space away
    (`ls -l` columns, table rows, `--> 000 001 010 011`)."""
    text = match.string
    return bool(
        re.search(r"\d[ \t]$", text[max(0, match.start() - 2) : match.start()])
        or re.match(r"[ \t]\d", text[match.end() : match.end() + 2])
    )


def card_like(match: re.Match) -> bool:
    """A card number as cards are printed: network prefix and length, grouping, Luhn, not one digit,
    and not one cell of a row of numbers."""
    candidate = match.group()
    if in_number_row(match):
        return False
    digits = re.sub(r"\D", "", candidate)
    separators = set(re.findall(r"\D", candidate))
    if len(separators) > 1 or len(set(digits)) == 1 or not luhn_valid(digits):
        return False
    if separators and tuple(map(len, re.split(r"\D", candidate))) not in _CARD_GROUPS:
        return False
    return any(prefix.match(digits) and len(digits) in lengths for prefix, lengths in _CARD_NETWORKS)


def _is_network(match: re.Match) -> bool:
    """A prefix length follows (`192.0.2.0/24`, `2002::/16`): a block of addresses, not one host's."""
    return bool(re.match(r"/[0-9a-fA-F]", match.string[match.end() : match.end() + 2]))


def _is_public_ip(match: re.Match, text: str) -> bool:
    # Four one-digit numbers read as a version or an outline number (`zlib 1.2.3.4`, `GCC 2.7.2.2`);
    # the public addresses of that form are well-known resolvers (8.8.8.8, 1.1.1.1), not anyone's.
    if _is_network(match) or all(len(part) == 1 for part in match.group().split(".")):
        return False
    before = text[max(0, match.start() - 60) : match.start()]
    line_start = text.rfind("\n", 0, match.start()) + 1
    # A heading's or list item's number opens its line and is followed by a title: "4.8.1.1. intro"
    # (the dot after the number), or "4.8.1.1 Intro" (a capital).
    title = _TITLE_AFTER.match(text, match.end())
    opens_line = not text[line_start : match.start()].strip(" \t\u00a0#*>•·|-") and bool(
        title and (title.group(1) or title.group(2).isupper())
    )
    if _VERSION_CUE.search(before[-12:]) or _SECTION_CUE.search(before) or opens_line:
        return False
    address = match.group()
    return ipaddress.ip_address(address).is_global and not placeholder_ipv4(address) and address not in EXAMPLE_DOMAIN_ADDRESSES


def _is_public_ipv6(match: re.Match) -> bool:
    try:
        address = ipaddress.ip_address(match.group())
    except ValueError:
        return False
    return (address in GLOBAL_UNICAST and address.is_global and not _is_network(match)
            and str(address) not in EXAMPLE_DOMAIN_ADDRESSES)


def _replace(pattern: re.Pattern, placeholder: str, text: str, valid, counts: dict, kind: str, found: list | None) -> str:
    def sub(match: re.Match) -> str:
        if not valid(match):
            return match.group()
        counts[kind] = counts.get(kind, 0) + 1
        if found is not None:
            found.append((kind, match.group()))
        return placeholder

    return pattern.sub(sub, text)


def redact(
    text: str, kinds: tuple[str, ...] | list[str] = KINDS, found: list[tuple[str, str]] | None = None,
    keep_in_transcripts: tuple[str, ...] | list[str] = (),
) -> tuple[str, dict[str, int]]:
    """`text` with PII replaced by placeholders, and how many of each kind were replaced; each
    (kind, value) replaced is appended to `found` if given (to inspect what a corpus loses).
    Inside interactive-interpreter transcripts (`>>> ` examples, `pii_reserved.transcript_spans`) the
    kinds in `keep_in_transcripts` are left as they are: in documentation those values are example data."""
    if not keep_in_transcripts:
        return _redact_all(text, kinds, found)
    transcript_kinds = [k for k in kinds if k not in keep_in_transcripts]
    pieces: list[str] = []
    counts: Counter = Counter()
    prose_start = 0
    for start, end in [*transcript_spans(text), (len(text), len(text))]:
        prose, prose_counts = _redact_all(text[prose_start:start], kinds, found)
        transcript, transcript_counts = _redact_all(text[start:end], transcript_kinds, found)
        pieces += [prose, transcript]
        counts.update(prose_counts)
        counts.update(transcript_counts)
        prose_start = end
    return "".join(pieces), dict(counts)


def _redact_all(text: str, kinds: tuple[str, ...] | list[str], found: list[tuple[str, str]] | None) -> tuple[str, dict[str, int]]:
    counts: dict[str, int] = {}
    # Order matters: IBANs and cards are long digit runs that the phone pattern would otherwise split.
    if "email" in kinds:
        text = _replace(
            EMAIL, PLACEHOLDERS["email"], text, lambda m: not reserved_domain(m.group().rsplit("@", 1)[1]),
            counts, "email", found,
        )
    if "iban" in kinds:
        text = _replace(IBAN, PLACEHOLDERS["iban"], text, lambda m: iban_valid(m.group()), counts, "iban", found)
    if "credit_card" in kinds:
        text = _replace(
            CARD, PLACEHOLDERS["credit_card"], text, card_like, counts, "credit_card", found,
        )
    if "ip_address" in kinds:
        text = _replace(IPV4, PLACEHOLDERS["ip_address"], text, lambda m: _is_public_ip(m, m.string), counts, "ip_address", found)
        text = _replace(IPV6, PLACEHOLDERS["ip_address"], text, _is_public_ipv6, counts, "ip_address", found)
    if "phone" in kinds:
        text = _replace(
            PHONE, PLACEHOLDERS["phone"], text,
            lambda m: 7 <= len(digits := re.sub(r"\D", "", m.group())) <= 15 and len(set(digits)) > 1
            and not fictional_phone(m.group())
            and not (in_number_row(m) and re.fullmatch(r"[\d ]+", m.group())),  # "555.123.4567 155 Elm St" is one
            counts, "phone", found,
        )
    return text, counts


@dataclass
class PiiRedaction(DocumentStep):
    """Replace PII in every document's text; counts go to the document's `pii` metadata. Drops nothing."""

    name = "pii"
    kind = "format"

    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    # Kinds left alone inside `>>> ` transcripts (the documentation recipe: phones and IP addresses).
    keep_in_transcripts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = sorted((set(self.kinds) | set(self.keep_in_transcripts)) - set(KINDS))
        if unknown:
            raise ConfigError(
                f"unknown PII kind {', '.join(map(repr, unknown))}", hint=f"the kinds are: {', '.join(KINDS)}"
            )

    def redact(self, text: str, found: list[tuple[str, str]] | None = None) -> tuple[str, dict[str, int]]:
        """`redact` with this step's settings."""
        return redact(text, self.kinds, found, self.keep_in_transcripts)

    def process(self, doc: Document) -> Document | str:
        text, counts = self.redact(doc.text)
        if not counts:
            return doc
        return doc.replace(text=text).with_metadata(pii=counts)
