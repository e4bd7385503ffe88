"""Every supported Python × Airflow: the wheel installs under that combination's constraints, its
provider registers, every DAG parses, and a backfill puts every row of a table into Synap.

The whole suite runs on the development combination (``make test``); this is the smoke on each
of the others (and on the development one too, from the wheel rather than the checkout). A
combination whose Python is not on this machine is reported skipped with the reason, never
dropped. The table lands in the CI log and in ``test-artifacts/matrix.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from include import local_airflow
from include.matrix import COMBOS, Combo, find_python, make_venv, table
from tests.conftest import read_store

pytestmark = pytest.mark.distribution
REPO = Path(__file__).resolve().parents[2]
RESULTS: list[dict[str, Any]] = []


@pytest.fixture(scope="module", autouse=True)
def matrix_table(artifacts: Path) -> Iterator[None]:
    yield
    if RESULTS:
        rendered = table(RESULTS)
        (artifacts / "matrix.md").write_text("# Python × Airflow matrix\n\n" + rendered + "\n")
        print("\n" + rendered)


def _environment(home: Path, local_pg: Any, synap: Any, declaration: Path) -> dict[str, str]:
    """A clean environment: this checkout's tooling on the path, the engine only from the venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "PYTHON", "SYNAP_", "VIRTUAL_ENV"))}
    env.update(local_airflow.airflow_env(home), PYTHONPATH=str(REPO),
               SYNAP_SOURCE_FILE=str(declaration), SYNAP_SDK_LOCAL_MODEL="off",
               AIRFLOW_CONN_POSTGRES_DEFAULT=local_pg.airflow_connection(),
               AIRFLOW_CONN_SYNAP_DEFAULT=json.dumps(
                   {"conn_type": "synap", "host": synap.url, "password": "local-dev-key",
                    "extra": {"backoff_max": 2, "requests_per_minute": 0}}))
    return env


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: c.name)
def test_the_wheel_installs_registers_parses_and_backfills_on(combo: Combo, wheel: Path, local_pg: Any,
                                                              synap: Any, tmp_path: Path,
                                                              artifacts: Path) -> None:
    from include.demo_data import load_demo_table

    row: dict[str, Any] = {"combination": combo.name + (" (full suite)" if combo.primary else "")}
    RESULTS.append(row)
    python = find_python(combo.python)
    if python is None:
        row.update(installed="skipped", note=f"no Python {combo.python} on this machine")
        pytest.skip(row["note"])
    started = time.monotonic()
    venv_python = make_venv(combo, python, wheel, tmp_path / "venv")
    row["installed"] = "yes"

    source = "matrix_" + combo.name.replace(".", "_").replace("-", "_")
    with local_pg.connect() as conn:
        rows = load_demo_table(conn, source, turns=60, days=3, seed=71)
    declaration = tmp_path / "synap_source.yaml"
    declaration.write_text(f"source:\n  source_table: {source}\n  approve_deletes: false\n")
    home = tmp_path / "airflow-home"
    home.mkdir()
    result = subprocess.run([str(venv_python), "-m", "include.matrix_probe"], cwd=tmp_path,
                            env=_environment(home, local_pg, synap, declaration),
                            capture_output=True, text=True, timeout=600)
    (artifacts / f"matrix-{combo.name}.log").write_text(result.stdout + result.stderr)  # to read
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    row["seconds"] = round(time.monotonic() - started)
    row["note"] = combo.note

    assert found["python"].startswith(combo.python + ".") and found["airflow"] == combo.airflow
    assert Path(found["engine_from"]).is_relative_to(tmp_path / "venv")  # the wheel, not the checkout
    row["provider"] = "yes" if found["provider"] == "synap_provider.hooks.SynapHook" else "no"
    assert found["provider"] == "synap_provider.hooks.SynapHook"
    assert found["plugin_errors"] == {}, found["plugin_errors"]
    assert {"synap_ui", "synap_connection_check"} <= set(found["plugins"]), found["plugins"]
    row["parsed"] = f"{len(found['dags'])} DAGs, {len(found['dag_errors'])} errors"
    assert found["dag_errors"] == {}
    assert {"synap_backfill", "synap_undo", "synap_erase", "synap_rekey"} <= set(found["dags"])
    stored = len(read_store(synap.db_path))
    row["backfill"] = f"{rows} = {stored}" if stored == rows else f"{rows} ≠ {stored}"
    assert found["state"] == "success", json.dumps({k: found[k] for k in ("tasks", "failures", "summary")})
    assert found["summary"]["ingested"] == rows and found["summary"]["problems"] == []
    assert stored == rows
