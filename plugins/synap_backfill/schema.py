"""The ledger's tables, every concern's, created or upgraded in order, once per run.

Each concern keeps its DDL beside its code (a ``create_tables(cur, schema)``); this module
lists them, in the order their tables refer to each other, and runs them under one lock.
It sits above the concerns: none of them imports it, and the shared store
(``store.ledger``) knows none of the others' tables.
"""

from __future__ import annotations

from typing import Any

from synap_backfill.common.db import LOCK_NOT_AVAILABLE, quote_identifier, sqlstate
from synap_backfill.deletion import erase, undo_ledger
from synap_backfill.delivery import pacing
from synap_backfill.extract import copies
from synap_backfill.holdings import changes, held_turns, inventory
from synap_backfill.identity import keys
from synap_backfill.store import ledger

# Bump when a concern's DDL changes: the next run's preflight applies it, once.
LEDGER_VERSION = 4
DDL_LOCK_TIMEOUT = "10s"  # the longest the ledger's DDL waits for a lock before it gives up
# In order: a later one's DDL may read an earlier one's tables (person keys read held_turns).
CREATE_TABLES = (ledger.create_tables, copies.create_tables, pacing.create_tables,
                 inventory.create_tables, held_turns.create_tables, changes.create_tables,
                 keys.create_tables, erase.create_tables, undo_ledger.create_tables)


class LedgerBusy(RuntimeError):
    """The ledger's DDL could not take its locks within ``DDL_LOCK_TIMEOUT``."""


def ensure_tables(conn: Any, schema: str) -> None:
    """Create or upgrade the ledger's schema and tables; nothing at all when they are current.

    Called once per run (the first task's preflight), never at a partition's start:
    DDL takes locks that one session idle in a transaction on a ledger table holds up,
    and every partition would queue behind it. When ``ledger_version`` says the tables
    are current this only reads the catalog and checks the checkpoints are writable.
    Otherwise the DDL runs under ``lock_timeout`` (``LedgerBusy`` names the wait) and
    an advisory lock, so runs starting together do not race on ``CREATE``.
    """
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute("SET client_encoding TO 'UTF8'")
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{s}.ledger_version",))
        if cur.fetchone()[0]:
            cur.execute(f"SELECT coalesce(max(version), 0) FROM {s}.ledger_version")
            (version,) = cur.fetchone()
            if version >= LEDGER_VERSION:
                cur.execute("SELECT has_table_privilege(%s, 'INSERT, UPDATE, DELETE')",
                            (f"{s}.checkpoints",))
                (writable,) = cur.fetchone()
                conn.commit()
                if not writable:
                    raise PermissionError(f"no INSERT, UPDATE or DELETE on {s}.checkpoints")
                return
        cur.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
        try:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('synap_backfill_ledger'))")
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            for create in CREATE_TABLES:
                create(cur, s)
            cur.execute(f"CREATE TABLE IF NOT EXISTS {s}.ledger_version (version integer PRIMARY"
                        " KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            cur.execute(f"INSERT INTO {s}.ledger_version (version) VALUES (%s) ON CONFLICT DO"
                        " NOTHING", (LEDGER_VERSION,))
        except Exception as exc:
            if sqlstate(exc) == LOCK_NOT_AVAILABLE:
                conn.rollback()
                raise LedgerBusy(
                    f"the ledger's tables in schema {s} are locked by another session: their"
                    f" DDL waited {DDL_LOCK_TIMEOUT} and gave up. Look in pg_stat_activity for a"
                    " session idle in transaction on them, end it, and trigger again") from None
            raise
    conn.commit()
