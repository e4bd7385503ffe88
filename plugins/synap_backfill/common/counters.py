"""Counters declared once: a report's fields say how each is kept, and the rest is derived.

A report (``PartitionReport``, ``UndoReport``) declares each count with ``counter(...)``:
how the run's total takes it (``add``), its key in the XCom form (``xcom``), its rounding
there (``digits``) and whether a resumed attempt takes it back from the checkpoint
(``resumed``: the attempt's own work, not what the plan set). Its XCom form, its totals and
its resume are then one loop each here, so a new counter is one line in its report, and
a counter missed in one of them cannot happen.

Fields declared without ``counter`` (a label, a window's bounds) name the report: they go to
XCom as they are and are never added up or resumed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import MISSING, Field, field, fields
from typing import Any, Iterable, Literal, Mapping, TypeVar

R = TypeVar("R")
Add = Literal["sum", "max", "min", "tally", "any"] | None

_META = "synap_counter"


def counter(default: Any = 0, *, add: Add = "sum", xcom: str | None = None,
            digits: int | None = None, resumed: bool = True) -> Any:
    """A dataclass field that is a count. ``add``: ``sum``, ``max`` or ``min`` of the
    partitions' values; ``tally``, a ``Counter`` by reason (the default is then an empty
    one); ``any``, a flag any partition sets; None, not totalled."""
    meta = {_META: {"add": add, "xcom": xcom, "digits": digits, "resumed": resumed}}
    if add == "tally":
        return field(default_factory=Counter, metadata=meta)
    return field(default=default, metadata=meta)


def _declared(cls_or_obj: Any) -> list[tuple[Field[Any], dict[str, Any]]]:
    return [(f, f.metadata.get(_META) or {}) for f in fields(cls_or_obj)]


def to_xcom(report: Any) -> dict[str, Any]:
    """Every field under its XCom key; tallies as plain dicts, floats rounded as declared."""
    out: dict[str, Any] = {}
    for f, spec in _declared(report):
        value = getattr(report, f.name)
        if spec.get("add") == "tally":
            value = dict(value)
        elif spec.get("digits") is not None and value is not None:
            value = round(value, spec["digits"])
        out[spec.get("xcom") or f.name] = value
    return out


def from_xcom(cls: type[R], raw: Mapping[str, Any]) -> R:
    """The report of an XCom dict; keys it does not declare are ignored, missing counts are
    their defaults (an older report lacks the newer counters)."""
    values: dict[str, Any] = {}
    for f, spec in _declared(cls):
        key = spec.get("xcom") or f.name
        if key not in raw:
            if f.default is MISSING and f.default_factory is MISSING:  # an identity field
                values[f.name] = None
            continue
        value = raw[key]
        values[f.name] = Counter(value or {}) if spec.get("add") == "tally" else value
    return cls(**values)


def add_up(total: R, reports: Iterable[Any]) -> R:
    """``total`` (a fresh report naming the total) with every report's counts added in."""
    specs = [(f.name, spec["add"]) for f, spec in _declared(total) if spec.get("add")]
    for report in reports:
        for name, add in specs:
            mine, theirs = getattr(total, name), getattr(report, name)
            if add == "tally":
                mine.update(theirs)
            elif theirs is None:
                continue
            elif add == "sum":
                setattr(total, name, mine + theirs)
            elif add == "any":
                setattr(total, name, bool(mine or theirs))
            elif mine is None:
                setattr(total, name, theirs)
            else:
                setattr(total, name, max(mine, theirs) if add == "max" else min(mine, theirs))
    return total


def resume(report: Any, earlier: Any) -> None:
    """Take back into ``report`` the counts of an earlier attempt's checkpoint."""
    for f, spec in _declared(report):
        if spec.get("resumed"):
            value = getattr(earlier, f.name)
            setattr(report, f.name, Counter(value) if spec.get("add") == "tally" else value)
