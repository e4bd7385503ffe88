"""The application's database as every task reads it: read-only and bounded.

Imported by task bodies when they run (it imports the Postgres provider), never by a DAG file.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

# A source statement running longer is cancelled (seconds); BackfillConfig declares its own.
SOURCE_STATEMENT_TIMEOUT = 3600


class ReadOnlySourceHook(PostgresHook):
    """A ``PostgresHook`` whose every connection runs READ ONLY transactions with a statement
    timeout: a source read can change nothing, whatever its SQL, and never waits unbounded.
    A replica's read-only role is all it needs."""

    def __init__(self, *args: Any, statement_timeout: int = SOURCE_STATEMENT_TIMEOUT,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statement_timeout = statement_timeout

    def get_conn(self) -> Any:
        conn = super().get_conn()
        with conn.cursor() as cur:
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cur.execute("SELECT set_config('statement_timeout', %s, false)",
                        (f"{int(self.statement_timeout) * 1000}",))
        conn.commit()
        return conn


def source_hook(conn_id: str, statement_timeout: int = SOURCE_STATEMENT_TIMEOUT) -> ReadOnlySourceHook:
    return ReadOnlySourceHook(postgres_conn_id=conn_id, statement_timeout=statement_timeout)
