"""Re-deriving person hashes under the current key: how a person key is rotated without a resend.

A hash cannot be turned into another key's hash: the user id is needed, and
the ledger never kept it. What the ledger does keep is where each held turn
came from (its holding's source relation, column mapping and the turn's key),
so each held turn recorded under another key (or before ledger version 4,
under the user id alone, which on a B2B instance is not the person) is looked
up in its source and named anew: one streamed merge of the holding's held
turns with the source's rows, both ordered by the turn's key. Suppressions
under other keys are matched against the sources' (user, customer) pairs the
same pass sees, and recorded again under the current key.

What cannot be re-derived stays under its key: turns whose rows left every
source, suppressions of persons no source holds any more. Their key must stay
in the connection's ``previous_passwords`` until nothing is left under it;
``identity.keys.retire_unused`` retires it then. Nothing is sent to Synap.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from itertools import groupby
from typing import Any, Iterator, Mapping

from synap_backfill.common.db import as_text, quote_identifier, stream
from synap_backfill.holdings.inventory import Holding
from synap_backfill.identity.keys import LEGACY, Keyring, suppressions_under

log = logging.getLogger("synap_backfill")
WRITE_EVERY = 5000  # held turns re-derived per ledger transaction


@dataclass
class RekeyReport:
    """What re-deriving one holding came to: counts, never ids."""

    holding: int
    label: str
    turns: int = 0  # held turns not under the current key
    rederived: int = 0
    left: int = 0  # their rows left the source: still under their old key
    suppressions: int = 0  # suppressions recorded again under the current key
    dry_run: bool = False
    by_key: dict[str, int] = field(default_factory=dict)  # left behind, by key id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _held(conn: Any, s: str, holding: int, current: str) -> Iterator[tuple[str, str | None]]:
    """(turn, key id) of the held turns not named under ``current``, in the turn's byte order."""
    yield from stream(conn, "synap_backfill_rekey_held",
                      f"SELECT turn, person_key FROM {s}.held_turns WHERE holding = %s AND"
                      ' person_key IS DISTINCT FROM %s ORDER BY turn COLLATE "C"',
                      (holding, current))


def _source(conn: Any, holding: Holding) -> Iterator[tuple[str, str | None, str | None]]:
    """(turn, user id, customer id) of every row of the holding's source, trimmed, in the turn's
    byte order: the ids stay in this process."""
    rows = stream(conn, "synap_backfill_rekey_source", holding.sql.turn_persons())
    for key, user, cust in rows:
        yield as_text(key), as_text(user) if user else None, as_text(cust) if cust else None


def rekey_holding(ledger: Any, source: Any, schema: str, holding: Holding, keyring: Keyring, *,
                  b2c: bool, dry_run: bool) -> RekeyReport:
    """Name every held turn of ``holding`` under the current key, as its instance names persons
    (``b2c``: the user id; else the customer's user), from its source; and record again under
    the current key the suppressions of persons its source holds."""
    s = quote_identifier(schema)
    current = keyring.current
    report = RekeyReport(holding.id, f"{holding.target} ({holding.source})", dry_run=dry_run)
    legacy_key = _legacy_key(ledger, s)
    sups = {p: (form, key) for p, form, key in suppressions_under(
        ledger, schema, [k.id for k in keyring.previous])}
    seen_pairs: set[tuple[str, str | None]] = set()
    updates: list[tuple[str, str, str | None, str]] = []
    rows = groupby(_source(source, holding), key=lambda r: r[0])
    current_row = next(rows, None)
    for turn, key_id in _held(ledger, s, holding.id, current.id):
        report.turns += 1
        while current_row is not None and current_row[0] < turn:
            current_row = _take(current_row, seen_pairs, bool(sups), rows)
        if current_row is None or current_row[0] != turn:
            report.left += 1
            shown = key_id or legacy_key or "none"
            report.by_key[shown] = report.by_key.get(shown, 0) + 1
            continue
        group = list(current_row[1])
        current_row = (current_row[0], iter(group))
        _, user, customer = group[0]
        named = keyring.name(user, None if b2c else customer)
        if named is None:  # a row without a user: nobody to name
            report.left += 1
            continue
        updates.append((turn, named.person, named.user_hash, named.key))
        report.rederived += 1
        if len(updates) >= WRITE_EVERY and not dry_run:
            _write(ledger, s, holding.id, updates)
            updates = []
    while current_row is not None:  # the rest of the source: its persons, for suppressions
        current_row = _take(current_row, seen_pairs, bool(sups), rows)
    if updates and not dry_run:
        _write(ledger, s, holding.id, updates)
    report.suppressions = _rekey_suppressions(ledger, s, keyring, sups, seen_pairs, legacy_key,
                                              dry_run=dry_run)
    return report


def _take(row: tuple[str, Any], seen: set[tuple[str, str | None]], wanted: bool,
          rows: Iterator[tuple[str, Any]]) -> tuple[str, Any] | None:
    """Note the persons of one source turn (for suppressions), and move to the next."""
    if wanted:
        for _, user, customer in row[1]:
            if user:
                seen.add((user, customer))
    return next(rows, None)


def _legacy_key(conn: Any, s: str) -> str | None:
    with conn.cursor() as cur:
        cur.execute(f"SELECT key_id FROM {s}.person_keys WHERE legacy AND key_id <> %s", (LEGACY,))
        row = cur.fetchone()
    conn.commit()
    return row[0] if row else None


def _write(conn: Any, s: str, holding: int, updates: list[tuple[str, str, str | None, str]]) -> None:
    with conn.cursor() as cur:
        cur.execute(f"UPDATE {s}.held_turns h SET person = u.person, user_hash = u.user_hash,"
                    " person_key = u.key FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])"
                    " AS u(turn, person, user_hash, key) WHERE h.holding = %s AND h.turn = u.turn",
                    ([u[0] for u in updates], [u[1] for u in updates], [u[2] for u in updates],
                     [u[3] for u in updates], holding))
    conn.commit()


def _rekey_suppressions(conn: Any, s: str, keyring: Keyring,
                        sups: Mapping[str, tuple[str, str]], seen: set[tuple[str, str | None]],
                        legacy_key: str | None, *, dry_run: bool) -> int:
    """Record under the current key each suppression (under another key) of a person the source
    holds; the old one is dropped. How many."""
    if not sups:
        return 0
    keys = {k.id: k for k in keyring.previous}
    found: dict[str, str] = {}  # old hash -> new hash
    for user, customer in seen:
        for key_id, key in keys.items():
            named = [(key.user(user), keyring.current.user(user), False)]
            if customer:
                named.append((key.pair(customer, user), keyring.current.pair(customer, user), True))
            for old_hash, new_hash, pair in named:
                if old_hash in sups and sups[old_hash][1] == key_id and \
                        (sups[old_hash][0] == "pair") == pair:
                    found[old_hash] = new_hash
    if found and not dry_run:
        with conn.cursor() as cur:
            for old_hash, new_hash in found.items():
                cur.execute(f"INSERT INTO {s}.suppressions (person, recorded_at, dag_id, run_id,"
                            " key_id, form) SELECT %s, recorded_at, dag_id, run_id, %s, form FROM"
                            f" {s}.suppressions WHERE person = %s ON CONFLICT (person) DO NOTHING",
                            (new_hash, keyring.current.id, old_hash))
                cur.execute(f"DELETE FROM {s}.suppressions WHERE person = %s", (old_hash,))
        conn.commit()
    return len(found)
