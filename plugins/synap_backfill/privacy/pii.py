"""Finding personal values in a turn's text and replacing them before it is sent.

Synap keeps what it extracts and its deletes are final, so the only place to
keep an email address or a card number out of it is here, before the document
is built. Each kind is found by a well-kept library where one exists:

* ``phone``: Google's libphonenumber (``phonenumbers.PhoneNumberMatcher``,
  leniency VALID: a number must be a real, assigned range of its region),
  in the formats of each region of ``pii_phone_regions`` and any number
  written with its ``+`` country code;
* ``payment_card``: 13 to 19 digits (spaces or dashes between groups), an
  issuer's first digit (2 to 6) and the Luhn checksum (``stdnum.luhn``);
* ``iban``: ``stdnum.iban`` (country, length, format and the mod-97 checksum);
* ``national_id``: ``python-stdnum`` validators, each behind the number's
  written form: US SSN, Canadian SIN, Brazilian CPF, Spanish DNI and NIE,
  French NIR, Italian codice fiscale, German tax id (IdNr), Indian Aadhaar;
  and the UK National Insurance number, which has no checksum (format and
  its allowed prefixes only);
* ``ip_address``: IPv4 and IPv6 candidates, kept only when Python's
  ``ipaddress`` parses them;
* ``email``: the HTML standard's "valid e-mail address" with a dotted domain
  ending in letters (no library checks more without DNS).

A UUID is never searched inside. Where two kinds claim overlapping text, the
longer value wins, then the kind first in ``KINDS``. Nothing here logs or
raises a value: callers get the new text and counts by kind.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

Kind = Literal["email", "iban", "payment_card", "national_id", "ip_address", "phone"]
# In order of precedence when two kinds claim the same text.
KINDS: tuple[Kind, ...] = ("email", "iban", "payment_card", "national_id", "ip_address", "phone")
PLACEHOLDER = {"email": "EMAIL", "phone": "PHONE", "payment_card": "CARD", "iban": "IBAN",
               "national_id": "NATIONAL_ID", "ip_address": "IP_ADDRESS"}
TOKEN_HEX = 12  # 48 bits: a million distinct values of one kind collide with odds near 2e-3
Replacement = Literal["placeholder", "token"]

_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_EMAIL = re.compile(r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*"
                    r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])")
# Groups of digits with at most one space or dash between them.
_DIGIT_RUN = re.compile(r"(?<![\w.,/-])\d+(?:[ -]\d+)*(?![\w/-]|[.,]\d)")
_IBAN = re.compile(r"(?<![\w])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,32}(?![\w])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?"
                   r"(?![\w:])")


@dataclass(frozen=True, slots=True)
class Found:
    """A detected value: where it is, its kind, and the form its token is made of."""

    start: int
    end: int
    kind: Kind
    normal: str


@dataclass(frozen=True)
class RedactionSettings:
    """What to look for and how to replace it: one shape, from the run's config.

    ``token_key``: the secret the tokens are keyed with (``pii_replacement: token``);
    ``scope``: the Synap instance, so one value has one token per target.
    """

    kinds: frozenset[str]
    replacement: Replacement = "placeholder"
    phone_regions: tuple[str, ...] = ("US",)
    token_key: bytes | None = None
    scope: str = ""

    def __post_init__(self) -> None:
        if self.replacement == "token" and not self.token_key:
            raise ValueError("pii_replacement token needs a key")


class Redactor:
    """Replaces personal values in texts, and counts them by kind (never keeps one)."""

    def __init__(self, settings: RedactionSettings) -> None:
        self.settings = settings
        finders: dict[str, Callable[[str], Iterator[Found]]] = {
            "email": _emails, "iban": _ibans, "payment_card": _cards, "national_id": _national_ids,
            "ip_address": _ip_addresses,
            "phone": lambda text: _phones(text, settings.phone_regions or ("US",))}
        self._finders = [finders[kind] for kind in KINDS if kind in settings.kinds]

    def find(self, text: str) -> list[Found]:
        """The values to replace, in text order, overlaps resolved."""
        if not text:
            return []
        shielded = [(m.start(), m.end()) for m in _UUID.finditer(text)]
        found = [f for finder in self._finders for f in finder(text)
                 if not any(f.start < end and start < f.end for start, end in shielded)]
        if not found:
            return []
        rank = {kind: i for i, kind in enumerate(KINDS)}
        found.sort(key=lambda f: (-(f.end - f.start), rank[f.kind], f.start))
        kept: list[Found] = []
        for f in found:
            if not any(f.start < k.end and k.start < f.end for k in kept):
                kept.append(f)
        return sorted(kept, key=lambda f: f.start)

    def redact(self, text: str, counts: Counter[str]) -> str:
        """``text`` with each value found replaced; the replacements added to ``counts``."""
        found = self.find(text)
        if not found:
            return text
        out, at = [], 0
        for f in found:
            out += [text[at:f.start], self.replacement(f)]
            at = f.end
            counts[f.kind] += 1
        out.append(text[at:])
        return "".join(out)

    def replacement(self, found: Found) -> str:
        name = PLACEHOLDER[found.kind]
        if self.settings.replacement != "token":
            return f"<{name}>"
        assert self.settings.token_key is not None
        message = f"{self.settings.scope}\x1f{found.kind}\x1f{found.normal}".encode()
        digest = hmac.new(self.settings.token_key, message, hashlib.sha256).hexdigest()
        return f"<{name}_{digest[:TOKEN_HEX]}>"


def key_id(key: bytes) -> str:
    """Names a token key without revealing it: two runs with other keys make other tokens,
    so the key's id is part of the document settings."""
    return hmac.new(key, b"synap-backfill pii token key", hashlib.sha256).hexdigest()[:12]


def _emails(text: str) -> Iterator[Found]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        yield Found(m.start(), m.end(), "email", m.group().lower())


def _digit_runs(text: str) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """Each run of digit groups: its start and the (start, end) of every group."""
    for m in _DIGIT_RUN.finditer(text):
        groups = [(g.start(), g.end()) for g in re.finditer(r"\d+", m.group())]
        yield m.start(), groups


def _group_spans(text: str, min_digits: int, max_digits: int) -> Iterator[tuple[int, int, str]]:
    """Of each run of digit groups, its leading groups holding ``min_digits`` to ``max_digits``
    digits, longest first: a card followed by its CVV or expiry is still found, a long
    reference number is not searched inside."""
    for base, groups in _digit_runs(text):
        digits = 0
        spans = []
        for start, end in groups:
            digits += end - start
            if digits > max_digits:
                break
            if digits >= min_digits:
                spans.append((base + groups[0][0], base + end))
        for start, end in reversed(spans):
            yield start, end, re.sub(r"\D", "", text[start:end])


def _cards(text: str) -> Iterator[Found]:
    from stdnum import luhn

    if sum(c.isdigit() for c in text) < 13:
        return
    run = None
    for start, end, digits in _group_spans(text, 13, 19):
        if start == run:  # this run's longest valid span was found
            continue
        if digits[0] in "23456" and luhn.is_valid(digits):
            run = start
            yield Found(start, end, "payment_card", digits)


def _ibans(text: str) -> Iterator[Found]:
    from stdnum import iban

    for m in _IBAN.finditer(text):
        # The candidate may run on into the next word: shorten it, one character at a time.
        value = m.group()
        for end in range(len(value), 14, -1):
            if value[end - 1] == " ":
                continue
            compact = value[:end].replace(" ", "").upper()
            if iban.is_valid(compact):
                yield Found(m.start(), m.start() + end, "iban", compact)
                break


def _stdnum(module: str) -> Callable[[str], bool]:
    """``stdnum.<module>.is_valid``, imported when first used (not when this module is)."""
    return lambda value: bool(importlib.import_module(f"stdnum.{module}").is_valid(value))


# A national id's written form, and the python-stdnum validator behind it.
_NATIONAL_IDS: list[tuple[str, re.Pattern[str], Callable[[str], bool]]] = [
    ("us.ssn", re.compile(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])"), _stdnum("us.ssn")),
    ("ca.sin", re.compile(r"(?<![\w-])\d{3}([- ])\d{3}\1\d{3}(?![\w-])"), _stdnum("ca.sin")),
    ("br.cpf", re.compile(r"(?<![\w.-])\d{3}\.\d{3}\.\d{3}-\d{2}(?![\w-])"), _stdnum("br.cpf")),
    ("es.dni", re.compile(r"(?<![\w-])\d{8}-?[A-Za-z](?![\w-])"), _stdnum("es.dni")),
    ("es.nie", re.compile(r"(?<![\w-])[XYZxyz]-?\d{7}-?[A-Za-z](?![\w-])"), _stdnum("es.nie")),
    ("fr.nir", re.compile(r"(?<![\w])[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?![\w])"),
     _stdnum("fr.nir")),
    ("it.codicefiscale", re.compile(r"(?<![\w])[A-Za-z]{6}\d{2}[A-Za-z]\d{2}[A-Za-z]\d{3}[A-Za-z](?![\w])"),
     _stdnum("it.codicefiscale")),
    ("de.idnr", re.compile(r"(?<![\w-])[1-9]\d(?: ?\d{3}){3}(?![\w-])"), _stdnum("de.idnr")),
    ("in_.aadhaar", re.compile(r"(?<![\w-])[2-9]\d{3}([ -]?)\d{4}\1\d{4}(?![\w-])"),
     _stdnum("in_.aadhaar")),
    # No checksum exists: the format and its allowed prefixes (HMRC's rules).
    ("gb.nino", re.compile(r"(?<![\w])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
                           r"(?: ?\d{2}){3} ?[A-D](?![\w])", re.IGNORECASE), lambda value: True),
]


def _national_ids(text: str) -> Iterator[Found]:
    if sum(c.isdigit() for c in text) < 6:
        return
    for scheme, pattern, valid in _NATIONAL_IDS:
        for m in pattern.finditer(text):
            if _inside_digit_run(text, m.start(), m.end()):
                continue
            compact = re.sub(r"[\s.-]", "", m.group()).upper()
            try:
                ok = valid(compact)
            except Exception:  # a validator's own error on odd input: not an id
                ok = False
            if ok:
                yield Found(m.start(), m.end(), "national_id", f"{scheme}:{compact}")


def _inside_digit_run(text: str, start: int, end: int) -> bool:
    """Whether more digit groups continue the span on either side (``4343 9790 3157 6661``
    holds no 12-digit id: it is one 16-digit number)."""
    return bool(re.match(r"[ -]\d", text[end:end + 2])
                or re.search(r"\d[ -]$", text[max(0, start - 2):start]))


def _ip_addresses(text: str) -> Iterator[Found]:
    if "." in text:
        for m in _IPV4.finditer(text):
            try:
                address = ipaddress.ip_address(m.group())
            except ValueError:
                continue
            yield Found(m.start(), m.end(), "ip_address", address.compressed)
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            value = m.group()
            if not any(c in "0123456789abcdefABCDEF" for c in value):
                continue
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                continue
            yield Found(m.start(), m.end(), "ip_address", address.compressed)


def _phones(text: str, regions: tuple[str, ...]) -> Iterator[Found]:
    """Each region's national formats in turn (any region's with a ``+``); a later region only
    searches the text an earlier one left, and only while it holds enough digits for a number."""
    import phonenumbers

    for region in regions:
        if sum(c.isdigit() for c in text) < 7:
            return
        found = []
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            normal = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
            found.append(Found(match.start, match.end, "phone", normal))
        yield from found
        for f in found:  # masked, same length: the next region sees the rest at its positions
            text = text[:f.start] + " " * (f.end - f.start) + text[f.end:]
