"""Every supported Python × Airflow: the wheel installs under that combination's constraints, its
provider registers, every DAG parses, and a backfill puts every row of a table into Synap.

The whole suite runs on the development combination (``make test``); this is the smoke on each
of the others (and on the development one too, from the wheel rather than the checkout). A
combination whose Python is not on this machine is reported skipped with the reason, never
dropped. The table lands in the CI log and in ``test-artifacts/matrix.md``. Two combinations
run at a time: each is a fresh venv, a scratch Airflow home and a local Synap API of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from include import local_airflow
from include.matrix import COMBOS, Combo, find_python, make_venv, table
from tests.conftest import read_store

pytestmark = pytest.mark.distribution
REPO = Path(__file__).resolve().parents[2]
TURNS = 60


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


def _run(combo: Combo, wheel: Path, local_pg: Any, scratch: Path, artifacts: Path) -> dict[str, Any]:
    """One combination, start to end: what the table shows and what the test checks."""
    from include.demo_data import load_demo_table
    from include.synap_local.process import running_synap

    out: dict[str, Any] = {"combination": combo.name + (" (full suite)" if combo.primary else ""),
                           "note": combo.note}
    python = find_python(combo.python)
    if python is None:
        return {**out, "installed": "skipped", "skipped": f"no Python {combo.python} on this machine",
                "note": f"no Python {combo.python} on this machine"}
    started = time.monotonic()
    try:
        venv_python = make_venv(combo, python, wheel, scratch / "venv")
        out["installed"] = "yes"
        source = "matrix_" + combo.name.replace(".", "_").replace("-", "_")
        with local_pg.connect() as conn:
            out["rows"] = load_demo_table(conn, source, turns=TURNS, days=3, seed=71)
        declaration = scratch / "synap_source.yaml"
        declaration.write_text(f"source:\n  source_table: {source}\n  approve_deletes: false\n")
        home = scratch / "airflow-home"
        home.mkdir()
        with running_synap(scratch / "synap.sqlite3") as synap:
            result = subprocess.run([str(venv_python), "-m", "include.matrix_probe"], cwd=scratch,
                                    env=_environment(home, local_pg, synap, declaration),
                                    capture_output=True, text=True, timeout=600)
            (artifacts / f"matrix-{combo.name}.log").write_text(result.stdout + result.stderr)
            if result.returncode != 0:
                return {**out, "error": result.stderr[-4000:]}
            out["found"] = found = json.loads(result.stdout.strip().splitlines()[-1])
            out["stored"] = len(read_store(synap.db_path))
    except Exception:
        return {**out, "error": traceback.format_exc()[-4000:]}
    out["seconds"] = round(time.monotonic() - started)
    out["venv"] = str(scratch / "venv")
    out["provider"] = "yes" if found["provider"] == "synap_provider.hooks.SynapHook" else "no"
    out["parsed"] = f"{len(found['dags'])} DAGs, {len(found['dag_errors'])} errors"
    out["backfill"] = (f"{out['rows']} = {out['stored']}" if out["stored"] == out["rows"]
                       else f"{out['rows']} ≠ {out['stored']}")
    return out


@pytest.fixture(scope="module")
def outcomes(wheel: Path, local_pg: Any, tmp_path_factory: pytest.TempPathFactory,
             artifacts: Path, request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = pool.map(lambda c: _run(c, wheel, local_pg, tmp_path_factory.mktemp(c.name), artifacts),
                        COMBOS)
        results = dict(zip((c.name for c in COMBOS), runs))
    rendered = table(list(results.values()))
    (artifacts / "matrix.md").write_text("# Python × Airflow matrix\n\n" + rendered + "\n")
    # Printed at the end of the run (conftest.pytest_terminal_summary).
    request.config.synap_matrix = [rendered]  # type: ignore[attr-defined]
    return results


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: c.name)
def test_the_wheel_installs_registers_parses_and_backfills_on(combo: Combo,
                                                              outcomes: dict[str, dict[str, Any]]) -> None:
    outcome = outcomes[combo.name]
    if "skipped" in outcome:
        pytest.skip(outcome["skipped"])
    assert "error" not in outcome, outcome["error"]
    found = outcome["found"]
    assert found["python"].startswith(combo.python + ".") and found["airflow"] == combo.airflow
    assert Path(found["engine_from"]).is_relative_to(outcome["venv"])  # the wheel, not the checkout
    assert found["provider"] == "synap_provider.hooks.SynapHook"
    assert found["plugin_errors"] == {}, found["plugin_errors"]
    assert {"synap_ui", "synap_connection_check"} <= set(found["plugins"]), found["plugins"]
    assert found["dag_errors"] == {}
    assert {"synap_backfill", "synap_undo", "synap_erase", "synap_rekey"} <= set(found["dags"])
    assert found["state"] == "success", json.dumps({k: found[k] for k in ("tasks", "failures", "summary")})
    assert found["summary"]["ingested"] == outcome["rows"] and found["summary"]["problems"] == []
    assert outcome["stored"] == outcome["rows"] == TURNS
