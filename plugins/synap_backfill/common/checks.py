"""The rules a param's value must keep; each error names the param, never the value.

``CHECKS`` maps a rule's name (as ``params.param(check=...)`` gives it) to a
function ``(param, value, declaration) -> value``, the value as the run uses it.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Callable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ParamError(ValueError):
    """A param with a value the backfill cannot use; the message names it."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"param {param!r}: {problem}")
        self.param = param


def identifier(param: str, value: Any) -> str:
    """A plain SQL identifier; anything else is refused before a query runs."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value) or len(value) > 63:
        shown = repr(value)[:40]
        raise ParamError(param, f"{shown} is not a plain SQL identifier "
                                "(letters, digits and _; not starting with a digit; at most 63)")
    return value


def optional_identifier(param: str, value: Any) -> str:
    """A plain SQL identifier, or empty (None or "") for a column the source does not have."""
    return "" if value in (None, "") else identifier(param, value)


def share(param: str, value: Any) -> float:
    """A fraction from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ParamError(param, "must be a number from 0 to 1")
    try:
        number = float(value)
    except ValueError:
        raise ParamError(param, "must be a number from 0 to 1") from None
    if not 0 <= number <= 1:
        raise ParamError(param, f"must be from 0 to 1, got {number}")
    return number


def timestamp(param: str, value: Any) -> datetime | None:
    """An ISO-8601 date-time; one without an offset is read as UTC."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            raise ParamError(param, "is not an ISO-8601 date-time "
                                    "(e.g. 2024-03-01T00:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def window_duration(value: str) -> Any:
    """An ISO-8601 duration (``P1D``, ``PT6H``, ``P1W``, ``P1M``) as a pendulum Duration."""
    import pendulum

    try:
        duration = pendulum.parse(value) if value.startswith("P") else None
    except Exception:  # pendulum raises several types for bad input
        duration = None
    if not isinstance(duration, pendulum.Duration) or duration.total_seconds() < 60:
        raise ParamError("window_size", f"{value[:20]!r} is not an ISO-8601 duration of at "
                                        "least a minute (e.g. P1D, PT6H, P1W)")
    if (duration.years or duration.months) and (duration.weeks or duration.remaining_days
                                                or duration.hours or duration.minutes
                                                or duration.remaining_seconds):
        raise ParamError("window_size", f"{value[:20]!r} mixes months or years with days or"
                                        " hours: use one or the other (P1M, P45D)")
    if "T" in value and duration.total_seconds() % 900:
        # Windows are made of the inventory's 15-minute buckets (buckets.py).
        raise ParamError("window_size", f"{value[:20]!r} is not a whole number of 15 minutes"
                                        " (PT15M, PT6H, P1DT12H)")
    return duration


def zone(param: str, value: Any) -> str:
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ParamError(param, f"{str(value)[:40]!r} is not an IANA time zone"
                                " (e.g. UTC, Europe/Berlin)") from None
    return str(value)


def bounded_int(param: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ParamError(param, f"must be a whole number from {low} to {high}")
    try:
        number = int(value)
    except ValueError:
        raise ParamError(param, f"must be a whole number from {low} to {high}") from None
    if not low <= number <= high:
        raise ParamError(param, f"must be from {low} to {high}, got {number}")
    return number


def boolean(param: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParamError(param, "must be true or false")
    return value


def non_empty(param: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParamError(param, "must not be empty")
    return value.strip()


def table(param: str, value: Any) -> str:
    """TABLE or SCHEMA.TABLE, each part a plain identifier."""
    text = str(value or "")
    parts = text.split(".")
    if len(parts) > 2:
        raise ParamError(param, "use TABLE or SCHEMA.TABLE")
    for part in parts:
        identifier(param, part)
    return text


def one_of(param: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ParamError(param, f"must be one of {', '.join(allowed)}")
    return str(value)


def _bounds(meta: Mapping[str, Any]) -> tuple[int, int]:
    return int(meta["minimum"]), int(meta["maximum"])


CHECKS: dict[str, Callable[[str, Any, Mapping[str, Any]], Any]] = {
    "whole": lambda p, v, m: bounded_int(p, v, *_bounds(m)),
    "share": lambda p, v, m: share(p, v),
    "boolean": lambda p, v, m: boolean(p, v),
    "identifier": lambda p, v, m: identifier(p, v),
    "optional_identifier": lambda p, v, m: optional_identifier(p, v),
    "table": lambda p, v, m: table(p, v),
    "zone": lambda p, v, m: zone(p, v),
    "timestamp": lambda p, v, m: timestamp(p, v),
    "duration": lambda p, v, m: duration(p, v),
    "non_empty": lambda p, v, m: non_empty(p, v),
    "optional_text": lambda p, v, m: str(v or "").strip(),
    "choice": lambda p, v, m: one_of(p, v, tuple(m["enum"])),
    "run_id": lambda p, v, m: run_id(p, v),
    "choices": lambda p, v, m: choices(p, v, tuple(m["form"]["examples"])),
    "phone_regions": lambda p, v, m: phone_regions(p, v),
    "dotted_path": lambda p, v, m: dotted_path(p, v),
    "select_query": lambda p, v, m: select_query(p, v),
    "mapping": lambda p, v, m: mapping(p, v),
}


def mapping(param: str, value: Any) -> dict[str, Any] | None:
    """A mapping (its keys checked by the model that reads it), or empty for none."""
    if value in (None, "", {}):
        return None
    if not isinstance(value, Mapping):
        raise ParamError(param, "must be a mapping of keys to values")
    return dict(value)


def _items(param: str, value: Any) -> list[str]:
    """A list param's items: a JSON list, or one string of items split by commas or spaces."""
    if isinstance(value, str):
        value = [part for part in re.split(r"[,\s]+", value) if part]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ParamError(param, "must be a list of names")
    return [v.strip() for v in value if v.strip()]


def choices(param: str, value: Any, allowed: tuple[str, ...]) -> list[str]:
    """Some of ``allowed``, in their declared order, each once."""
    items = _items(param, value)
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise ParamError(param, f"{unknown[0][:30]!r} is not one of {', '.join(allowed)}")
    if not items:
        raise ParamError(param, f"name at least one of {', '.join(allowed)}")
    return [v for v in allowed if v in items]


def phone_regions(param: str, value: Any) -> list[str]:
    """ISO 3166 region codes libphonenumber knows, upper-cased, each once."""
    import phonenumbers

    items = [v.upper() for v in _items(param, value)]
    for region in items:
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ParamError(param, f"{region[:8]!r} is not a region libphonenumber knows (ISO 3166"
                                    " alpha-2: US, GB, DE)")
    return list(dict.fromkeys(items))


_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*([.:][A-Za-z_][A-Za-z0-9_]*)$")


def dotted_path(param: str, value: Any) -> str:
    """``package.module.callable`` (or ``package.module:callable``), or empty for none."""
    text = str(value or "").strip()
    if text and not _DOTTED.match(text):
        raise ParamError(param, f"{text[:60]!r} is not a dotted path to a callable"
                                " (my_project.transforms.clean_turn)")
    return text


_SELECT = re.compile(r"^\s*(SELECT|WITH)\b", re.IGNORECASE)


def select_query(param: str, value: Any) -> str | None:
    """One SELECT (or WITH ... SELECT) statement, or empty for none. It runs read-only anyway;
    this refuses a second statement and anything that is not a query, before it is sent."""
    text = str(value or "").strip().rstrip(";").strip()
    if not text:
        return None
    if not _SELECT.match(text) or ";" in text:
        raise ParamError(param, "must be one SELECT statement (or WITH ... SELECT), without ';'")
    if "%" in text:  # the statements around it carry parameters
        raise ParamError(param, "must not contain '%': write chr(37) for a percent sign, or"
                                " mod(a, b) for the operator")
    return text


def duration(param: str, value: Any) -> str:
    """An ISO-8601 duration, kept as written (``window_duration`` checks it)."""
    text = str(value or "")
    window_duration(text)
    return text


def run_id(param: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParamError(param, "name the run to undo (its run id, as the Airflow UI shows it)")
    return value.strip()
