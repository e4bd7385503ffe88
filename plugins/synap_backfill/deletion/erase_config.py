"""An erasure's settings: its params, each declared once.

Light to import (the DAG file builds its trigger form from ``EraseConfig``).
What crosses XCom is ``ErasePlan``: the person as keyed hashes, never an id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import model_validator

from synap_backfill.common.checks import ParamError
from synap_backfill.common.ledger_params import ledger_conn_param, ledger_schema_param, person_key_param
from synap_backfill.common.params import ParamsModel, param

_KEY_HASHES = r"[0-9a-f]{12}:[0-9a-f]{32}:([0-9a-f]{32}|-):[0-9a-f]{32}"
if TYPE_CHECKING:
    from synap_backfill.deletion.person import PersonRef

PERSON_TOKEN = rf"^({_KEY_HASHES}(;{_KEY_HASHES})*)?$"  # person.PersonRef.token(), or empty


class EraseConfig(ParamsModel):
    """The erasure's params. ``user_id`` (when given) is read from the params by the tasks that
    need it, and never written to XCom, a log or the ledger; ``person`` names the person by
    hashes only (the Synap page's Erase form), so no id in clear is kept anywhere."""

    user_id: str | None = param(
        None, title="User id", check="optional_text",
        description="The person to erase, as the source's user id column holds it (trimmed; case "
                    "matters). Every document of theirs that any backfill, replay or resend made, "
                    "in every Synap instance the ledger knows, loses its memories, and their turns "
                    "are never sent again while they remain in the source. Kept out of logs, XCom "
                    "and the ledger, but Airflow keeps a run's conf: the Synap page's Erase form "
                    "sends person instead.")
    customer_id: str | None = param(
        None, title="Customer id", check="optional_text",
        description="Their customer id. On a B2B instance a person is a customer's user: needed "
                    "for every B2B instance that holds the user id (the run refuses without it, "
                    "naming under how many customers it is held), and for "
                    "include_live_memories.")
    person: str | None = param(
        None, title="Person", check="optional_text", pattern=PERSON_TOKEN,
        description="The person as keyed hashes, instead of user_id and customer_id: what the "
                    "Synap page's Erase form triggers with, so the id never reaches Airflow's "
                    "metadata.")
    dry_run: bool = param(
        True, title="Dry run", check="boolean",
        description="Count their documents and memories in every instance, and delete nothing. "
                    "On by default.")
    include_live_memories: bool = param(
        False, title="Include live memories", check="boolean",
        description="Also ask each instance to delete everything it holds about the user "
                    "(data.delete, scope user), including what the live app wrote, not only what "
                    "backfills sent. Needs the user id in clear: given, or found in the source.")
    require_approval: bool = param(
        False, title="Require approval", check="boolean",
        description="Show the counts under Required Actions and erase only once someone approves.")
    extraction_wait: int = param(
        600, title="Extraction wait (s)", check="whole", minimum=0, maximum=86_400,
        description="How long a document still being extracted is waited for before its memories "
                    "are read. One still being extracted then stays pending, and the erasure ends "
                    "incomplete: run it again later.")
    ledger_conn_id: str = ledger_conn_param()
    ledger_schema: str = ledger_schema_param()
    person_key_conn_id: str = person_key_param(
        "The connection whose password is the key the backfills name persons with (their "
        "person_key_conn_id).")

    @model_validator(mode="after")
    def _one_person(self) -> "EraseConfig":
        if bool(self.user_id) == bool(self.person):
            raise ParamError("user_id", "give the user_id of the person to erase, or person (as the"
                                        " Synap page's Erase form does), not both")
        if self.person and self.customer_id:
            raise ParamError("customer_id", "a person token names the customer already")
        return self


class ErasePlan(ParamsModel):
    """What the erasure's tasks pass on: the person as hashes and the settings, no id in clear."""

    person: str  # person.PersonRef.token()
    dry_run: bool
    include_live_memories: bool
    require_approval: bool
    extraction_wait: int
    ledger_conn_id: str
    ledger_schema: str
    person_key_conn_id: str

    @property
    def ref(self) -> "PersonRef":
        from synap_backfill.deletion.person import PersonRef

        return PersonRef.from_token(self.person)

    @property
    def who(self) -> str:
        """How logs name the person: a prefix of a hash."""
        return self.ref.who
