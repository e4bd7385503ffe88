"""Erasing one person: every document of theirs in every target the ledger knows, and no other's.

A person is named by keyed hashes (``identity/keys.py``), under every key of the
keyring: ``PersonRef``, which is all that crosses XCom (the Synap page's
"Erase a user" form makes one in the API server, so no id in clear reaches
Airflow's metadata). Who the person is follows each target: a B2C instance's
person is the user id, a B2B instance's the (customer, user) pair; without a
customer id, a B2B instance that holds the user id is refused (guessing the
customer could erase someone else).

Their documents in a target are the held turns recorded under their hashes,
and the held turns of their rows still in the target's source (for turns sent
before the key existed, or recorded before ledger version 4 under the user id
alone). The source is found by hashes too (``find_in_source``): one aggregate
pass over its (user, customer) pairs, the ids kept in the task's memory only.

Each target is reached through the Synap connection its last run used; each
document's memories are deleted through the undo engine (``deletion.undo.undo_partition``:
status, then delete each memory, paced, write-ahead, resumable), and a
document is forgotten from ``held_turns`` in the checkpoint that finishes it,
never before: one not reached (still being extracted, unknown to Synap, no
ingestion id) stays held and pending, and the erasure ends incomplete until a
rerun (or ``include_live_memories``) finishes it.

Before any delete, the suppression is recorded under every holding's fence,
and every batch marked before it is waited for (``wait_for_batches``),
however long it has been held back: either a batch holds the person's turns
back, or its answer is in ``held_turns`` when the targets are read again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

from synap_backfill.common.db import as_text, quote_identifier, stream
from synap_backfill.deletion.person import PersonRef
from synap_backfill.extract.source_sql import SourceSQL
from synap_backfill.holdings.inventory import Holding
from synap_backfill.identity.keys import Keyring
from synap_backfill.store.locks import BACKFILL, held_sql

log = logging.getLogger("synap_backfill")
BATCH_WAIT = 600.0  # the longest an erasure waits for batches marked before its suppression


class AmbiguousPerson(ValueError):
    """A user id a B2B instance holds, and no customer id given: whose user is it?"""


@dataclass
class SourceMatch:
    """The person's rows in one source, found by their hashes. Held in the task's memory only:
    ``user_id`` and the customer ids are in clear, and never go to XCom, a log or the ledger."""

    user_id: str | None = None
    turns: dict[str | None, list[str]] = field(default_factory=dict)  # customer id -> turns
    other_case: int = 0  # rows holding the user id in another case

    @property
    def rows(self) -> int:
        return sum(len(t) for t in self.turns.values())

    def all_turns(self) -> list[str]:
        return sorted({t for turns in self.turns.values() for t in turns})


def find_in_source(conn: Any, sql: SourceSQL, ref: PersonRef, keyring: Keyring) -> SourceMatch:
    """The person's rows in the source as a holding's runs read it, matched by hash: one
    aggregate over its users, then their turns."""
    found = SourceMatch()
    if not (sql.table and sql.columns.user_id):
        return found
    keys = {h.key_id: h for h in ref.hashes}
    key = keyring.get(ref.hashes[0].key_id) or keyring.current
    mine = keys.get(key.id)
    for user, n in stream(conn, "synap_backfill_erase_persons", sql.persons()):
        user = as_text(user)
        if mine is not None and key.user(user) == mine.user:
            found.user_id = user
        elif mine is not None and key.folded(user) == mine.folded:
            found.other_case += int(n)
    if found.user_id is None:
        return found
    for turn, cust in stream(conn, "synap_backfill_erase_turns", sql.person_turns(),
                             (found.user_id,)):
        found.turns.setdefault(as_text(cust) if cust else None, []).append(as_text(turn))
    return found


@dataclass(frozen=True)
class EraseTarget:
    """One target holding documents of the person: counts and hashes, never ids in clear."""

    holding: int
    target: str  # the Synap instance
    source: str
    synap_conn_id: str  # the connection its last run used
    form: str  # how the instance names a person: "user" (B2C) or "pair" (B2B)
    persons: tuple[str, ...]  # the person's hashes there (every key)
    current: str | None  # the one under the current key (None: not found there)
    documents: int  # with an ingestion id: their memories can be found
    without_id: int  # their answer was lost: listed, not deletable by id
    unattributed: int = 0  # held under the user id alone on a B2B instance: whose customer?
    in_source: int = 0  # their rows still in the source
    other_case: int = 0  # rows in the source holding the user id in another case
    live: bool = False  # include_live_memories: this one asks its instance (one per instance)
    unanswered: int = 0  # batches of an attempt that died, sent before the suppression

    @property
    def label(self) -> str:
        return f"{self.target} ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["persons"] = list(self.persons)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "EraseTarget":
        return cls(**{**raw, "persons": tuple(raw.get("persons") or ())})


@dataclass(frozen=True)
class HeldDocument:
    turn: str
    document_id: str
    ingestion_id: str | None


def resolve_target(conn: Any, schema: str, holding: Holding, ref: PersonRef, keyring: Keyring,
                   match: SourceMatch, *, b2c: bool, live: bool = False
                   ) -> tuple[EraseTarget, list[HeldDocument]]:
    """The person in one target, as its instance names persons, and their held documents.

    ``b2c``: the instance scopes by the user id alone (or its documents carried no customer).
    On a B2B instance without a customer id, a user id the instance holds is refused
    (``AmbiguousPerson``, naming under how many customers, not which).
    """
    s = quote_identifier(schema)
    in_source = match.all_turns()
    unattributed: list[HeldDocument] = []
    current: str | None
    if b2c:
        persons, current = set(ref.users), ref.hashes[0].user
        mine = in_source
    else:
        persons, current = set(ref.pairs), ref.hashes[0].pair
        if not ref.customer_given:
            _refuse_without_customer(conn, s, holding, ref, keyring, match)
        customers = [c for c in match.turns if c is not None and match.user_id is not None
                     and {k.pair(c, match.user_id) for k in keyring.keys} & persons]
        mine = sorted({t for c in customers for t in match.turns[c]})
        others = set(in_source) - set(mine)
        legacy = _legacy_documents(conn, s, holding.id, ref)  # the user id alone, any customer
        unattributed = [d for d in legacy if d.turn not in mine and d.turn not in others]
    with conn.cursor() as cur:
        cur.execute(f"SELECT turn, document_id, ingestion_id::text FROM {s}.held_turns"
                    " WHERE holding = %s AND (person = ANY(%s) OR turn = ANY(%s))"
                    ' ORDER BY turn COLLATE "C"', (holding.id, sorted(persons), mine))
        docs = [HeldDocument(turn, doc, ingestion) for turn, doc, ingestion in cur.fetchall()]
    conn.commit()
    target = EraseTarget(holding.id, holding.target, holding.source, holding.synap_conn_id,
                         "user" if b2c else "pair", tuple(sorted(persons)), current,
                         sum(1 for d in docs if d.ingestion_id), sum(1 for d in docs
                                                                    if not d.ingestion_id),
                         len(unattributed), len(mine), match.other_case, live)
    return target, docs


def _refuse_without_customer(conn: Any, s: str, holding: Holding, ref: PersonRef,
                             keyring: Keyring, match: SourceMatch) -> None:
    """On a B2B instance a person is a customer's user: without a customer id, refuse when the
    instance holds the user id at all (guessing the customer could erase someone else),
    naming under how many customers, not which."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT person_key, count(DISTINCT person) FROM {s}.held_turns WHERE"
                    " holding = %s AND user_hash = ANY(%s) GROUP BY person_key",
                    (holding.id, ref.users))
        held = max((int(n) for _, n in cur.fetchall()), default=0)
        cur.execute(f"SELECT EXISTS (SELECT 1 FROM {s}.held_turns WHERE holding = %s AND"
                    " person_key IS NULL AND person = ANY(%s))", (holding.id, ref.users))
        (legacy,) = cur.fetchone()
    conn.commit()
    customers = max(held, sum(1 for c in match.turns if c is not None))
    if not (customers or legacy):
        return
    under = (f"under {customers} customer{'' if customers == 1 else 's'}" if customers else
             "from before ledger version 4, under no known customer")
    raise AmbiguousPerson(
        f"this user id is held {under} by Synap instance {holding.target} ({holding.source}), a"
        " B2B instance, where a person is a customer's user: give their customer_id; nothing"
        " was deleted or suppressed")


def _legacy_documents(conn: Any, s: str, holding: int, ref: PersonRef) -> list[HeldDocument]:
    """Held turns recorded before ledger version 4 under the user id alone (any customer)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT turn, document_id, ingestion_id::text FROM {s}.held_turns WHERE"
                    " holding = %s AND person_key IS NULL AND person = ANY(%s)",
                    (holding, ref.users))
        rows = [HeldDocument(*row) for row in cur.fetchall()]
    conn.commit()
    return rows


def create_tables(cur: Any, s: str) -> None:
    """DDL (``s``: the quoted schema), for ``schema.ensure_tables``: each erasure run's list of
    documents per target, fixed by its first attempt so a retry resumes in the same order."""
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.erase_documents (
        dag_id text NOT NULL, run_id text NOT NULL, holding int NOT NULL, ordinal int NOT NULL,
        turn text NOT NULL, document_id text NOT NULL, ingestion_id uuid,
        PRIMARY KEY (dag_id, run_id, holding, ordinal))""")


def frozen_documents(conn: Any, schema: str, dag_id: str, run_id: str, holding: int,
                     found: Callable[[], list[HeldDocument]]) -> list[HeldDocument]:
    """The erasure run's documents in this target: as its first attempt found them (``found``)."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT turn, document_id, ingestion_id::text FROM {s}.erase_documents WHERE"
                    " dag_id = %s AND run_id = %s AND holding = %s ORDER BY ordinal",
                    (dag_id, run_id, holding))
        rows = [HeldDocument(*row) for row in cur.fetchall()]
    conn.commit()
    if rows:
        return rows
    docs = found()
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {s}.erase_documents (dag_id, run_id, holding, ordinal, turn,"
                    " document_id, ingestion_id) SELECT %s, %s, %s, * FROM unnest(%s::int[],"
                    " %s::text[], %s::text[], %s::uuid[]) ON CONFLICT DO NOTHING",
                    (dag_id, run_id, holding, list(range(1, len(docs) + 1)), [d.turn for d in docs],
                     [d.document_id for d in docs], [d.ingestion_id for d in docs]))
    conn.commit()
    return frozen_documents(conn, schema, dag_id, run_id, holding, found) if docs else []


def still_held(conn: Any, schema: str, holding: int, docs: Iterable[HeldDocument]) -> list[HeldDocument]:
    """Of ``docs``, those the target still holds: not yet erased."""
    docs = list(docs)
    if not docs:
        return []
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT turn, document_id FROM {s}.held_turns WHERE holding = %s AND turn ="
                    " ANY(%s)", (holding, [d.turn for d in docs]))
        held = set(cur.fetchall())
    conn.commit()
    return [d for d in docs if (d.turn, d.document_id) in held]


def forget(conn: Any, schema: str, holding: int, docs: list[HeldDocument]) -> None:
    """The person's turns are gone from the target (everything it held of the user was deleted):
    no longer held, their document ids undone (never sent again as they were), in one
    transaction."""
    from synap_backfill.common.ids import next_generation
    from synap_backfill.holdings.held_turns import forget_turns

    s = quote_identifier(schema)
    with conn.cursor() as cur:
        forget_turns(cur, s, holding, [d.turn for d in docs])
        if docs:
            cur.executemany(f"INSERT INTO {s}.undone (holding, document_id, generation, target)"
                            " VALUES (%s, %s, %s, %s) ON CONFLICT (holding, document_id) DO UPDATE"
                            " SET generation = greatest(undone.generation, EXCLUDED.generation),"
                            " undone_at = now()",
                            [(holding, *next_generation(d.document_id), holding) for d in docs])
    conn.commit()


@dataclass
class InFlight:
    """What the wait for batches sent before the suppression found."""

    waited_for: int = 0  # partitions with batches on the wire when the suppression committed
    timed_out: dict[int, int] = field(default_factory=dict)  # holding -> partitions still sending
    dead: dict[int, int] = field(default_factory=dict)  # holding -> partitions that died sending


def wait_for_batches(conn: Any, schema: str, holding_ids: Iterable[int], *,
                     timeout: float = BATCH_WAIT, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], Any] = time.sleep) -> InFlight:
    """Wait until every batch marked as sent into these holdings before now is answered (its
    rows accounted for), however long it has been on the wire or held back by a 429; one
    whose attempt is gone (no session holds its partition's lock) cannot be answered any
    more. Called after the suppression committed: later batches see it."""
    s = quote_identifier(schema)
    ids = sorted(set(holding_ids))

    def unanswered() -> dict[tuple[str, str, str], tuple[int, int, int, bool]]:
        """Unfinished partitions of these holdings: (holding, sent mark, rows accounted for,
        whether an attempt still holds the partition's lock)."""
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT c.dag_id, c.run_id, c.window_key, r.holding, c.sent_through, c.report,"
                f" {held_sql(BACKFILL, 'c.dag_id', 'c.run_id', 'c.window_key')}"
                f" FROM {s}.checkpoints c JOIN {s}.runs r ON (r.dag_id, r.run_id) = (c.dag_id, c.run_id)"
                " WHERE r.holding = ANY(%s) AND NOT c.finished AND c.sent_through > 0", (ids,))
            rows = cur.fetchall()
        conn.commit()
        return {(d, r, w): (int(h), int(sent), int((json.loads(report or "{}") or {}).get(
            "rows_read") or 0), bool(alive)) for d, r, w, h, sent, report, alive in rows}

    found = InFlight()
    # The marks as the suppression found them: each must be answered, no later one matters.
    waiting = {key: (h, sent) for key, (h, sent, read, alive) in unanswered().items() if read < sent}
    found.waited_for = len(waiting)
    if not waiting:
        return found
    log.info("waiting up to %.0f s for %d partitions' batches sent before the suppression to be"
             " answered", timeout, len(waiting))
    deadline = clock() + timeout
    while waiting:
        now = unanswered()
        for key, (holding, mark) in list(waiting.items()):
            state = now.get(key)
            if state is None or state[2] >= mark:
                del waiting[key]  # answered (or its partition finished)
            elif not state[3]:
                del waiting[key]  # no attempt holds it: its answers are lost
                found.dead[holding] = found.dead.get(holding, 0) + 1
        if not waiting or clock() >= deadline:
            break
        sleep(1.0)
    for holding, _ in waiting.values():
        found.timed_out[holding] = found.timed_out.get(holding, 0) + 1
    return found


def record_erasure(conn: Any, schema: str, dag_id: str, run_id: str, person: str, dry_run: bool,
                   summary: Mapping[str, Any] | None = None) -> None:
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        if summary is None:
            cur.execute(f"INSERT INTO {s}.erasures (dag_id, run_id, person, dry_run) VALUES"
                        " (%s, %s, %s, %s) ON CONFLICT (dag_id, run_id) DO NOTHING",
                        (dag_id, run_id, person, dry_run))
        else:
            cur.execute(f"UPDATE {s}.erasures SET summary = %s, finished_at = now() WHERE"
                        " dag_id = %s AND run_id = %s", (json.dumps(summary), dag_id, run_id))
    conn.commit()
