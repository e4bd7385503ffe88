"""A backfill run's settings: every param declared once, validated by the first task.

``BackfillConfig`` is the trigger form (``BackfillConfig.form()``), the
validation (``config_from_params``: every error names its param, never its
value), the defaults, and what travels to the other tasks through XCom (no
secrets: connections are named, not resolved, here). Three fields are not
params: the first task resolves them (``target``, ``source``, ``lookback``)
and the others take them as given. ``docs/reference.md`` is generated from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any, Literal, Mapping

from pydantic import model_validator

from synap_backfill.common.checks import ParamError
from synap_backfill.common.frame import FRAME, RECIPE_FRAME
from synap_backfill.common.grain import MessageGrain, grain_of
from synap_backfill.common.ids import DOCUMENT_ID_FORMAT
from synap_backfill.common.params import ParamsModel, param
from synap_provider.connection_fields import DEFAULT_CONN_ID

log = logging.getLogger("synap_backfill")
MAX_BATCH_SIZE = 100  # what batch_create accepts per call
# Well below Airflow's default max_map_length (1024): room for the untimed
# partition and for an operator who lowers max_map_length a little.
MAX_PARTITIONS = 1000
DEFAULT_KEY_CONN_ID = "synap_person_key"  # the person key's connection (identity/keys.py)
DEFAULT_TOKEN_KEY_CONN_ID = "synap_pii_token_key"  # pii_replacement token's key (redaction.py)
# Params renamed: the old name, in a run's conf, still sets the new one (and says so).
RENAMED_PARAMS = {"max_source_deletion_share": "max_source_change_share"}
PII_KINDS = ("email", "phone", "payment_card", "iban", "national_id", "ip_address")
# The document settings that say what redaction and the transform made of the texts.
# How the source's rows make turns, beyond the recipe's columns (declared only).
SHAPE_PARAMS = ("message_key_column", "created_at_format", "conversation_ids", "messages")
PRIVATE_SETTINGS = ("redact_pii", "pii_entities", "pii_replacement", "pii_phone_regions",
                    "pii_token_key", "document_transform")

# The form's patterns: the API server refuses a run whose conf breaks one (HTTP 400).
# ISO-8601 date-time: date, optional time (with optional fraction) and offset.
DATE_TIME = (r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?"
             r"(Z|[+-]\d{2}(:?\d{2})?)?$")
# ISO-8601 duration as the window size (P1D, PT6H, P1W, P1M, P1DT12H).
DURATION = r"^P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$"
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
OPTIONAL_IDENTIFIER = r"^([A-Za-z_][A-Za-z0-9_]{0,62})?$"
TABLE = r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$"
CONN_ID = r"^[A-Za-z0-9_.\-]{1,250}$"


@dataclass(frozen=True)
class SourceColumns:
    """Column names of the conversation table; ``customer_id`` empty: a source without customers."""

    user_id: str
    customer_id: str
    conversation_id: str
    message_index: str
    user_text: str
    assistant_text: str
    created_at: str


COLUMN_NAMES = tuple(f.name for f in fields(SourceColumns))


def _column(name: str) -> Any:
    return param(name, title=f"{name} column", section="Source", check="identifier",
                 description=f"Column holding the {name.replace('_', ' ')}.", pattern=IDENTIFIER)


class BackfillConfig(ParamsModel):
    """Everything a partition needs to know, validated. Defaults follow the vendor recipe."""

    start: datetime | None = param(
        None, title="Start (inclusive)", section="Range", check="timestamp",
        description="ISO-8601 date-time; the run covers [start, end). Leave start and end empty to "
                    "backfill the table's whole range (and its rows without a timestamp).",
        format="date-time", pattern=DATE_TIME)
    end: datetime | None = param(
        None, title="End (exclusive)", section="Range", check="timestamp",
        description="ISO-8601 date-time, after start. A date-time without an offset is UTC.",
        format="date-time", pattern=DATE_TIME)
    window_size: str = param(
        "P1D", title="Window size", section="Partitions", check="duration", pattern=DURATION,
        description="ISO-8601 duration of one partition. P1D is a calendar day in the partition "
                    "time zone (23 or 25 hours across DST), P1W Monday to Monday, P1M a calendar "
                    "month. A size with a time part is absolute and a whole number of 15 minutes "
                    "(the inventory's buckets): PT6H windows start at 00, 06, 12 and 18 UTC. "
                    "Months do not mix with days (P1M15D).")
    partition_timezone: str = param(
        "UTC", title="Partition time zone", section="Partitions", check="zone", minLength=1,
        description="IANA zone whose calendar the windows follow.")
    max_rows_per_partition: int = param(
        100_000, title="Max rows per partition", section="Partitions", check="whole",
        minimum=1, maximum=100_000_000,
        description="A busier window is split between the planner's buckets, so that no piece "
                    "holds more unless one bucket does.")
    min_rows_per_partition: int = param(
        20_000, title="Min rows per partition", section="Partitions", check="whole",
        minimum=1, maximum=100_000_000,
        description="Quiet neighbouring windows are joined up to this many rows (never past the "
                    "maximum), so a task's start-up and a partly filled last batch count for "
                    "little. 1: a partition per window.")
    max_partitions: int = param(
        500, title="Max partitions", section="Partitions", check="whole", minimum=1,
        maximum=MAX_PARTITIONS,
        description="Neighbouring windows are merged until the plan fits (Airflow maps at most 1024).")
    batch_size: int = param(
        MAX_BATCH_SIZE, title="Batch size", section="Sending", check="whole", minimum=1,
        maximum=MAX_BATCH_SIZE,
        description="Documents per batch_create call (Synap accepts 100). The recipe uses 50; "
                    "against a per-request rate limit, full batches carry twice the turns.")
    mode: Literal["long-range", "fast"] = param(
        "long-range", title="Mode", section="Sending", check="choice",
        values_display={"long-range": "long-range (full extraction: right for a backfill)",
                        "fast": "fast (skips most extraction: wrong for a backfill)"},
        description="long-range runs Synap's full extraction pipeline; fast skips most of it: "
                    "wrong for a backfill.")
    dry_run: bool = param(
        False, title="Dry run", section="Sending", check="boolean",
        description="Read, build and count documents without sending any; the summary shows "
                    "them as not sent.")
    sample_partitions: int = param(
        0, title="Sample partitions", section="Sending", check="whole", minimum=0,
        maximum=MAX_PARTITIONS,
        description="Send only this many partitions, spread over the range, and estimate the "
                    "whole table's wall-clock time in the summary. 0: all.")
    max_rejected_share: float = param(
        0.01, title="Max rejected share", section="Sending", check="share", minimum=0, maximum=1,
        description="The run fails (and announces nothing) when a larger share of its rows is "
                    "rejected: dirty rows are normal, a wholesale refusal is not. 0.01: 1%; 1: never.")
    require_approval: bool = param(
        False, title="Require approval", section="Sending", check="boolean",
        description="Stop after planning until someone approves the plan (rows, partitions, "
                    "range, time, credits) under Required Actions; rejecting sends nothing.")
    verify_sample: int = param(
        20, title="Verify sample", section="Verify", check="whole", minimum=0, maximum=100_000_000,
        description="After the partitions, wait for Synap's extraction of this many accepted "
                    "documents per partition (deferred: no worker slot is held). 0: no check; a "
                    "partition's row count or more: all of them.")
    verify_timeout: int = param(
        1800, title="Verify timeout (s)", section="Verify", check="whole", minimum=10,
        maximum=7 * 86_400,
        description="How long to wait for extraction; documents still queued or processing then "
                    "are reported as such.")
    max_extraction_failed_share: float = param(
        0.01, title="Max extraction failed share", section="Verify", check="share", minimum=0,
        maximum=1, description="The run fails when a larger share of the checked documents "
                               "failed extraction. 0.01: 1%; 1: never.")
    max_document_chars: int = param(
        100_000, title="Max document characters", section="Sending", check="whole", minimum=100,
        maximum=10_000_000,
        description="A longer turn is rejected with a reason (Synap publishes no limit).")
    resend_unchanged: bool = param(
        False, title="Resend unchanged", section="Sending", check="boolean",
        description="Send every row of the range, also what the Synap instance already holds "
                    "unchanged (or holds under other document settings): for an instance that "
                    "was wiped. Held rows come back as duplicates.")
    apply_source_changes: Literal["report", "apply"] = param(
        "report", title="Source changes", section="Sending", check="choice",
        values_display={"report": "report (count edited and deleted turns; change nothing)",
                        "apply": "apply (replace edited turns, forget deleted ones)"},
        description="What to do with turns the Synap instance holds that were edited or deleted "
                    "in the source since they were sent. report: count them, per bucket, and "
                    "leave Synap as it is. apply: delete the memories of each one's held document; "
                    "an edited turn is then sent again, with its current text, under a new "
                    "document id. Found only inside buckets that changed.")
    max_source_change_share: float = param(
        0.05, title="Max source change share", section="Sending", check="share", minimum=0,
        maximum=1,
        description="With apply_source_changes apply, the run stops before deleting anything when "
                    "the held turns whose memories it would delete (edited, deleted, or emptied "
                    "in the source) are more than this share of the turns the instance holds of "
                    "the source: a truncated table, a blanked column or a back-filled id must not "
                    "wipe an instance. 0.05: 5%; 1: never. Its old name, max_source_deletion_share, "
                    "still works.")
    accept_lost_ranges: bool = param(
        False, title="Accept lost ranges", section="Sending", check="boolean",
        description="With apply_source_changes apply, the run stops, naming the range, when more "
                    "than a day of buckets the instance holds is entirely gone from the source (a "
                    "detached partition, a view's new WHERE). Set this for the one run that "
                    "applies such a removal on purpose.")
    extraction_wait: int = param(
        600, title="Extraction wait (s)", section="Sending", check="whole", minimum=0,
        maximum=86_400,
        description="How long apply_source_changes waits for a held document still being "
                    "extracted before it reads its memories. One not done by then stays pending: "
                    "its bucket is not held as read, and the next run applies it.")
    redact_pii: bool = param(
        False, title="Redact personal data", section="Personal data", check="boolean",
        description="Replace each email address, phone number, payment card, IBAN, national id "
                    "and IP address found in a turn's texts (pii_entities) by a placeholder "
                    "(<EMAIL>, <PHONE>) before it is sent. Counted by kind; a redacted turn is "
                    "still sent. What each kind catches and misses: docs/operating.md.")
    pii_entities: list[str] = param(
        list(PII_KINDS), title="Personal data kinds", section="Personal data", check="choices",
        examples=list(PII_KINDS),
        description="What redact_pii looks for: email, phone (libphonenumber), payment_card "
                    "(Luhn), iban (mod 97), national_id (US SSN, CA SIN, BR CPF, ES DNI/NIE, "
                    "FR NIR, IT codice fiscale, DE IdNr, IN Aadhaar, UK NINO), ip_address.")
    pii_replacement: Literal["placeholder", "token"] = param(
        "placeholder", title="Replacement", section="Personal data", check="choice",
        values_display={"placeholder": "placeholder (<EMAIL>: every value looks the same)",
                        "token": "token (<EMAIL_3f2a9c41d07e>: one per value, keyed)"},
        description="token: the placeholder carries a keyed hash of the value, the same for the "
                    "same value in every turn and run of one Synap instance, so Synap can tell "
                    "two addresses apart without seeing either. Its key is the password of "
                    "pii_token_key_conn_id.")
    pii_phone_regions: list[str] = param(
        ["US"], title="Phone regions", section="Personal data", check="phone_regions",
        description="ISO 3166 regions whose national phone formats are looked for (a number "
                    "written with its +country code is found whatever its region). One per line.")
    pii_token_key_conn_id: str = param(
        DEFAULT_TOKEN_KEY_CONN_ID, title="Token key connection", section="Connections",
        check="non_empty", pattern=CONN_ID,
        description="Airflow connection whose password keys the tokens of pii_replacement "
                    "token. No default key: the run stops in preflight without it.")
    document_transform: str | None = param(
        None, title="Document transform", section="Personal data", check="dotted_path",
        description="Dotted path of a callable of your project (my_project.transforms.clean), "
                    "called with each turn (synap_backfill.privacy.turns.Turn) after redaction; it "
                    "returns the turn, changed, or None to leave it out (rejected: dropped by "
                    "document_transform). Imported in preflight.")
    restart_partitions: bool = param(
        False, title="Restart partitions", section="Sending", check="boolean",
        description="Ignore checkpoints and start every partition from its first row. Documents "
                    "this run had sent before still count as its own when they come back as "
                    "duplicates.")
    synap_conn_id: str = param(
        DEFAULT_CONN_ID, title="Synap connection", section="Connections", check="non_empty",
        pattern=CONN_ID, description="The Synap connection (type synap) to send to.")
    postgres_conn_id: str = param(
        "postgres_default", title="Postgres connection", section="Connections", check="non_empty",
        pattern=CONN_ID, description="The Postgres connection holding the source table.")
    ledger_conn_id: str | None = param(
        None, title="Ledger connection", section="Connections", check="optional_text",
        pattern=CONN_ID,
        description="Postgres for checkpoints, sent marks, source copies, rejected rows, "
                    "ingestion ids and the inventory; empty: the source connection.")
    person_key_conn_id: str = param(
        DEFAULT_KEY_CONN_ID, title="Person key connection", section="Connections",
        check="non_empty", pattern=CONN_ID,
        description="Airflow connection whose password is the secret key that names a person in "
                    "the ledger by a keyed hash, never their id: what synap_erase finds a person's "
                    "documents by, and what holds an erased person's turns back. Without it no "
                    "person is recorded; once anyone was erased, backfills need it.")
    ledger_schema: str = param(
        "synap_backfill", title="Ledger schema", section="Connections", check="identifier",
        pattern=IDENTIFIER, description="Schema of the checkpoints, rejected_rows and pacing "
                                        "tables (created if missing).")
    source_table: str = param(
        "conversations", title="Source table", section="Source", check="table", pattern=TABLE,
        description="TABLE or SCHEMA.TABLE: any relation that can be SELECTed (table, view, "
                    "materialized view, partitioned or foreign table); plain identifiers, case "
                    "kept, quoted in SQL.")
    source_query: str | None = param(
        None, title="Source query", section="Source", check="select_query",
        description="Declared only: one read-only SELECT (a join of your tables, say) read "
                    "instead of a table; source_table then names its result (the inventory is "
                    "kept under that name). Its columns are the mapped ones. A window's range "
                    "filter on created_at reaches the base table's index through it, as long as "
                    "the query has no LIMIT, DISTINCT or aggregate over the rows.")
    user_id_column: str = _column("user_id")
    customer_id_column: str | None = param(
        "customer_id", title="customer_id column", section="Source", check="optional_identifier",
        pattern=OPTIONAL_IDENTIFIER,
        description="Column holding the customer id; empty when the source has none (a B2C app). "
                    "Never sent to a B2C instance.")
    conversation_id_column: str = _column("conversation_id")
    message_index_column: str = _column("message_index")
    user_text_column: str = _column("user_text")
    assistant_text_column: str = _column("assistant_text")
    created_at_column: str = _column("created_at")
    tiebreak_column: str | None = param(
        None, title="Tiebreak column", section="Source", check="optional_identifier",
        pattern=OPTIONAL_IDENTIFIER,
        description="A column unique per row (the primary key, say) that orders rows sharing a "
                    "timestamp, conversation and index. Empty: such rows are copies of one turn; "
                    "the first is sent.")
    # Declared only, each (docs/operating.md, "Your app's schema").
    message_key_column: str | None = param(
        None, title="Message key column", section="Source", check="optional_identifier",
        pattern=OPTIONAL_IDENTIFIER, description="A key of any type, unique per message (or "
        "turn row): names the turn instead of message_index_column. Required with messages.")
    created_at_format: Literal["timestamp", "epoch_seconds", "epoch_milliseconds", "iso8601"] = param(
        "timestamp", title="created_at format", section="Source", check="choice",
        description="A timestamp or date, epoch seconds or milliseconds, or ISO-8601 text in UTC.")
    conversation_ids: Literal["uuid", "any"] = param(
        "uuid", title="Conversation ids", section="Source", check="choice", description="uuid: "
        "any other id is rejected (the recipe). any: sent as its uuid3 (common.ids).")
    messages: dict[str, Any] | None = param(
        None, title="Messages", section="Source", check="mapping", description="One row per "
        "message: role_column (role_path), user_roles, assistant_roles, text_column (text_path), "
        "filter, reply_within_seconds.")
    fetch_size: int = param(
        1000, title="Fetch size", section="Source", check="whole", minimum=1, maximum=100_000,
        description="Rows per round trip of the server-side cursor.")
    source_statement_timeout: int = param(
        3600, title="Source statement timeout (s)", section="Source", check="whole", minimum=1,
        maximum=7 * 86_400,
        description="A statement against the source running longer is cancelled. Every source "
                    "read runs in a READ ONLY transaction: a replica's read-only role is enough.")
    source_timezone: str = param(
        "UTC", title="Source time zone", section="Source", check="zone", minLength=1,
        description="IANA zone in which to read a timestamp without time zone column.")

    # Resolved by the first task, not params: the Synap instance the connection opens (its
    # whoami instance_id; "" when unknown, a dry run without Synap), the source relation as
    # the database names it, and whether a scheduled run looks back for changed buckets.
    target: str = ""
    source: str = ""
    lookback: bool = False
    # pii_replacement token: the key's id (pii.key_id), never the key: other keys, other tokens.
    pii_key_id: str = ""
    # The instance's user_context_isolation as whoami reported it (None: not reported).
    isolation: str | None = None

    @model_validator(mode="after")
    def _range(self) -> "BackfillConfig":
        start, end = self.start, self.end
        if start and end and end <= start:
            raise ParamError("end", "must be after start")
        if (start is None) != (end is None):
            raise ParamError("start" if start is None else "end",
                             "give both start and end, or neither to use the table's whole range")
        return self

    @model_validator(mode="after")
    def _grain(self) -> "BackfillConfig":
        grain = grain_of(self.messages)  # checked whole here: a ParamError names its key
        if grain is not None and grain.to_dict() != self.messages:
            object.__setattr__(self, "messages", grain.to_dict())  # as checked, for the digest
        if self.messages and not self.message_key_column:
            raise ParamError("message_key_column", "required with messages: the column (any type)"
                                                   " that identifies a message")
        return self

    @property
    def grain(self) -> MessageGrain | None:
        """The message table's shape, or None for a table of the recipe's (one row per turn)."""
        return grain_of(self.messages)

    @property
    def columns(self) -> SourceColumns:
        return SourceColumns(**{name: getattr(self, f"{name}_column") or "" for name in COLUMN_NAMES})

    def document_settings(self) -> dict[str, Any]:
        """Everything that shapes a document: a bucket held under other settings is not unchanged.

        Redaction, the transform and a frame other than the recipe's join only when set, so
        instances held before they existed keep their digest.
        """
        settings: dict[str, Any] = {
            "id_format": DOCUMENT_ID_FORMAT, "mode": self.mode, "columns": asdict(self.columns),
            "tiebreak_column": self.tiebreak_column, "source_timezone": self.source_timezone}
        if self.redact_pii:
            settings.update(redact_pii=True, pii_entities=self.pii_entities,
                            pii_replacement=self.pii_replacement,
                            pii_phone_regions=self.pii_phone_regions)
            if self.pii_replacement == "token":
                settings["pii_token_key"] = self.pii_key_id
        if self.document_transform:
            settings["document_transform"] = self.document_transform
        for name in SHAPE_PARAMS:  # what a turn is: each joins only when it is not the recipe's
            if getattr(self, name) != type(self).model_fields[name].default:
                settings[name] = getattr(self, name)
        if self.source_query:  # which rows are turns: joins only when set
            settings["source_query"] = self.source_query
        if FRAME != RECIPE_FRAME:  # the frame joins only when it is not the recipe's
            settings["frame"] = FRAME
        return settings

    @property
    def settings_digest(self) -> str:
        text = json.dumps(self.document_settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_from_params(params: Mapping[str, Any]) -> BackfillConfig:
    """Validate the DAG's params; raise ParamError naming the first bad one.

    A missing param takes its declared default, the same one the form shows. A renamed
    param's old name (``RENAMED_PARAMS``) sets its new one.
    """
    params = dict(params)
    for old, new in RENAMED_PARAMS.items():
        if params.get(old) is not None:
            log.warning("param %r is now called %r; using the value given under its old name", old,
                        new)
            params[new] = params.pop(old)
    config: BackfillConfig = BackfillConfig.from_params(params)
    return config
