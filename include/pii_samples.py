"""A labelled corpus of personal values and look-alikes, for the redaction tests and the bench.

Every value is generated valid (checksums computed with python-stdnum, phone
numbers checked with libphonenumber) and written the way people type them, in
several national formats, inside chat-like sentences. Decoys are what must
survive: dates, times, amounts, versions, ZIP codes, UUIDs, and numbers that
look like cards but fail Luhn. Deterministic: the same seed gives the same
corpus, so a measured rate is reproducible.
"""

from __future__ import annotations

import random
import string
import uuid
from dataclasses import dataclass, field

PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "BR", "IN", "AU", "JP")
# The regions a redaction run is told about (pii_phone_regions): their national formats are
# found; a number of any other region is found when written with its +country code.
TOLD_REGIONS = ("US", "GB", "DE", "FR")


@dataclass(frozen=True)
class Sample:
    """One turn's text, the personal values in it (kind, value as written), its decoys."""

    user_text: str
    assistant_text: str
    values: list[tuple[str, str]] = field(default_factory=list)
    decoys: list[str] = field(default_factory=list)
    label: str = ""  # which format, for the docs' table


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    from stdnum import luhn

    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return body + luhn.calc_check_digit(body)


def cards(rng: random.Random) -> list[tuple[str, str]]:
    """(format label, card number as written)."""
    out = []
    for label, prefix, length in (("visa", "4", 16), ("mastercard", "5" + rng.choice("12345"), 16),
                                  ("mastercard 2-series", "22" + str(rng.randint(21, 99)), 16),
                                  ("amex", rng.choice(("34", "37")), 15), ("discover", "6011", 16)):
        digits = _luhn_complete(rng, prefix, length)
        if length == 15:
            spaced = f"{digits[:4]} {digits[4:10]} {digits[10:]}"
        else:
            spaced = " ".join(digits[i:i + 4] for i in range(0, 16, 4))
        out += [(f"{label}, spaced", spaced), (f"{label}, dashed", spaced.replace(" ", "-")),
                (f"{label}, plain", digits)]
    return out


def ibans(rng: random.Random) -> list[tuple[str, str]]:
    from stdnum import iban

    shapes = {"DE": "8n10n", "GB": "4a6n8n", "FR": "5n5n11c2n", "ES": "4n4n1n1n10n", "NL": "4a10n",
              "IT": "1a5n5n12c", "BE": "3n7n2n", "CH": "5n12c"}
    out = []
    for country, shape in shapes.items():
        while True:
            bban = ""
            for part in _parts(shape):
                count, kind = int(part[:-1]), part[-1]
                pool = {"n": string.digits, "a": string.ascii_uppercase,
                        "c": string.digits}[kind]
                bban += "".join(rng.choice(pool) for _ in range(count))
            number = country + iban.calc_check_digits(country + "00" + bban) + bban
            if iban.is_valid(number):
                break
        out += [(f"{country}, grouped", iban.format(number)), (f"{country}, compact", number)]
    return out


def _parts(shape: str) -> list[str]:
    parts, current = [], ""
    for ch in shape:
        current += ch
        if ch.isalpha():
            parts.append(current)
            current = ""
    return parts


def _valid(rng: random.Random, make, module) -> str:
    while True:
        value = make()
        if module.is_valid(value):
            return value


def national_ids(rng: random.Random) -> list[tuple[str, str]]:
    from stdnum import luhn, verhoeff
    from stdnum.br import cpf
    from stdnum.de import idnr
    from stdnum.es import dni, nie
    from stdnum.fr import nir
    from stdnum.it import codicefiscale
    from stdnum.us import ssn

    def digits(n: int, first: str = string.digits) -> str:
        return rng.choice(first) + "".join(rng.choice(string.digits) for _ in range(n - 1))

    ssn_value = _valid(rng, lambda: f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-"
                                    f"{rng.randint(1, 9999):04d}", ssn)
    sin_body = digits(8, "1234567")
    sin = sin_body + luhn.calc_check_digit(sin_body)
    cpf_value = _valid(rng, lambda: digits(11), cpf)
    dni_body = digits(8)
    nie_body = rng.choice("XYZ") + digits(7)
    nir_body = (rng.choice("12") + f"{rng.randint(50, 99):02d}{rng.randint(1, 12):02d}"
                f"{rng.randint(1, 95):02d}{rng.randint(1, 990):03d}{rng.randint(1, 999):03d}")
    cf_body = ("".join(rng.choice(string.ascii_uppercase) for _ in range(6))
               + f"{rng.randint(40, 99):02d}" + rng.choice("ABCDEHLMPRST")
               + f"{rng.randint(1, 28):02d}" + rng.choice("ABCDEFGHILM") + f"{rng.randint(1, 999):03d}")
    idnr_value = _valid(rng, lambda: digits(11, "123456789"), idnr)
    aadhaar_body = digits(11, "23456789")
    aadhaar = aadhaar_body + verhoeff.calc_check_digit(aadhaar_body)
    prefix = "BG"
    while prefix in ("BG", "GB", "NK", "KN", "TN", "NT", "ZZ"):  # HMRC never issues these
        prefix = rng.choice("ABCEHJKLMNPRSTWXY") + rng.choice("ABCEGHJKLMNPRSTWXYZ")
    nino = prefix + digits(6) + rng.choice("ABCD")
    return [
        ("US SSN, dashed", ssn_value), ("US SSN, spaced", ssn_value.replace("-", " ")),
        ("CA SIN, spaced", f"{sin[:3]} {sin[3:6]} {sin[6:]}"),
        ("BR CPF", cpf.format(cpf_value)),
        ("ES DNI", dni_body + dni.calc_check_digit(dni_body)),
        ("ES NIE", nie_body + nie.calc_check_digit(nie_body)),
        ("FR NIR", nir.format(nir_body + nir.calc_check_digits(nir_body))),
        ("IT codice fiscale", cf_body + codicefiscale.calc_check_digit(cf_body)),
        ("DE IdNr", idnr.format(idnr_value)),
        ("IN Aadhaar", f"{aadhaar[:4]} {aadhaar[4:8]} {aadhaar[8:]}"),
        ("GB NINO", f"{nino[:2]} {nino[2:4]} {nino[4:6]} {nino[6:8]} {nino[8]}"),
    ]


def phones(rng: random.Random) -> list[tuple[str, str]]:
    import phonenumbers
    from phonenumbers import PhoneNumberFormat as F
    from phonenumbers import PhoneNumberType as T

    out = []
    for region in PHONE_REGIONS:
        for kind in (T.MOBILE, T.FIXED_LINE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            national = phonenumbers.national_significant_number(example)
            number = example
            for _ in range(200):  # another number of the same range: the example's last digits
                tail = "".join(rng.choice(string.digits) for _ in range(3))
                candidate = phonenumbers.parse(f"+{example.country_code}{national[:-3]}{tail}")
                if phonenumbers.is_valid_number(candidate):
                    number = candidate
                    break
            label = f"{region} {'mobile' if kind == T.MOBILE else 'landline'}"
            out.append((f"{label}, international", phonenumbers.format_number(number, F.INTERNATIONAL)))
            out.append((f"{label}, E.164", phonenumbers.format_number(number, F.E164)))
            if region in TOLD_REGIONS:
                out.append((f"{label}, national", phonenumbers.format_number(number, F.NATIONAL)))
    out.append(("US, dotted", "415.555.%04d" % rng.randint(100, 9999)))
    out.append(("US, dashed", "212-555-%04d" % rng.randint(100, 9999)))
    return out


def untold_phones(rng: random.Random) -> list[tuple[str, str]]:
    """National formats of regions the run is not told about: what redaction misses."""
    import phonenumbers
    from phonenumbers import PhoneNumberFormat as F

    out = []
    for region in PHONE_REGIONS:
        if region in TOLD_REGIONS:
            continue
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        if example is not None:
            out.append((f"{region} mobile, national (region not in pii_phone_regions)",
                        phonenumbers.format_number(example, F.NATIONAL)))
    return out


def emails(rng: random.Random) -> list[tuple[str, str]]:
    first = rng.choice(["maria", "jean", "olu", "wei", "anna", "sam"])
    last = rng.choice(["lopez", "dupont", "adeyemi", "zhang", "schmidt", "o.brien"])
    n = rng.randint(1, 999)
    return [("plain", f"{first}.{last}@example.com"), ("plus tag", f"{first}+support{n}@mail.example.org"),
            ("subdomain, country TLD", f"{first}_{last}{n}@eu.example.co.uk"),
            ("upper case", f"{first.upper()}@EXAMPLE.NET"),
            ("accented local part", f"jos\u00e9.{last}@example.es"),
            ("digits and dash", f"{n}-{first}@example-mail.io")]


def ips(rng: random.Random) -> list[tuple[str, str]]:
    return [("IPv4 public", f"{rng.randint(11, 99)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
                            f"{rng.randint(1, 254)}"),
            ("IPv4 private", f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}"),
            ("IPv6 compressed", f"2001:db8::{rng.randint(1, 0xffff):x}"),
            ("IPv6 full", ":".join(f"{rng.randint(0, 0xffff):04x}" for _ in range(8))),
            ("IPv6 link-local", f"fe80::{rng.randint(1, 0xffff):x}:{rng.randint(1, 0xffff):x}")]


def decoys(rng: random.Random) -> list[tuple[str, str]]:
    """(label, text that must survive redaction)."""
    from stdnum import luhn

    while True:  # looks like a Visa card, fails Luhn: an order number
        order = "4" + "".join(rng.choice(string.digits) for _ in range(15))
        if not luhn.is_valid(order):
            break
    day, month, year = rng.randint(10, 28), rng.randint(10, 12), rng.randint(2019, 2025)
    return [
        ("order number failing Luhn, spaced", " ".join(order[i:i + 4] for i in range(0, 16, 4))),
        ("order number failing Luhn, plain", order),
        ("ISO date", f"{year}-{month:02d}-{day:02d}"), ("US date", f"{month:02d}/{day:02d}/{year}"),
        ("European date", f"{day:02d}.{month:02d}.{year}"),
        ("time", f"{rng.randint(10, 23)}:{rng.randint(10, 59)}"),
        ("time with seconds", f"{rng.randint(10, 23)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}"),
        ("date and time", f"{year}-{month:02d}-{day:02d} {rng.randint(10, 23)}:{rng.randint(10, 59)}"),
        ("amount, dollars", f"${rng.randint(1, 99)},{rng.randint(100, 999)}.{rng.randint(10, 99)}"),
        ("amount, euros", f"{rng.randint(1, 99)}.{rng.randint(100, 999)},{rng.randint(10, 99)} EUR"),
        ("amount, large", f"{rng.randint(1, 9)} {rng.randint(100, 999)} {rng.randint(100, 999)}"
                          f",{rng.randint(10, 99)}"),
        ("version", f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 30)}"),
        ("version with v", f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 30)}"),
        ("US ZIP", f"{rng.randint(10000, 99999)}"), ("US ZIP+4", f"{rng.randint(10000, 99999)}-"
                                                              f"{rng.randint(1000, 9999)}"),
        ("UK postcode", "SW1A 1AA"), ("French postcode", f"750{rng.randint(10, 20)}"),
        ("UUID", str(uuid.UUID(int=rng.getrandbits(128), version=4))),
        ("ticket number", f"#{rng.randint(100000, 999999)}"),
        ("quantity", f"{rng.randint(2, 50)} x {rng.randint(100, 999)} g"),
    ]


_TEMPLATES = [
    "Hi, my {what} is {value}, can you check my account?",
    "Sure - it's {value}. Thanks!",
    "You can reach me at {value} after 6pm.",
    "{value} is the one on file, I think.",
    "Please update it to {value} (the old one is gone).",
]
_DECOY_TEMPLATES = ["My order from {decoy} still has not arrived.", "It said {decoy} on the screen.",
                    "Reference: {decoy}.", "{decoy} broke it for me, since {decoy2}."]
_WHAT = {"email": "email", "phone": "number", "payment_card": "card", "iban": "IBAN",
         "national_id": "id number", "ip_address": "IP"}


def corpus(seed: int = 26, rounds: int = 20) -> list[Sample]:
    """Labelled samples: each value of every kind and format ``rounds`` times, each in a sentence
    with a decoy in the assistant's answer, and decoy-only turns."""
    rng = random.Random(seed)
    out: list[Sample] = []
    for _ in range(rounds):
        values = ([("email", *v) for v in emails(rng)] + [("phone", *v) for v in phones(rng)]
                  + [("payment_card", *v) for v in cards(rng)] + [("iban", *v) for v in ibans(rng)]
                  + [("national_id", *v) for v in national_ids(rng)]
                  + [("ip_address", *v) for v in ips(rng)])
        lookalikes = decoys(rng)
        for kind, label, value in values:
            decoy = rng.choice(lookalikes)[1]
            user = rng.choice(_TEMPLATES).format(what=_WHAT[kind], value=value)
            assistant = f"Thanks, noted. Your case from {decoy} is open."
            out.append(Sample(user, assistant, [(kind, value)], [decoy], f"{kind}: {label}"))
        for label, decoy in lookalikes:
            other = rng.choice(lookalikes)[1]
            template = rng.choice(_DECOY_TEMPLATES)
            text = template.format(decoy=decoy, decoy2=other)
            shown = [decoy, other] if "{decoy2}" in template else [decoy]
            out.append(Sample(text, "Let me look into that.", [], shown, f"decoy: {label}"))
    return out


def untold(seed: int = 26) -> list[Sample]:
    """Phone numbers in national formats of regions the run was not told about."""
    rng = random.Random(seed)
    return [Sample(f"Call me on {value} please.", "Will do.", [("phone", value)], [], f"phone: {label}")
            for label, value in untold_phones(rng)]
