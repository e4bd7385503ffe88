"""The Synap connection's extras, each declared once in ``SynapExtras``.

From that one declaration come the Add Connection form's typed fields (the
provider info's ``conn-fields``), the save-time check (``connection_check.py``),
the hook's settings (``SynapHook.settings``, a ``SynapSettings``), the retry
policy's defaults, and the reference table in ``docs/``. A value the form
would refuse is refused the same way when it arrives another way (an
environment variable, a secrets backend, the Extra JSON box), with a message
naming the connection and the extra, never the value. Importing this module
imports nothing heavy: the providers manager reads it in the API server.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

DEFAULT_CONN_ID = "synap_default"  # SynapHook.default_conn_name, and the params' default
_KIND_NAMES = {int: "a whole number", float: "a number", str: "text"}


def extra(default: Any, *, label: str, description: str, minimum: float | None = None,
          off: float | None = None) -> Any:
    """One extra: ``minimum`` bounds it; ``off`` is a value below it that turns the feature off."""
    return Field(default, title=label, description=description,
                 json_schema_extra={"minimum": minimum, "off": off})


class SynapExtras(BaseModel):
    """A Synap connection's extras, typed, bounded and defaulted."""

    model_config = ConfigDict(frozen=True)

    requests_per_minute: float = extra(
        600, label="Requests per minute", minimum=1, off=0,
        description="Batch requests a minute that every partition sending to this target keeps "
                    "to together (the contract's per-instance limit is 600; 60 on the Free plan). "
                    "0 turns pacing off.")
    max_in_flight: int = extra(4, label="Batches in flight", minimum=1,
                               description="Batches one partition keeps on the wire at once.")
    timeout_seconds: float = extra(30, label="Request timeout (s)", minimum=1,
                                   description="Read timeout of one request.")
    max_attempts: int = extra(8, label="Attempts per batch", minimum=1,
                              description="Attempts per batch before a partition fails.")
    backoff_max: float = extra(60, label="Longest backoff (s)", minimum=0,
                               description="The longest pause between attempts.")
    max_wait: float = extra(
        600, label="Longest Retry-After wait (s)", minimum=0,
        description="The longest a 429's Retry-After is waited at once and held on the shared "
                    "pacing schedule.")
    not_ready_max_wait: float = extra(
        1800, label="Longest wait for a new instance (s)", minimum=0,
        description="The longest a new instance still being built (409 instance_not_ready) is "
                    "waited for, in all.")
    credits_metric: str = extra(
        "documents", label="Credits metric",
        description="The metric_type a credit estimate asks for, in units of documents sent (Synap "
                    "publishes no metric names; set the one your plan bills).")
    duplicate_pattern: str | None = extra(
        None, label="Duplicate pattern (regex)",
        description="A regular expression that marks a per-document failure as a duplicate "
                    "document_id (empty: the built-in pattern).")
    retry_pattern: str | None = extra(
        None, label="Retry pattern (regex)",
        description="A regular expression that marks a per-document failure as Synap's own "
                    "trouble (an internal error, a limit), not the row's: the turn is not held, "
                    "and the next run of its range sends it again (empty: the built-in pattern).")

    @classmethod
    def parse(cls, conn_id: str, stored: Mapping[str, Any]) -> "SynapExtras":
        """Every extra of a stored connection, checked; defaults where unset.

        Keys the form stores with Airflow's legacy prefix (``extra__synap__name``)
        are read too. Unknown keys are left alone, as Airflow's own hooks do.
        """
        values = {}
        for name, info in cls.model_fields.items():
            raw = stored.get(name, stored.get(f"extra__synap__{name}"))
            values[name] = _checked(conn_id, name, info, raw)
        return cls(**values)


class SynapSettings(SynapExtras):
    """The connection as a task uses it: its API base URL and key, and its extras."""

    base_url: str | None = None
    api_key: str = Field("", repr=False)  # never in a repr, a log line or an error


class InvalidExtra(ValueError):
    """A Synap connection's extra that cannot be used; the message names both, never the value."""

    def __init__(self, conn_id: str, name: str, label: str | None, problem: str) -> None:
        super().__init__(f"Synap connection {conn_id!r}: extra {name!r} ({label}) {problem}")
        self.conn_id, self.field_name = conn_id, name


def _checked(conn_id: str, name: str, info: FieldInfo, raw: Any) -> Any:
    """One extra's value from a stored connection; a bad one raises ``InvalidExtra``."""
    if raw is None or raw == "":
        return info.default
    kind = _kind(info)
    meta = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    minimum, off = meta.get("minimum"), meta.get("off")

    def refuse(problem: str) -> InvalidExtra:
        return InvalidExtra(conn_id, name, info.title, problem)

    if kind is str:
        if not isinstance(raw, str):
            raise refuse("must be text")
        if name in ("duplicate_pattern", "retry_pattern"):
            try:
                re.compile(raw)
            except re.error as exc:
                raise refuse(f"is not a valid regular expression ({exc.msg})") from None
        return raw
    if isinstance(raw, bool):
        raise refuse(f"must be {_KIND_NAMES[kind]}")
    try:
        value = kind(raw) if isinstance(raw, (int, float)) else kind(str(raw).strip())
    except ValueError:
        raise refuse(f"must be {_KIND_NAMES[kind]}") from None
    if kind is int and isinstance(raw, float) and raw != int(raw):
        raise refuse(f"must be {_KIND_NAMES[kind]}")
    if value != value or value in (float("inf"), float("-inf")):
        raise refuse(f"must be {_KIND_NAMES[kind]}")
    if minimum is not None and value < minimum and value != off:
        raise refuse(f"must be at least {minimum:g}" + (f", or {off:g} for off" if off is not None else ""))
    return value


def _kind(info: FieldInfo) -> type:
    kinds: dict[Any, type] = {int: int, float: float}
    return kinds.get(info.annotation, str)


def parse_extras(conn_id: str, stored: Mapping[str, Any]) -> dict[str, Any]:
    """Every extra of a stored connection as a dict, typed and checked (``SynapExtras.parse``)."""
    return SynapExtras.parse(conn_id, stored).model_dump()


def field_schema(info: FieldInfo) -> dict[str, Any]:
    """One extra as the JSON schema of an Airflow ``conn-fields`` entry."""
    json_type = {int: "integer", float: "number", str: "string"}[_kind(info)]
    schema: dict[str, Any] = {"type": [json_type, "null"]}
    if info.default is not None:
        schema["default"] = info.default
    meta = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if meta.get("minimum") is not None:
        schema["minimum"] = meta["off"] if meta.get("off") is not None else meta["minimum"]
    return schema


def conn_fields() -> dict[str, dict[str, Any]]:
    """The ``conn-fields`` of the provider info: one typed form field per extra."""
    return {name: {"label": info.title, "schema": field_schema(info), "description": info.description}
            for name, info in SynapExtras.model_fields.items()}
