"""A rekey's settings (``synap_rekey``): its params, each declared once. Light to import."""

from __future__ import annotations

from synap_backfill.common.config import CONN_ID, DEFAULT_KEY_CONN_ID, IDENTIFIER, BackfillConfig
from synap_backfill.common.params import ParamsModel, param


class RekeyConfig(ParamsModel):
    """The rekey's params: where the ledger is, and which connection holds the keys."""

    dry_run: bool = param(
        True, title="Dry run", check="boolean",
        description="Count what would be named anew under the current key, and change nothing. "
                    "On by default.")
    ledger_conn_id: str = param(
        BackfillConfig.model_fields["postgres_conn_id"].default, title="Ledger connection",
        check="non_empty", pattern=CONN_ID, description="The backfills' ledger connection.")
    ledger_schema: str = param(
        BackfillConfig.model_fields["ledger_schema"].default, title="Ledger schema",
        check="identifier", pattern=IDENTIFIER, description="The backfills' ledger_schema.")
    person_key_conn_id: str = param(
        DEFAULT_KEY_CONN_ID, title="Person key connection", check="non_empty", pattern=CONN_ID,
        description="The connection whose password is the current person key and whose extra "
                    "previous_passwords lists the keys before it.")
