"""A person as the ledger names them: keyed hashes, never an id in clear.

An erasure (``synap_erase``) must find every document of one person, in every
target, also after their rows left the source; and every later backfill must
hold back that person's turns while they remain in the source. Both need to
recognise the person without the ledger keeping who they are.

**Who a person is** follows the instance: on a B2C instance the user id alone
(Synap scopes by it), on a B2B instance the pair (customer id, user id), since
user ids repeat across customers. So a document's person is named by what it
carried: ``user(u)`` = HMAC(key, u) when it carried no customer id,
``pair(c, u)`` = HMAC(key, c NUL u) when it did; held turns of the second kind
also record ``user(u)`` (``held_turns.user_hash``), so an erasure can tell
how many customers hold a user id without knowing which. Ids are taken as the
source stores them, trimmed of surrounding white space; case is kept.

**The key** is the password of an Airflow connection (``person_key_conn_id``,
default ``synap_person_key``; any type), masked by Airflow, never a default.
Every hash is recorded with the key's id (a keyed fingerprint, never the key:
``person_keys``), so a run with another key is refused in one line
(``check_keyring``) instead of letting erased persons through. Rotation: the
new key becomes the password, the old ones go to the extra
``previous_passwords`` (a list), and ``synap_rekey`` re-derives every held
hash it can from the sources; a key is retired once nothing is recorded
under it (docs/operating.md, "Rotating the person key").

``suppressions``: each erased person's hash, its form (``user``: documents
without a customer; ``pair``: documents with one; ``legacy``: recorded before
ledger version 4, the user id alone, holding back that user id under every
customer), the key's id and the erasure run.

``fences``: one row per holding (target and source). A partition reads the
suppressions for its batch and writes its batch's write-ahead mark in one
transaction that holds the row ``FOR SHARE``; an erasure records its
suppression in one that updates the row. Row locks, so the fence also holds
behind a transaction pooler. Either the batch was marked first (the erasure
then waits for its answer, and deletes what it stored) or it sees the
suppression and holds that person's turns back. A moved fence also makes a
running partition read the key again (``HeldBack``): a key created after it
started is picked up before its next batch.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from synap_backfill.common.config import DEFAULT_KEY_CONN_ID
from synap_backfill.common.db import quote_identifier

log = logging.getLogger("synap_backfill")
__all__ = ["DEFAULT_KEY_CONN_ID", "PersonKey", "Keyring", "load_keyring", "require_keyring"]
HASH_CHARS = 32  # 128 bits of the HMAC, as hex
KEY_ID_CHARS = 12
PREVIOUS_EXTRA = "previous_passwords"  # the connection's extra listing the keys before this one
LEGACY = "legacy"  # person_keys' placeholder: the key before ledger version 4, not yet seen


class PersonKeyMissing(RuntimeError):
    """The key connection is not there (or has no password)."""


class PersonKeyMismatch(RuntimeError):
    """The ledger holds hashes made with a key the connection does not hold."""


def normalise(value: Any) -> str:
    """An id as a person is named by it: as the source stores it, trimmed; case kept."""
    return str(value).strip()


class PersonKey:
    """One key, kept out of ``repr`` and logs; ``id`` names it."""

    def __init__(self, secret: bytes) -> None:
        self._key = secret
        self.id = hmac.new(secret, b"synap-backfill person key id", hashlib.sha256).hexdigest()[
            :KEY_ID_CHARS]

    def __repr__(self) -> str:
        return f"PersonKey(id={self.id})"

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).hexdigest()[:HASH_CHARS]

    def user(self, user_id: Any) -> str:
        """The user id alone (a B2C instance's person; ids never hold NUL, so never a pair's)."""
        return self._mac(normalise(user_id))

    def pair(self, customer_id: Any, user_id: Any) -> str:
        """The (customer, user) pair: a B2B instance's person."""
        return self._mac(f"{normalise(customer_id)}\x00{normalise(user_id)}")

    def folded(self, user_id: Any) -> str:
        """The user id in any case: what finds an id typed in the wrong case."""
        return self._mac(f"\x01{normalise(user_id).casefold()}")


@dataclass(frozen=True)
class Naming:
    """A document's person as a held turn records it."""

    person: str
    user_hash: str | None  # a pair's user id alone; None: the person is the user id
    key: str


@dataclass(frozen=True)
class Keyring:
    """The current key and the ones before it (kept until ``synap_rekey`` retires them)."""

    current: PersonKey
    previous: tuple[PersonKey, ...] = ()

    @property
    def keys(self) -> tuple[PersonKey, ...]:
        return (self.current, *self.previous)

    @property
    def ids(self) -> list[str]:
        return [k.id for k in self.keys]

    def get(self, key_id: str) -> PersonKey | None:
        return next((k for k in self.keys if k.id == key_id), None)

    def name(self, user_id: Any, customer_id: Any = None) -> Naming | None:
        """The person of a document that carried these ids (None: no user)."""
        if user_id is None or not normalise(user_id):
            return None
        key = self.current
        if customer_id is None or not normalise(customer_id):
            return Naming(key.user(user_id), None, key.id)
        return Naming(key.pair(customer_id, user_id), key.user(user_id), key.id)


def _keyring(conn: Any) -> Keyring | None:
    password = conn.password or ""
    if not password:
        return None
    raw = (conn.extra_dejson or {}).get(PREVIOUS_EXTRA) or []
    if isinstance(raw, str):
        raw = [part for part in raw.replace(",", "\n").splitlines()]
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise PersonKeyMissing(f"extra {PREVIOUS_EXTRA!r} of the person key connection must be a"
                               " list of the earlier keys")
    previous = tuple(PersonKey(p.strip().encode("utf-8")) for p in raw if p.strip())
    current = PersonKey(password.encode("utf-8"))
    return Keyring(current, tuple(k for k in previous if k.id != current.id))


def load_keyring(conn_id: str) -> Keyring | None:
    """The keys from their Airflow connection; None when there is none (or no password)."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, whatever the Airflow version calls it
        return None
    return _keyring(conn)


def require_keyring(conn_id: str) -> Keyring:
    keyring = load_keyring(conn_id)
    if keyring is None:
        raise PersonKeyMissing(
            f"connection {conn_id!r} (param 'person_key_conn_id') is missing or has no password:"
            " it holds the secret key that names a person in the ledger by a keyed hash. Create"
            " it (any type; the password is the key, a long random string) and keep it")
    return keyring


def create_tables(cur: Any, s: str) -> None:
    """DDL (``s``: the quoted schema), for ``schema.ensure_tables``."""
    from synap_backfill.common.db import add_column

    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.suppressions (
        person text PRIMARY KEY, recorded_at timestamptz NOT NULL DEFAULT now(),
        dag_id text NOT NULL, run_id text NOT NULL)""")
    # Version 4: the key that made it, and its form (before: the user id alone, any customer).
    add_column(cur, s, "suppressions", "key_id", "text")
    add_column(cur, s, "suppressions", "form", f"text NOT NULL DEFAULT '{LEGACY}'")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.fences (
        holding int PRIMARY KEY, epoch bigint NOT NULL DEFAULT 0)""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.erasures (
        dag_id text NOT NULL, run_id text NOT NULL, person text NOT NULL, dry_run boolean NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz, summary text,
        PRIMARY KEY (dag_id, run_id))""")
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.person_keys (
        key_id text PRIMARY KEY, legacy boolean NOT NULL DEFAULT false,
        recorded_at timestamptz NOT NULL DEFAULT now(), retired_at timestamptz)""")
    # Hashes from before version 4 carry no key id: the first key seen afterwards is theirs.
    cur.execute(f"INSERT INTO {s}.person_keys (key_id, legacy) SELECT %s, true WHERE"
                f" (EXISTS (SELECT 1 FROM {s}.suppressions WHERE key_id IS NULL) OR EXISTS"
                f" (SELECT 1 FROM {s}.held_turns WHERE person IS NOT NULL AND person_key IS NULL))"
                f" AND NOT EXISTS (SELECT 1 FROM {s}.person_keys WHERE legacy)", (LEGACY,))


def check_keyring(conn: Any, schema: str, keyring: Keyring | None, conn_id: str) -> None:
    """Refuse, in one line, a key the ledger's hashes were not made with; record this one's id.

    With no key: refused only once anyone was erased (their turns could not be told).
    """
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        if keyring is not None:  # the key from before version 4: the first one seen
            cur.execute(f"UPDATE {s}.person_keys SET key_id = %s WHERE key_id = %s AND NOT EXISTS"
                        f" (SELECT 1 FROM {s}.person_keys WHERE key_id = %s)",
                        (keyring.current.id, LEGACY, keyring.current.id))
            cur.execute(f"UPDATE {s}.suppressions SET key_id = (SELECT key_id FROM {s}.person_keys"
                        " WHERE legacy) WHERE key_id IS NULL")
        cur.execute(f"SELECT key_id FROM {s}.person_keys WHERE retired_at IS NULL ORDER BY"
                    " recorded_at")
        in_use = [row[0] for row in cur.fetchall()]
        cur.execute(f"SELECT count(*) FROM {s}.suppressions")
        (erased,) = cur.fetchone()
        if keyring is None:
            conn.commit()
            if erased:
                raise PersonKeyMissing(
                    f"connection {conn_id!r} (param 'person_key_conn_id') is missing or has no"
                    f" password, and {erased:,} person{'' if erased == 1 else 's'} were erased:"
                    " without the key their turns cannot be held back. Put the key back")
            return
        unknown = [k for k in in_use if k not in keyring.ids]
        if unknown:
            conn.rollback()
            raise PersonKeyMismatch(
                f"connection {conn_id!r} holds person key {keyring.current.id}, but the ledger's"
                f" persons were also recorded with key {', '.join(unknown)}, which it does not hold"
                f" (not its password, not in its extra {PREVIOUS_EXTRA!r}); {erased:,} erased"
                f" person{'' if erased == 1 else 's'} could be sent again. Put the old key back as"
                f" the password, or list it under {PREVIOUS_EXTRA!r} and run synap_rekey"
                " (docs/operating.md, Rotating the person key)")
        cur.execute(f"INSERT INTO {s}.person_keys (key_id) VALUES (%s) ON CONFLICT (key_id) DO"
                    " UPDATE SET retired_at = NULL", (keyring.current.id,))
    conn.commit()


class HeldBack:
    """How one partition attempt names its documents' persons and holds back the erased.

    The key is read at the first batch, and again whenever an erasure moved the holding's
    fence since: a key created after the attempt started is picked up before its next batch.
    """

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.keyring: Keyring | None = None
        self._epoch: Any = object()  # never a fence's: the first batch reads the key

    def name(self, user_id: Any, customer_id: Any) -> Naming | None:
        return self.keyring.name(user_id, customer_id) if self.keyring is not None else None

    def check(self, cur: Any, s: str, holding: int | None,
              documents: Sequence[tuple[str, Any, Any]]) -> set[str]:
        """In the caller's transaction, before its write-ahead mark: take the holding's fence
        (shared), and which of ``documents`` (key, user id, customer id as sent) name a
        suppressed person: their turns must not go."""
        epoch = None
        if holding is not None:
            cur.execute(f"SELECT epoch FROM {s}.fences WHERE holding = %s FOR SHARE", (holding,))
            row = cur.fetchone()
            epoch = row[0] if row else None
        if epoch != self._epoch:
            self.keyring = load_keyring(self.conn_id)
            self._epoch = epoch
        if self.keyring is None:
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM {s}.suppressions)")
            if cur.fetchone()[0]:
                raise PersonKeyMissing(f"persons were erased, and connection {self.conn_id!r}"
                                       " (param 'person_key_conn_id') holds no key: their turns"
                                       " cannot be told, so none is sent")
            return set()
        return suppressed(cur, s, self.keyring, documents)


def suppressed(cur: Any, s: str, keyring: Keyring,
               documents: Sequence[tuple[str, Any, Any]]) -> set[str]:
    """Of ``documents`` (key, user id, customer id as sent), those whose person is suppressed
    under any key of ``keyring`` (in the caller's transaction)."""
    named: list[tuple[str, set[str], set[str]]] = []  # key, its person's hashes, its user's
    for key, user, customer in documents:
        if user is None or not normalise(user):
            continue
        users = {k.user(user) for k in keyring.keys}
        pairs = ({k.pair(customer, user) for k in keyring.keys}
                 if customer is not None and normalise(customer) else set())
        named.append((key, pairs or users, users if pairs else set()))
    if not named:
        return set()
    wanted = sorted({h for _, person, user in named for h in person | user})
    cur.execute(f"SELECT person, form FROM {s}.suppressions WHERE person = ANY(%s)", (wanted,))
    found = dict(cur.fetchall())
    if not found:
        return set()
    # A document's person matches any suppression of it; its user id alone, only one from
    # before version 4 (which held back that user id under every customer).
    return {key for key, person, user in named
            if person & found.keys() or any(found.get(h) == LEGACY for h in user)}


def any_suppressions(conn: Any, schema: str) -> bool:
    with conn.cursor() as cur:
        cur.execute(f"SELECT EXISTS (SELECT 1 FROM {quote_identifier(schema)}.suppressions)")
        (found,) = cur.fetchone()
    conn.commit()
    return bool(found)


def ensure_fence(conn: Any, schema: str, holding: int) -> None:
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {quote_identifier(schema)}.fences (holding) VALUES (%s)"
                    " ON CONFLICT DO NOTHING", (holding,))
    conn.commit()


@dataclass(frozen=True)
class Suppression:
    person: str
    form: str  # "user", "pair" or LEGACY
    key_id: str


def suppress(conn: Any, schema: str, suppressions: Iterable[Suppression], *, dag_id: str,
             run_id: str) -> list[int]:
    """Record the suppressions, moving every holding's fence in the same transaction (a batch
    marked before it is waited for: ``deletion.erase.wait_for_batches``; any later one holds back); the
    holdings fenced, as the transaction found them."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {s}.holdings ORDER BY id FOR SHARE")
        holdings = [int(row[0]) for row in cur.fetchall()]
        for holding in holdings:
            cur.execute(f"INSERT INTO {s}.fences AS f (holding, epoch) VALUES (%s, 1)"
                        " ON CONFLICT (holding) DO UPDATE SET epoch = f.epoch + 1", (holding,))
        for sup in suppressions:
            cur.execute(f"INSERT INTO {s}.suppressions (person, dag_id, run_id, key_id, form)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (person) DO NOTHING",
                        (sup.person, dag_id, run_id, sup.key_id, sup.form))
    conn.commit()
    return holdings


def suppressions_under(conn: Any, schema: str, key_ids: Iterable[str]) -> list[tuple[str, str, str]]:
    """(person, form, key id) of the suppressions recorded under ``key_ids``."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT person, form, key_id FROM {s}.suppressions WHERE key_id = ANY(%s)",
                    (list(key_ids),))
        rows = [(p, f, k) for p, f, k in cur.fetchall()]
    conn.commit()
    return rows


def describe_keys(conn: Any, schema: str) -> list[dict[str, Any]]:
    """Each key id the ledger knows: whether retired, and what is still recorded under it."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT k.key_id, k.legacy, k.retired_at IS NOT NULL,"
                    f" (SELECT count(*) FROM {s}.suppressions p WHERE p.key_id = k.key_id),"
                    f" (SELECT count(*) FROM {s}.held_turns h WHERE h.person_key = k.key_id"
                    "   OR (k.legacy AND h.person_key IS NULL AND h.person IS NOT NULL))"
                    f" FROM {s}.person_keys k ORDER BY k.recorded_at")
        rows = cur.fetchall()
    conn.commit()
    return [{"key_id": k, "legacy": bool(legacy), "retired": bool(retired),
             "suppressions": int(sups), "held_turns": int(turns)}
            for k, legacy, retired, sups, turns in rows]


def retire_unused(conn: Any, schema: str, current: str) -> list[dict[str, Any]]:
    """Retire every key but ``current`` under which nothing is recorded any more; each key."""
    keys = describe_keys(conn, schema)
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        for k in keys:
            if k["key_id"] != current and not k["retired"] and not (k["suppressions"]
                                                                    or k["held_turns"]):
                cur.execute(f"UPDATE {s}.person_keys SET retired_at = now() WHERE key_id = %s",
                            (k["key_id"],))
                k["retired"] = True
    conn.commit()
    return keys
