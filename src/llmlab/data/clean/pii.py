"""PII redaction: e-mail addresses, phone numbers, public IP addresses, card numbers and IBANs.

Each match is replaced by a fixed placeholder (`<EMAIL>`, `<PHONE>`, `<IP_ADDRESS>`, `<CREDIT_CARD>`,
`<IBAN>`), so the same input always gives the same output and a model trained on the text learns
where such things appear without learning them. Numbers must pass their checksums (Luhn for cards,
ISO 13616 mod-97 for IBANs). Only globally routable IP addresses are personal: IPv4 outside the
private, loopback, documentation and reserved ranges, and IPv6 global unicast (2000::/3, less its
documentation and other special blocks); clock times and C++ scopes are not addresses. A dotted
quad that reads as a version (`Python 3.11.7.1`, `v1.2.3.4`, `version 3.11.7.1`, `1.2.3.4-rc1`, part
of `1.2.3.4.5`) is left alone.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from llmlab.data.clean.documents import Document
from llmlab.data.clean.steps import DocumentStep

KINDS = ("email", "iban", "credit_card", "ip_address", "phone")
PLACEHOLDERS = {kind: f"<{kind.upper()}>" for kind in KINDS}

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
CARD = re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d-]|\.\d)")
IPV4 = re.compile(r"(?<![\w.-])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w-]|\.\w)")
# Candidates only: 2000::/3 addresses start with 2 or 3; `ipaddress` decides what is valid and global.
IPV6 = re.compile(r"(?<![\w:.])[23][0-9A-Fa-f]{0,3}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:]|\.\w)")
GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
PHONE = re.compile(
    r"(?<![\w.+-])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"  # +44 20 7946 0958, +1 (555) 123-4567
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r")(?![\w-]|\.\d)"
)
# Words that announce a version number just before a dotted quad.
_VERSION_CUE = re.compile(
    r"(?:\bv|\bversion|\bver\.?|\brelease|\brev\.?|\bbuild|\bpython|\bupdate|\bpatch|\bfirmware|\bkernel|[=<>~]=?)\s*$",
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


def _is_public_ip(match: re.Match, text: str) -> bool:
    if _VERSION_CUE.search(text[max(0, match.start() - 12) : match.start()]):
        return False
    return ipaddress.ip_address(match.group()).is_global


def _is_public_ipv6(match: re.Match) -> bool:
    try:
        address = ipaddress.ip_address(match.group())
    except ValueError:
        return False
    return address in GLOBAL_UNICAST and address.is_global


def _replace(pattern: re.Pattern, placeholder: str, text: str, valid, counts: dict, kind: str) -> str:
    def sub(match: re.Match) -> str:
        if not valid(match):
            return match.group()
        counts[kind] = counts.get(kind, 0) + 1
        return placeholder

    return pattern.sub(sub, text)


def redact(text: str, kinds: tuple[str, ...] | list[str] = KINDS) -> tuple[str, dict[str, int]]:
    """`text` with PII replaced by placeholders, and how many of each kind were replaced."""
    counts: dict[str, int] = {}
    # Order matters: IBANs and cards are long digit runs that the phone pattern would otherwise split.
    if "email" in kinds:
        text = _replace(EMAIL, PLACEHOLDERS["email"], text, lambda m: True, counts, "email")
    if "iban" in kinds:
        text = _replace(IBAN, PLACEHOLDERS["iban"], text, lambda m: iban_valid(m.group()), counts, "iban")
    if "credit_card" in kinds:
        text = _replace(
            CARD, PLACEHOLDERS["credit_card"], text,
            lambda m: luhn_valid(re.sub(r"\D", "", m.group())), counts, "credit_card",
        )
    if "ip_address" in kinds:
        text = _replace(IPV4, PLACEHOLDERS["ip_address"], text, lambda m: _is_public_ip(m, m.string), counts, "ip_address")
        text = _replace(IPV6, PLACEHOLDERS["ip_address"], text, _is_public_ipv6, counts, "ip_address")
    if "phone" in kinds:
        text = _replace(
            PHONE, PLACEHOLDERS["phone"], text,
            lambda m: 7 <= len(re.sub(r"\D", "", m.group())) <= 15, counts, "phone",
        )
    return text, counts


@dataclass
class PiiRedaction(DocumentStep):
    """Replace PII in every document's text; counts go to the document's `pii` metadata. Drops nothing."""

    name = "pii"
    kind = "format"

    kinds: list[str] = field(default_factory=lambda: list(KINDS))

    def process(self, doc: Document) -> Document | str:
        text, counts = redact(doc.text, self.kinds)
        if not counts:
            return doc
        return doc.replace(text=text).with_metadata(pii=counts)
