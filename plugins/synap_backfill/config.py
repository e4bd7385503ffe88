"""A backfill run's settings, validated from the DAG's params.

Validation happens in the first task, before anything reads or sends, and
every error names the param it is about. The result is a small dict that
travels to the other tasks through XCom (no secrets: connections are named,
not resolved, here). Three fields are not params: the first task resolves
them (``target``, ``source``, ``lookback``) and the others take them as given.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_BATCH_SIZE = 100  # what batch_create accepts per call
# Well below Airflow's default max_map_length (1024): room for the untimed
# partition and for an operator who lowers max_map_length a little.
MAX_PARTITIONS = 1000
MODES = ("long-range", "fast")
DOCUMENT_ID_FORMAT = "backfill:{conversation_id}:{message_index}"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ParamError(ValueError):
    """A param with a value the backfill cannot use; the message names it."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"param {param!r}: {problem}")
        self.param = param


@dataclass(frozen=True)
class SourceColumns:
    """Column names of the conversation table (the vendor recipe's defaults).

    ``customer_id`` may be empty: a source without customers (a B2C app).
    """

    user_id: str = "user_id"
    customer_id: str = "customer_id"
    conversation_id: str = "conversation_id"
    message_index: str = "message_index"
    user_text: str = "user_text"
    assistant_text: str = "assistant_text"
    created_at: str = "created_at"


@dataclass(frozen=True)
class BackfillConfig:
    """Everything a partition needs to know, validated."""

    synap_conn_id: str = "synap_default"
    postgres_conn_id: str = "postgres_default"
    source_table: str = "conversations"
    columns: SourceColumns = field(default_factory=SourceColumns)
    tiebreak_column: str = ""  # a column unique per row (e.g. the primary key); empty: none
    source_timezone: str = "UTC"
    start: datetime | None = None
    end: datetime | None = None
    window_size: str = "P1D"
    partition_timezone: str = "UTC"
    max_partitions: int = 500
    max_rows_per_partition: int = 100_000
    min_rows_per_partition: int = 20_000
    batch_size: int = MAX_BATCH_SIZE  # fewer calls against a per-request limit
    mode: str = "long-range"
    dry_run: bool = False
    max_document_chars: int = 100_000
    ledger_conn_id: str = ""  # empty: the source connection
    ledger_schema: str = "synap_backfill"
    restart_partitions: bool = False
    fetch_size: int = 1000
    sample_partitions: int = 0  # 0: all; else run that many, spread over the plan, and estimate
    max_rejected_share: float = 0.01  # the run fails when more of its rows are rejected
    # After the partitions: check extraction of this many accepted documents per
    # partition (0: do not check); waiting at most verify_timeout seconds.
    verify_sample: int = 20
    verify_timeout: int = 1800
    max_extraction_failed_share: float = 0.01  # the run fails when more of the sample failed
    require_approval: bool = False  # wait for a human to approve the plan before sending
    # Send every planned row even where the target holds it unchanged (an instance that
    # was wiped), or held under other document settings.
    resend_unchanged: bool = False
    # Resolved by the first task, not params: the Synap instance the connection opens (its
    # whoami instance_id; "" when unknown, a dry run without Synap), the source relation as
    # the database names it, and whether a scheduled run looks back for changed buckets.
    target: str = ""
    source: str = ""
    lookback: bool = False

    def document_settings(self) -> dict[str, Any]:
        """Everything that shapes a document: a bucket held under other settings is not unchanged."""
        return {"id_format": DOCUMENT_ID_FORMAT, "mode": self.mode,
                "columns": asdict(self.columns), "tiebreak_column": self.tiebreak_column,
                "source_timezone": self.source_timezone}

    @property
    def settings_digest(self) -> str:
        text = json.dumps(self.document_settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["start"] = self.start.isoformat() if self.start else None
        out["end"] = self.end.isoformat() if self.end else None
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "BackfillConfig":
        """Rebuild from ``to_dict()`` output (as it comes back from XCom)."""
        values = dict(raw)
        values["columns"] = SourceColumns(**values.get("columns", {}))
        for key in ("start", "end"):
            values[key] = datetime.fromisoformat(values[key]) if values.get(key) else None
        return cls(**values)


# Bounds of the whole-number params, shared with the trigger form's JSON schema.
LIMITS = {
    "max_partitions": (1, MAX_PARTITIONS),
    "max_rows_per_partition": (1, 100_000_000),
    "min_rows_per_partition": (1, 100_000_000),
    "batch_size": (1, MAX_BATCH_SIZE),
    "max_document_chars": (100, 10_000_000),
    "fetch_size": (1, 100_000),
    "sample_partitions": (0, MAX_PARTITIONS),
    "verify_sample": (0, 100_000_000),
    "verify_timeout": (10, 7 * 86_400),
}


def config_from_params(params: Mapping[str, Any]) -> BackfillConfig:
    """Validate the DAG's params; raise ParamError naming the first bad one.

    A missing param takes ``BackfillConfig``'s default, the same one the form shows.
    """
    defaults = BackfillConfig()

    def get(name: str, default: Any = None) -> Any:
        return params.get(name, getattr(defaults, name, default))

    def whole(name: str) -> int:
        return bounded_int(name, get(name), *LIMITS[name])
    columns = SourceColumns(**{
        f.name: identifier(f"{f.name}_column", get(f"{f.name}_column", f.default))
        for f in fields(SourceColumns) if f.name != "customer_id"
    }, customer_id=optional_identifier("customer_id_column",
                                       get("customer_id_column", SourceColumns.customer_id)))
    table = str(get("source_table") or "")
    parts = table.split(".")
    if len(parts) > 2:
        raise ParamError("source_table", "use TABLE or SCHEMA.TABLE")
    for part in parts:
        identifier("source_table", part)

    start = timestamp("start", get("start"))
    end = timestamp("end", get("end"))
    if start and end and end <= start:
        raise ParamError("end", "must be after start")
    if (start is None) != (end is None):
        raise ParamError("start" if start is None else "end",
                         "give both start and end, or neither to use the table's whole range")

    window_size = str(get("window_size") or "")
    window_duration(window_size)  # validates

    mode = get("mode")
    if mode not in MODES:
        raise ParamError("mode", f"must be one of {', '.join(MODES)}")

    return BackfillConfig(
        synap_conn_id=non_empty("synap_conn_id", get("synap_conn_id")),
        postgres_conn_id=non_empty("postgres_conn_id", get("postgres_conn_id")),
        source_table=table,
        columns=columns,
        tiebreak_column=optional_identifier("tiebreak_column", get("tiebreak_column")),
        source_timezone=zone("source_timezone", get("source_timezone")),
        start=start,
        end=end,
        window_size=window_size,
        partition_timezone=zone("partition_timezone", get("partition_timezone")),
        max_partitions=whole("max_partitions"),
        max_rows_per_partition=whole("max_rows_per_partition"),
        min_rows_per_partition=whole("min_rows_per_partition"),
        batch_size=whole("batch_size"),
        mode=mode,
        dry_run=boolean("dry_run", get("dry_run")),
        max_document_chars=whole("max_document_chars"),
        ledger_conn_id=str(get("ledger_conn_id") or "").strip(),
        ledger_schema=identifier("ledger_schema", get("ledger_schema")),
        restart_partitions=boolean("restart_partitions", get("restart_partitions")),
        fetch_size=whole("fetch_size"),
        sample_partitions=whole("sample_partitions"),
        max_rejected_share=share("max_rejected_share", get("max_rejected_share")),
        require_approval=boolean("require_approval", get("require_approval")),
        resend_unchanged=boolean("resend_unchanged", get("resend_unchanged")),
        verify_sample=whole("verify_sample"),
        verify_timeout=whole("verify_timeout"),
        max_extraction_failed_share=share("max_extraction_failed_share",
                                          get("max_extraction_failed_share")),
    )


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
