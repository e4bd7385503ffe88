"""What each Synap target holds turn by turn: the ledger's ``held_turns`` table.

The inventory knows a target's holdings per 15-minute bucket, which is enough
to skip what did not change. Following the source (an edited turn replaced, a
deleted turn forgotten, one person erased) needs to know, per turn, which
document the target holds for it, with which content, and under which
ingestion id its memories can be found. One row per turn a target accepted:

* ``turn``: ``conversation_id:message_index``, the source's key of the turn;
* ``bucket``: the inventory bucket it was read in (a changed bucket's turns are
  found by it, never by a scan of the whole table);
* ``content``: the row's content hash (``extract.source_sql.SourceSQL.content_hash``) as sent;
  NULL where the version Synap holds is not known (a duplicate answer for a
  document sent by a run from before this table);
* ``document_id`` (with its generation, ``...:u1``) and ``ingestion_id`` (NULL
  when its answer was lost: its memories cannot be looked up);
* ``person``: a keyed hash of who the document's person is (``identity/keys.py``:
  the user id on a B2C instance, the customer and user ids on a B2B one),
  never an id, so an erasure finds a person's documents even after their rows
  left the source; ``user_hash``, for a pair, the user id's alone (how many
  customers hold it); ``person_key``, the id of the key that made both (NULL:
  recorded before ledger version 4, the user id alone, under the key
  ``person_keys`` marks legacy).

Written in the transaction of the checkpoint that accounts for the turn
(``Ledger.save``), so it never says more or less than the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from synap_backfill.common.db import add_column, quote_identifier


@dataclass(frozen=True)
class HeldTurn:
    """A turn as a target holds it (no text: its content as a hash)."""

    turn: str
    bucket: int
    content: int | None
    document_id: str
    ingestion_id: str | None


@dataclass(frozen=True)
class TurnWrite:
    """What a checkpoint records of one document: accepted (``ingestion_id`` known or not), or
    answered as a duplicate of earlier work (``earlier``: only recorded when the turn is not
    known yet, with its content unknown)."""

    turn: str
    bucket: int
    content: int
    document_id: str
    ingestion_id: str | None
    person: str | None = None
    earlier: bool = False
    user_hash: str | None = None
    person_key: str | None = None


def create_tables(cur: Any, s: str) -> None:
    """DDL (``s``: the quoted schema), for ``schema.ensure_tables``."""
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.held_turns (
        holding int NOT NULL, turn text NOT NULL, bucket int NOT NULL, content bigint,
        document_id text NOT NULL, ingestion_id uuid, person text, run int NOT NULL,
        PRIMARY KEY (holding, turn))""")
    cur.execute(f"CREATE INDEX IF NOT EXISTS held_turns_bucket ON {s}.held_turns (holding, bucket)")
    cur.execute(f"CREATE INDEX IF NOT EXISTS held_turns_person ON {s}.held_turns (person)"
                " WHERE person IS NOT NULL")
    # Version 4: who the person is follows the instance; the key that named them.
    add_column(cur, s, "held_turns", "user_hash", "text")
    add_column(cur, s, "held_turns", "person_key", "text")
    cur.execute(f"CREATE INDEX IF NOT EXISTS held_turns_user ON {s}.held_turns (user_hash)"
                " WHERE user_hash IS NOT NULL")


_COLUMNS = ("holding, turn, bucket, content, document_id, ingestion_id, person, user_hash,"
            " person_key, run")
_UNNEST = ("SELECT %s::int, t.*, %s::int FROM unnest(%s::text[], %s::int[], %s::bigint[],"
           " %s::text[], %s::uuid[], %s::text[], %s::text[], %s::text[]) AS t")


def write_turns(cur: Any, s: str, holding: int, run: int, turns: Iterable[TurnWrite]) -> None:
    """Record the documents a checkpoint accounts for (inside the caller's transaction)."""
    accepted = [t for t in turns if not t.earlier]
    earlier = [t for t in turns if t.earlier]
    for rows, conflict in (
            (accepted, " ON CONFLICT (holding, turn) DO UPDATE SET bucket = EXCLUDED.bucket,"
                       " content = EXCLUDED.content, document_id = EXCLUDED.document_id,"
                       # An answer lost and sent again: the id of the first answer, if the same document.
                       " ingestion_id = CASE WHEN held_turns.document_id = EXCLUDED.document_id"
                       " THEN COALESCE(EXCLUDED.ingestion_id, held_turns.ingestion_id)"
                       " ELSE EXCLUDED.ingestion_id END,"
                       " person = COALESCE(EXCLUDED.person, held_turns.person),"
                       " user_hash = CASE WHEN EXCLUDED.person IS NULL THEN held_turns.user_hash"
                       " ELSE EXCLUDED.user_hash END,"
                       " person_key = CASE WHEN EXCLUDED.person IS NULL THEN held_turns.person_key"
                       " ELSE EXCLUDED.person_key END, run = EXCLUDED.run"),
            (earlier, " ON CONFLICT (holding, turn) DO NOTHING")):
        if not rows:
            continue
        unknown = rows is earlier  # a duplicate of earlier work: which version is held is unknown
        cur.execute(
            f"INSERT INTO {s}.held_turns ({_COLUMNS}) {_UNNEST}{conflict}",
            (holding, run, [t.turn for t in rows], [t.bucket for t in rows],
             [None if unknown else t.content for t in rows], [t.document_id for t in rows],
             [t.ingestion_id for t in rows], [t.person for t in rows],
             [t.user_hash for t in rows], [t.person_key for t in rows]))


def held_turns(conn: Any, schema_quoted: str, holding: int, turns: list[str]) -> dict[str, HeldTurn]:
    """Of ``turns``, those the holding holds (in the caller's connection; commits)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT turn, bucket, content, document_id, ingestion_id::text"
                    f" FROM {schema_quoted}.held_turns WHERE holding = %s AND turn = ANY(%s)",
                    (holding, turns))
        found = {row[0]: HeldTurn(*row) for row in cur.fetchall()}
    conn.commit()
    return found


def forget_turns(cur: Any, s: str, holding: int, turns: Iterable[str]) -> None:
    """The target no longer holds these turns (their memories were deleted), in the caller's
    transaction: a later run sends them as new, under their next generation."""
    turns = list(turns)
    if turns:
        cur.execute(f"DELETE FROM {s}.held_turns WHERE holding = %s AND turn = ANY(%s)",
                    (holding, turns))


def held_turn_count(conn: Any, schema: str, holding: int | None) -> int:
    """How many turns the holding holds (what a share of deleted turns is taken of)."""
    if holding is None:
        return 0
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {quote_identifier(schema)}.held_turns WHERE holding = %s",
                    (holding,))
        (n,) = cur.fetchone()
    conn.commit()
    return int(n)
