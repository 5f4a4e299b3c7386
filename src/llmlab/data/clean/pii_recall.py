"""How much real PII the redaction finds: plant generated e-mails, phones, addresses, cards and IBANs in
sentences and count how many `redact` replaces with the right placeholder.

The values are made the way real ones are: phones in the formats of several countries, public IPv4
addresses and global IPv6 ones, card numbers with a network's prefix and length and a valid Luhn
digit, printed grouped or not, IBANs with valid check digits; none from the ranges reserved for
examples (`pii_reserved.py`: example.com, 555-01XX), which no real page's PII can come from.
Some sentences sit beside an interactive-interpreter transcript, so a step that keeps transcripts
(the documentation recipe's) is measured on prose next to them too. Documentation pages measure the
other side (what is redacted that is not PII): `benchmarks/clean.py --pii`.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from llmlab.data.clean.pii import PLACEHOLDERS, PiiRedaction, luhn_valid

SENTENCES = (
    "Contact me at {} if anything changes.",
    "{} is the one to use.",
    "You can reach Maria on {} after five.",
    "Details: Jonas Weber, {}, Berlin",
    "the log shows a login from {} at night",
    "Paid with {} yesterday, receipt attached.",
    "(see {})",
    "Name;Value\nwork;{}\n",
    # Prose beside an interpreter transcript, which the documentation recipe keeps as it is: the
    # value must still be found before the prompt and after the blank line that ends the example.
    "Ask Jonas ({}) before you run\n>>> connect()\n'ok'",
    ">>> lookup('maria')\n... \n'found'\n\nHer number is {} now.",
)
NAMES = ("anna", "jonas", "li.wei", "maria_s", "o.brien", "k.tanaka", "dev-team", "sam+news")
DOMAINS = ("gmail.com", "posteo.de", "uni-heidelberg.de", "company.co.uk", "mail.web.de", "orange.fr")


def _digits(rng: random.Random, n: int, first: str = "0123456789") -> str:
    return rng.choice(first) + "".join(rng.choice("0123456789") for _ in range(n - 1))


def _phone(rng: random.Random) -> str:
    d = lambda n, first="123456789": _digits(rng, n, first)  # noqa: E731 - a subscriber number's digits
    nanp = lambda: d(3, "23456789")  # noqa: E731 - area and exchange codes start with 2-9
    formats = (
        lambda: f"+49 30 {d(8)}",  # Germany
        lambda: f"030 {d(8)}",
        lambda: f"+44 20 {d(4, '78')} {d(4)}",  # United Kingdom
        lambda: f"020 {d(4, '78')} {d(4)}",
        lambda: f"+44 (0)20 {d(4, '78')} {d(4)}",
        lambda: f"1-800-555-{d(4)}",  # North America (555-01XX is reserved for fiction)
        lambda: f"({nanp()}) {nanp()}-{d(4)}",
        lambda: f"{nanp()}-{nanp()}-{d(4)}",
        lambda: f"{nanp()}.{nanp()}.{d(4)}",
        lambda: f"+1 {nanp()} {nanp()} {d(4)}",
        lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",  # France
        lambda: f"+81 3-{d(4)}-{d(4)}",  # Japan
        lambda: f"+61 2 {d(4)} {d(4)}",  # Australia
        lambda: f"(02) {d(4)} {d(4)}",
        lambda: f"06 {d(4)} {d(4)}",  # Italy
        lambda: f"+39 06 {d(4)} {d(4)}",
        lambda: f"03-{d(4)}-{d(4)}",  # Japan
        lambda: f"0049 30 {d(8)}",  # Germany, 00 for +
        lambda: f"07700 {d(6)}",  # UK mobile
        lambda: f"+34 {d(3, '9')} {d(3)} {d(3)}",  # Spain
        lambda: f"+91 {d(5, '9')} {d(5)}",  # India
    )
    return rng.choice(formats)()


def _ipv4(rng: random.Random) -> str:
    while True:
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        if address.is_global:
            return str(address)


def _ipv6(rng: random.Random) -> str:
    while True:
        address = ipaddress.IPv6Address((0b001 << 125) | rng.getrandbits(125))  # global unicast, 2000::/3
        if address.is_global:
            return str(address)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice((("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16)))
    body = prefix + _digits(rng, length - len(prefix) - 1)
    digits = next(body + c for c in "0123456789" if luhn_valid(body + c))
    groups = (4, 6, 5) if length == 15 else (4, 4, 4, 4)
    separator = rng.choice(("", " ", "-"))
    parts, i = [], 0
    for g in groups:
        parts.append(digits[i : i + g])
        i += g
    return separator.join(parts)


def _iban(rng: random.Random) -> str:
    bban = _digits(rng, 18)
    check = 98 - int(bban + "131400") % 97  # DE: D=13, E=14, check digits 00
    iban = f"DE{check:02d}{bban}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def _email(rng: random.Random) -> str:
    return f"{rng.choice(NAMES)}{rng.randrange(100)}@{rng.choice(DOMAINS)}"


GENERATORS = {"email": _email, "phone": _phone, "ip_address": lambda rng: rng.choice((_ipv4, _ipv6))(rng),
              "credit_card": _card, "iban": _iban}


@dataclass
class Planted:
    kind: str
    value: str
    text: str


def planted_pii(n: int = 1000, seed: int = 0) -> list[Planted]:
    """`n` sentences, each with one generated PII value of a kind drawn in turn."""
    rng = random.Random(seed)
    kinds = list(GENERATORS)
    samples = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        value = GENERATORS[kind](rng)
        samples.append(Planted(kind, value, rng.choice(SENTENCES).format(value)))
    return samples


def pii_recall(samples: list[Planted], step: PiiRedaction | None = None) -> dict:
    """Recall per kind and overall of `step` (default settings if None): a value counts as found when it
    is gone and its kind's placeholder is there."""
    step = step or PiiRedaction()
    found: dict[str, list[bool]] = {}
    misses = []
    for s in samples:
        out, _ = step.redact(s.text)
        ok = s.value not in out and PLACEHOLDERS[s.kind] in out
        found.setdefault(s.kind, []).append(ok)
        if not ok:
            misses.append((s.kind, s.value, out))
    everything = [ok for oks in found.values() for ok in oks]
    return {
        "planted": len(samples),
        "recall": round(sum(everything) / len(everything), 4),
        **{f"recall_{kind}": round(sum(oks) / len(oks), 4) for kind, oks in found.items()},
        "misses": misses,
    }
