"""DDL helpers every concern's ``create_tables`` uses (``ledger.ensure_tables`` runs them)."""

from __future__ import annotations

from typing import Any


def add_column(cur: Any, s: str, table: str, column: str, kind: str) -> None:
    """``ALTER TABLE ... ADD COLUMN`` only when the column is missing (``s``: the quoted schema):
    even ``ADD COLUMN IF NOT EXISTS`` takes an exclusive lock on the table."""
    cur.execute("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s"
                " AND NOT attisdropped", (f"{s}.{table}", column))
    if not cur.fetchone():
        cur.execute(f"ALTER TABLE {s}.{table} ADD COLUMN {column} {kind}")
