"""Shared fixtures: a throwaway Airflow home, an embedded PostgreSQL, the local Synap API.

Airflow reads its configuration at first import, so this module points it at a
temporary home before any test imports ``airflow``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
from include import local_airflow  # noqa: E402  (local tooling: imported from the repo root, not installed)

_SCRATCH = Path(tempfile.mkdtemp(prefix="synap-backfill-tests-"))
local_airflow.configure(_SCRATCH / "airflow")
os.environ.setdefault("SYNAP_SDK_LOCAL_MODEL", "off")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("SYNAP_TEST_KEEP_SCRATCH"):  # the stacks' logs, to read after a failure
        print(f"\nscratch kept: {_SCRATCH}")
        return
    shutil.rmtree(_SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def scratch() -> Path:
    return _SCRATCH


@pytest.fixture(scope="session")
def local_pg(scratch: Path) -> Iterator[Any]:
    """One embedded PostgreSQL for the session; tests use their own tables."""
    from include.local_postgres import LocalPostgres

    pg = LocalPostgres(scratch / "postgres").start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture()
def synap(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A local Synap API process with an empty store, for one test.

    In its default mode unless a test parametrizes it (indirectly) with CLI flags.
    """
    from include.synap_local.process import running_synap

    with running_synap(tmp_path / "synap.sqlite3", *getattr(request, "param", ())) as proc:
        yield proc


# Where the docs are silent on what a duplicate's result carries, the counts must
# be right both ways: this answer's time and a new id (the default), or the first write's.
BOTH_DUPLICATE_ANSWERS = pytest.mark.parametrize(
    "synap", [(), ("--duplicate-reports-original",)], indirect=True,
    ids=["duplicate-answers-now", "duplicate-answers-first-write"])


class Declaration:
    """A test's source declaration file (``SYNAP_SOURCE_FILE``), as a deployment writes it.

    ``declare(**values)`` adds to what the test declares; ``for_run(**values)`` writes the
    file for one run, with that run's own values on top (as a run's conf used to carry them).
    It starts as the recipe's defaults, with deletes that need no approval (tests that delete
    say so).
    """

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path, self.declared = path, {"approve_deletes": False}
        monkeypatch.setenv("SYNAP_SOURCE_FILE", str(path))
        self._write(self.declared)

    def __call__(self, **values: Any) -> Path:
        self.declared.update(values)
        return self._write(self.declared)

    def for_run(self, **values: Any) -> Path:
        return self._write({**self.declared, **values})

    def _write(self, values: dict[str, Any]) -> Path:
        import yaml

        self.path.write_text(yaml.safe_dump({"source": values}))
        return self.path


@pytest.fixture()
def declare(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
            ) -> Declaration:
    """This test's source declaration: every DAG parsed after a change reads it."""
    return Declaration(tmp_path_factory.mktemp("declared") / "synap_source.yaml", monkeypatch)


def split_declared(conf: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A test's settings as (what the deployment declares, what a run's conf varies)."""
    from synap_backfill.common.source import DECLARED, POLICY

    declared = {k: v for k, v in conf.items() if k in DECLARED or k in POLICY}
    return declared, {k: v for k, v in conf.items() if k not in declared}


@pytest.fixture(scope="session")
def airflow_db() -> None:
    local_airflow.migrate_db()


def make_table(pg: Any, name: str, rows: Iterable[tuple], created_at_type: str = "timestamptz") -> None:
    """A conversations-shaped table holding exactly ``rows``."""
    with pg.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"CREATE TABLE {name} (user_id text, customer_id text, conversation_id uuid,"
                     f" message_index int, user_text text, assistant_text text,"
                     f" created_at {created_at_type})")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {name} VALUES (%s,%s,%s,%s,%s,%s,%s)", list(rows))


def read_store(db_path: Path) -> list[dict[str, Any]]:
    """Everything a local Synap store file holds."""
    from include.synap_local.store import DocumentStore

    store = DocumentStore(db_path)
    try:
        return [d.as_dict() for d in store.iter_documents()]
    finally:
        store.close()


@pytest.fixture()
def stored_documents(synap: Any) -> Callable[[], list[dict[str, Any]]]:
    """Everything the test's Synap store holds, read from its file."""
    from include.synap_local.store import DocumentStore

    def read() -> list[dict[str, Any]]:
        store = DocumentStore(synap.db_path)
        try:
            return [d.as_dict() for d in store.iter_documents()]
        finally:
            store.close()

    return read


@pytest.fixture()
def use_connections(local_pg: Any, synap: Any, monkeypatch: pytest.MonkeyPatch
                    ) -> Callable[..., None]:
    """Point ``synap_default`` and ``postgres_default`` at this test's Synap and Postgres."""

    def use(api_key: str = "local-dev-key", synap_url: str | None = None,
            synap_extra: dict | None = None) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_SYNAP_DEFAULT", json.dumps(
            {"conn_type": "synap", "host": synap_url or synap.url, "password": api_key,
             "extra": synap_extra or {}}))
        monkeypatch.setenv("AIRFLOW_CONN_POSTGRES_DEFAULT", local_pg.airflow_connection())

    return use


@pytest.fixture()
def run_backfill(airflow_db: None, use_connections: Callable[..., None],
                 declare: Declaration) -> Callable[..., Any]:
    """Run ``synap_backfill`` with dag.test() against this test's Postgres and Synap.

    Settings the deployment declares (the relation, its columns, redaction, the ledger)
    go into this test's declaration for this run; the rest is the run's conf.
    """

    def run(api_key: str = "local-dev-key", dag_id: str = "synap_backfill",
            synap_url: str | None = None, synap_extra: dict | None = None,
            logical_date: Any = None, retry_delay: float | None = None, **settings: Any) -> Any:
        declared, conf = split_declared(settings)
        declare.for_run(**declared)
        # The verify step is off unless a test asks for it (test_verify_extraction.py
        # and the e2e tests run it): the count tests would only wait on its polling.
        conf.setdefault("verify_sample", 0)
        use_connections(api_key, synap_url, synap_extra or {"backoff_max": 4})
        return local_airflow.run_dag(dag_id, conf, logical_date=logical_date,
                                     retry_delay=retry_delay)

    return run
