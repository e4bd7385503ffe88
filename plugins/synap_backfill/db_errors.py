"""Database errors, named without their text: PostgreSQL's messages quote values (cells).

psycopg 2 and 3 both speak here (the Postgres provider may bring either): 2 keeps the
SQLSTATE in ``pgcode``, 3 in ``sqlstate``.
"""

from __future__ import annotations

LOCK_NOT_AVAILABLE = "55P03"


def is_database_error(exc: BaseException) -> bool:
    """A DB-API error of psycopg 2 or 3 (their ``Error`` classes), without importing either."""
    return any(cls.__name__ == "Error" and cls.__module__.split(".")[0] in ("psycopg2", "psycopg")
               for cls in type(exc).__mro__)


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)


def sql_error(exc: BaseException) -> str:
    """``LockNotAvailable, SQLSTATE 55P03``: the error's kind and code, never its message."""
    state = sqlstate(exc)
    return f"{type(exc).__name__}" + (f", SQLSTATE {state}" if state else "")
