"""A rekey's settings (``synap_rekey``): its params, each declared once. Light to import."""

from __future__ import annotations

from synap_backfill.common.ledger_params import ledger_conn_param, ledger_schema_param, person_key_param
from synap_backfill.common.params import ParamsModel, param


class RekeyConfig(ParamsModel):
    """The rekey's params: where the ledger is, and which connection holds the keys."""

    dry_run: bool = param(
        True, title="Dry run", check="boolean",
        description="Count what would be named anew under the current key, and change nothing. "
                    "On by default.")
    ledger_conn_id: str = ledger_conn_param()
    ledger_schema: str = ledger_schema_param()
    person_key_conn_id: str = person_key_param(
        "The connection whose password is the current person key and whose extra "
        "previous_passwords lists the keys before it.")
