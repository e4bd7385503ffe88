"""Database helpers every concern uses: quoting a name, text from a ``SQL_ASCII`` database,
bounding lock waits, adding a column without an exclusive lock when it is there, and knowing
a database error by its kind (its text can quote a cell: ``common.errors.sql_error`` names it).

psycopg 2 and 3 both speak here (the Postgres provider may bring either): 2 keeps the
SQLSTATE in ``pgcode``, 3 in ``sqlstate``.
"""

from __future__ import annotations

from typing import Any, Iterator

LOCK_NOT_AVAILABLE = "55P03"
# The longest one ledger or pacing statement waits for a lock (a session idle in a
# transaction that holds one): then the work fails, naming the ledger, and its retry
# resumes from the checkpoint. Never a wait without a bound.
SESSION_LOCK_TIMEOUT = "60s"


def quote_identifier(name: str) -> str:
    """Double-quote an identifier; names are validated in config first."""
    return '"' + name.replace('"', '""') + '"'


def as_text(value: Any) -> Any:
    """psycopg returns text as bytes from a SQL_ASCII database: ids are decoded leniently."""
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return value


STREAM_FETCH = 5000  # rows per round trip of a server-side cursor


def stream(conn: Any, name: str, sql: str, args: Any = None) -> Iterator[tuple]:
    """A query's rows through a named (server-side) cursor, ``STREAM_FETCH`` at a time: memory
    stays flat however many rows it returns. Commits when the rows are all read."""
    with conn.cursor(name=name) as cur:
        cur.execute(sql, args)
        while True:
            chunk = cur.fetchmany(STREAM_FETCH)
            if not chunk:
                break
            yield from chunk
    conn.commit()


def limit_lock_waits(conn: Any) -> None:
    """Bound every lock wait of this session (``SESSION_LOCK_TIMEOUT``)."""
    with conn.cursor() as cur:
        cur.execute(f"SET lock_timeout = '{SESSION_LOCK_TIMEOUT}'")
    conn.commit()


def add_column(cur: Any, s: str, table: str, column: str, kind: str) -> None:
    """``ALTER TABLE ... ADD COLUMN`` only when the column is missing (``s``: the quoted schema):
    even ``ADD COLUMN IF NOT EXISTS`` takes an exclusive lock on the table."""
    cur.execute("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s"
                " AND NOT attisdropped", (f"{s}.{table}", column))
    if not cur.fetchone():
        cur.execute(f"ALTER TABLE {s}.{table} ADD COLUMN {column} {kind}")


def is_database_error(exc: BaseException) -> bool:
    """A DB-API error of psycopg 2 or 3 (their ``Error`` classes), without importing either."""
    return any(cls.__name__ == "Error" and cls.__module__.split(".")[0] in ("psycopg2", "psycopg")
               for cls in type(exc).__mro__)


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
