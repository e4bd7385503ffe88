"""An erasure's settings: its params, each declared once.

Light to import (the DAG file builds its trigger form from ``EraseConfig``).
What crosses XCom is ``ErasePlan``: the person as a keyed hash, never the id.
"""

from __future__ import annotations

from .config import CONN_ID, DEFAULT_KEY_CONN_ID, IDENTIFIER, BackfillConfig
from .params import ParamsModel, param


class EraseConfig(ParamsModel):
    """The erasure's params. ``user_id`` is read from the params by the tasks that need it, and
    never written to XCom, a log or the ledger."""

    user_id: str = param(
        "", title="User id", check="non_empty", required=True, minLength=1,
        description="The person to erase, as the source's user id column holds it. Every "
                    "document of theirs that any backfill, replay or resend made, in every Synap "
                    "instance the ledger knows, loses its memories, and their turns are never sent "
                    "again while they remain in the source. Kept out of logs, XCom and the ledger.")
    customer_id: str | None = param(
        None, title="Customer id", check="optional_text",
        description="Their customer id, for include_live_memories on a B2B instance.")
    dry_run: bool = param(
        True, title="Dry run", check="boolean",
        description="Count their documents and memories in every instance, and delete nothing. "
                    "On by default.")
    include_live_memories: bool = param(
        False, title="Include live memories", check="boolean",
        description="Also ask each instance to delete everything it holds about the user "
                    "(data.delete, scope user), including what the live app wrote, not only what "
                    "backfills sent.")
    require_approval: bool = param(
        False, title="Require approval", check="boolean",
        description="Show the counts under Required Actions and erase only once someone approves.")
    extraction_wait: int = param(
        600, title="Extraction wait (s)", check="whole", minimum=0, maximum=86_400,
        description="How long a document still being extracted is waited for before its memories "
                    "are read.")
    ledger_conn_id: str = param(
        BackfillConfig.model_fields["postgres_conn_id"].default, title="Ledger connection",
        check="non_empty", pattern=CONN_ID, description="The backfills' ledger connection.")
    ledger_schema: str = param(
        BackfillConfig.model_fields["ledger_schema"].default, title="Ledger schema",
        check="identifier", pattern=IDENTIFIER, description="The backfills' ledger_schema.")
    person_key_conn_id: str = param(
        DEFAULT_KEY_CONN_ID, title="Person key connection", check="non_empty", pattern=CONN_ID,
        description="The connection whose password is the key the backfills name persons with "
                    "(their person_key_conn_id).")


class ErasePlan(ParamsModel):
    """What the erasure's tasks pass on: the person's hash and the settings, no id in clear."""

    person: str
    dry_run: bool
    include_live_memories: bool
    require_approval: bool
    extraction_wait: int
    ledger_conn_id: str
    ledger_schema: str

    @property
    def who(self) -> str:
        """How logs name the person: a prefix of the hash."""
        return f"person {self.person[:12]}…"
