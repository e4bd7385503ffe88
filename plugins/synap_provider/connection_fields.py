"""The Synap connection's extras: one typed spec each, for the UI form and for the hook.

The provider info turns each spec into a ``conn-fields`` entry (the JSON schema
the Add Connection form renders and checks), and the hook parses a stored
connection's extras with the same specs, so a value the form would refuse is
refused the same way when it arrives another way (an environment variable, a
secrets backend, the Extra JSON box), with a message naming the connection
and the extra. Importing this module imports nothing heavy: the providers
manager reads it in the API server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class ExtraField:
    """One extra of a Synap connection."""

    name: str
    label: str
    kind: type  # int, float or str
    default: Any
    description: str
    minimum: float | None = None
    off: float | None = None  # a value below ``minimum`` that is allowed: it turns the feature off

    def schema(self) -> dict[str, Any]:
        """This field as the JSON schema of an Airflow ``conn-fields`` entry."""
        json_type = {int: "integer", float: "number", str: "string"}[self.kind]
        schema: dict[str, Any] = {"type": [json_type, "null"]}
        if self.default is not None:
            schema["default"] = self.default
        if self.minimum is not None:
            schema["minimum"] = self.off if self.off is not None else self.minimum
        return schema

    def parse(self, conn_id: str, raw: Any) -> Any:
        """The extra's value from a stored connection; a bad one raises, naming both."""
        if raw is None or raw == "":
            return self.default
        if self.kind is str:
            if not isinstance(raw, str):
                raise InvalidExtra(conn_id, self, "must be text")
            if self.name == "duplicate_pattern":
                try:
                    re.compile(raw)
                except re.error as exc:
                    raise InvalidExtra(conn_id, self,
                                       f"is not a valid regular expression ({exc.msg})") from None
            return raw
        if isinstance(raw, bool):
            raise InvalidExtra(conn_id, self, f"must be {self.kind_name}")
        try:
            value = self.kind(raw) if isinstance(raw, (int, float)) else self.kind(str(raw).strip())
        except ValueError:
            raise InvalidExtra(conn_id, self, f"must be {self.kind_name}") from None
        if self.kind is int and isinstance(raw, float) and raw != int(raw):
            raise InvalidExtra(conn_id, self, f"must be {self.kind_name}")
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidExtra(conn_id, self, f"must be {self.kind_name}")
        if self.minimum is not None and value < self.minimum and value != self.off:
            raise InvalidExtra(conn_id, self, f"must be at least {self.minimum:g}"
                               + (f", or {self.off:g} for off" if self.off is not None else ""))
        return value

    @property
    def kind_name(self) -> str:
        return {int: "a whole number", float: "a number", str: "text"}[self.kind]


class InvalidExtra(ValueError):
    """A Synap connection's extra that cannot be used; the message names both, never the value."""

    def __init__(self, conn_id: str, field: ExtraField, problem: str) -> None:
        super().__init__(f"Synap connection {conn_id!r}: extra {field.name!r} ({field.label}) {problem}")
        self.conn_id, self.field_name = conn_id, field.name


EXTRA_FIELDS: tuple[ExtraField, ...] = (
    ExtraField("requests_per_minute", "Requests per minute", float, 600,
               "Batch requests a minute that every partition sending to this target keeps to "
               "together (the contract's per-instance limit is 600; 60 on the Free plan). "
               "0 turns pacing off.", minimum=1, off=0),
    ExtraField("max_in_flight", "Batches in flight", int, 4,
               "Batches one partition keeps on the wire at once.", minimum=1),
    ExtraField("timeout_seconds", "Request timeout (s)", float, 30,
               "Read timeout of one request.", minimum=1),
    ExtraField("max_attempts", "Attempts per batch", int, 8,
               "Attempts per batch before a partition fails.", minimum=1),
    ExtraField("backoff_max", "Longest backoff (s)", float, 60,
               "The longest pause between attempts.", minimum=0),
    ExtraField("max_wait", "Longest Retry-After wait (s)", float, 600,
               "The longest a 429's Retry-After is waited at once and held on the shared "
               "pacing schedule.", minimum=0),
    ExtraField("not_ready_max_wait", "Longest wait for a new instance (s)", float, 1800,
               "The longest a new instance still being built (409 instance_not_ready) is "
               "waited for, in all.", minimum=0),
    ExtraField("credits_metric", "Credits metric", str, "documents",
               "The metric_type a credit estimate asks for, in units of documents sent (Synap "
               "publishes no metric names; set the one your plan bills)."),
    ExtraField("duplicate_pattern", "Duplicate pattern (regex)", str, None,
               "A regular expression that marks a per-document failure as a duplicate "
               "document_id (empty: the built-in pattern)."),
)
FIELDS_BY_NAME = {f.name: f for f in EXTRA_FIELDS}


def parse_extras(conn_id: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Every extra of a stored connection, typed and checked; defaults where unset.

    Keys the form stores with Airflow's legacy prefix (``extra__synap__name``)
    are read too. Unknown keys are left alone, as Airflow's own hooks do.
    """
    values: dict[str, Any] = {}
    for field in EXTRA_FIELDS:
        raw = extra.get(field.name, extra.get(f"extra__synap__{field.name}"))
        values[field.name] = field.parse(conn_id, raw)
    return values


def conn_fields() -> dict[str, dict[str, Any]]:
    """The ``conn-fields`` of the provider info: one typed form field per extra."""
    return {f.name: {"label": f.label, "schema": f.schema(), "description": f.description}
            for f in EXTRA_FIELDS}
