"""The params of a DAG that works on the backfills' ledger (undo, erase, rekey): declared once,
with the backfill's own defaults."""

from __future__ import annotations

from typing import Any

from synap_backfill.common.config import CONN_ID, DEFAULT_KEY_CONN_ID, IDENTIFIER, BackfillConfig
from synap_backfill.common.params import param


def ledger_conn_param(description: str = "The backfills' ledger connection.") -> Any:
    return param(BackfillConfig.model_fields["postgres_conn_id"].default, title="Ledger connection",
                 check="non_empty", pattern=CONN_ID, description=description)


def ledger_schema_param() -> Any:
    return param(BackfillConfig.model_fields["ledger_schema"].default, title="Ledger schema",
                 check="identifier", pattern=IDENTIFIER, description="The backfills' ledger_schema.")


def person_key_param(description: str) -> Any:
    return param(DEFAULT_KEY_CONN_ID, title="Person key connection", check="non_empty",
                 pattern=CONN_ID, description=description)
