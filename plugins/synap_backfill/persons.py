"""A person as the ledger names them: a keyed hash of their user id, never the id in clear.

An erasure (``synap_erase``) must find every document of one person, in every
target, also after their rows left the source; and every later backfill must
hold back that person's turns while they remain in the source. Both need to
recognise the person without the ledger keeping who they are: each held turn
carries ``HMAC-SHA256(key, user_id)`` (``held_turns.person``), and a
suppression is that hash and a date (``suppressions``).

The key is the password of an Airflow connection (``person_key_conn_id``,
default ``synap_person_key``; any type: generic is fine), masked by Airflow,
never a default: without it no person is recorded, and an erasure finds a
person's turns through the source alone. One key for every target, so that a
suppression holds for every region. Changing it makes earlier hashes
unrecognisable: keep it as long as the ledger.

``fences``: one row per holding (target and source). A partition reads the
suppressions for its batch and writes its batch's write-ahead mark in one
transaction that holds the row ``FOR SHARE``; an erasure records its
suppression in one that updates the row. Row locks, so the fence also holds
behind a transaction pooler (an advisory session lock would not). Either the
batch was marked first (the erasure then waits for its answer, and deletes
what it stored) or it sees the suppression and holds that person's turns back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any, Iterable

from .config import DEFAULT_KEY_CONN_ID
from .source import quote_identifier

log = logging.getLogger("synap_backfill")
__all__ = ["DEFAULT_KEY_CONN_ID", "PersonKey", "load_key", "require_key", "person_hash"]
HASH_CHARS = 32  # 128 bits of the HMAC, as hex


class PersonKeyMissing(RuntimeError):
    """The key connection is not there (or has no password)."""


def person_hash(key: bytes, user_id: str) -> str:
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:HASH_CHARS]


class PersonKey:
    """The key, kept out of ``repr`` and logs."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "PersonKey(<hidden>)"

    def of(self, user_id: str | None) -> str | None:
        return person_hash(self._key, user_id) if user_id else None


def load_key(conn_id: str) -> PersonKey | None:
    """The key from its Airflow connection; None when there is none."""
    from .connection_secret import password_of

    secret = password_of(conn_id)
    return PersonKey(secret) if secret else None


def require_key(conn_id: str) -> PersonKey:
    key = load_key(conn_id)
    if key is None:
        raise PersonKeyMissing(
            f"connection {conn_id!r} (param 'person_key_conn_id') is missing or has no password:"
            " it holds the secret key that names a person in the ledger by a keyed hash. Create"
            " it (any type; the password is the key, a long random string) and keep it")
    return key


def create_tables(cur: Any, s: str) -> None:
    """DDL (``s``: the quoted schema), for ``ledger.ensure_tables``."""
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.suppressions (
        person text PRIMARY KEY, recorded_at timestamptz NOT NULL DEFAULT now(),
        dag_id text NOT NULL, run_id text NOT NULL)""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.fences (
        holding int PRIMARY KEY, epoch bigint NOT NULL DEFAULT 0)""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.erasures (
        dag_id text NOT NULL, run_id text NOT NULL, person text NOT NULL, dry_run boolean NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz, summary text,
        PRIMARY KEY (dag_id, run_id))""")


def any_suppressions(conn: Any, schema: str) -> bool:
    with conn.cursor() as cur:
        cur.execute(f"SELECT EXISTS (SELECT 1 FROM {quote_identifier(schema)}.suppressions)")
        (found,) = cur.fetchone()
    conn.commit()
    return bool(found)


def suppressed_in(cur: Any, s: str, holding: int | None, persons: Iterable[str | None]) -> set[str]:
    """In the caller's transaction: take the holding's fence (shared), and which of ``persons``
    are suppressed. The caller writes its write-ahead mark before it commits."""
    wanted = sorted({p for p in persons if p})
    if holding is not None:
        cur.execute(f"SELECT epoch FROM {s}.fences WHERE holding = %s FOR SHARE", (holding,))
    if not wanted:
        return set()
    cur.execute(f"SELECT person FROM {s}.suppressions WHERE person = ANY(%s)", (wanted,))
    return {row[0] for row in cur.fetchall()}


def ensure_fence(conn: Any, schema: str, holding: int) -> None:
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {quote_identifier(schema)}.fences (holding) VALUES (%s)"
                    " ON CONFLICT DO NOTHING", (holding,))
    conn.commit()


def suppress(conn: Any, schema: str, person: str, holdings: Iterable[int], *, dag_id: str,
             run_id: str) -> None:
    """Record the suppression, moving every holding's fence in the same transaction: a batch
    marked before it is waited for (``erase.wait_for_batches``), any later one holds back."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        for holding in sorted(set(holdings)):
            cur.execute(f"INSERT INTO {s}.fences AS f (holding, epoch) VALUES (%s, 1)"
                        " ON CONFLICT (holding) DO UPDATE SET epoch = f.epoch + 1", (holding,))
        cur.execute(f"INSERT INTO {s}.suppressions (person, dag_id, run_id) VALUES (%s, %s, %s)"
                    " ON CONFLICT (person) DO NOTHING", (person, dag_id, run_id))
    conn.commit()
