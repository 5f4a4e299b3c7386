"""Values set aside for examples, which can never be a real person's data, so PII redaction keeps them.

Documentation and tutorials are written with these on purpose, by standard or by habit:
- Domains reserved for examples and testing (RFC 2606, RFC 6761): example.com, example.net and
  example.org with their subdomains, and everything under the .example, .test, .invalid and .localhost
  top-level domains. No one can register them, so no one receives mail there.
- The addresses example.com long resolved to (IANA's server, quoted wherever a manual shows a lookup of
  example.com): a server's, not a person's.
- North American numbers 555-0100 to 555-0199 in any area code, which the NANP administrator reserves for
  fiction and examples.
- Digits typed as a placeholder: all of a number's digits counting up or down (`123.45.67.89`,
  `098-765-4321`, `234-567-8901`), or an IPv4 address whose four numbers are one number or its
  anagrams (`123.123.123.123`, `123.231.231.123`). Operators hand out addresses from blocks and
  carriers numbers from ranges without regard to such patterns, so a real value lands on one about once
  in a billion; a person typing an example lands on one all the time.

Documentation address blocks (RFC 5737 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24; RFC 3849
2001:db8::/32) and private, loopback and link-local ones need no list here: `ipaddress` marks them as
not global, and only global addresses are redacted.

Documentation also sets a place aside for examples: the interactive-interpreter transcript (`>>> `
prompts, as doctest reads them). The numbers a manual types at the prompt and the interpreter computes
are example data (the `re` tutorial's phone book, `IPv4Address('127.0.0.2') - 3`), so the documentation
recipe keeps phone numbers and IP addresses inside `transcript_spans`; prose around them is redacted
as anywhere else.
"""

from __future__ import annotations

import re

EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")
RESERVED_TLDS = ("example", "test", "invalid", "localhost")
EXAMPLE_DOMAIN_ADDRESSES = frozenset({"93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"})
# A doctest example: a `>>>` prompt line, then every line up to the next blank one (its `...`
# continuations and the interpreter's answer); doctest ends an example's expected output the same way.
TRANSCRIPT = re.compile(r"^[ \t]*>>>(?:[ \t].*)?$(?:\n[ \t]*\S.*)*", re.MULTILINE)


def reserved_domain(domain: str) -> bool:
    """Whether an e-mail domain is reserved for examples (RFC 2606, RFC 6761): nobody's mailbox."""
    domain = domain.lower().rstrip(".")
    return domain.rsplit(".", 1)[-1] in RESERVED_TLDS or any(
        domain == d or domain.endswith("." + d) for d in EXAMPLE_DOMAINS
    )


def counting_digits(digits: str) -> bool:
    """Whether the digits count up or down one at a time (`123456789`, `0987654321`, `7890`), 9 wrapping to 0."""
    steps = {(int(b) - int(a)) % 10 for a, b in zip(digits, digits[1:])}
    return len(digits) >= 4 and (steps == {1} or steps == {9})


def placeholder_ipv4(address: str) -> bool:
    """An IPv4 address typed as an example: its digits count, or its numbers are one number's anagrams."""
    parts = address.split(".")
    return counting_digits("".join(parts)) or len({"".join(sorted(p)) for p in parts}) == 1


def fictional_phone(number: str) -> bool:
    """A North American number reserved for fiction (555-01XX), or one whose digits count up or down."""
    digits = re.sub(r"\D", "", number)
    nanp = re.fullmatch(r"1?[2-9]\d{9}", digits)  # area code, exchange, line; 1 as a prefix
    return bool(nanp and digits[-7:-2] == "55501") or counting_digits(digits)


def transcript_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each interactive-interpreter transcript in `text`: from a `>>>` prompt line to the
    next blank line."""
    return [m.span() for m in TRANSCRIPT.finditer(text)]
