"""The UI plugin costs a worker nothing: its FastAPI app is imported only where it is mounted.

Airflow loads every plugin in every process that asks for listeners or hook lineage (each
task's worker process, the DAG processor), so what the plugin module imports at the top is
paid per task. The app, with FastAPI and the API server's auth manager, waits for the API
server to ask for it.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("synap_provider.ui_app", "fastapi", "airflow.api_fastapi.core_api.security")


def loaded_after(code: str) -> dict[str, bool]:
    """Which of HEAVY a fresh interpreter holds after running ``code`` (this process has them all)."""
    probe = code + f"\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_the_plugin_imports_neither_the_app_nor_fastapi():
    loaded = loaded_after("from synap_provider.ui import SynapUIPlugin\nSynapUIPlugin()")
    assert not any(loaded.values()), loaded


def test_the_api_server_gets_the_app_mounted_under_synap_with_both_views():
    from fastapi import FastAPI

    from synap_provider.ui import SynapUIPlugin
    from synap_provider.ui_app import app

    plugin = SynapUIPlugin()
    [mounted] = plugin.fastapi_apps
    assert mounted["app"] is app and isinstance(app, FastAPI)
    assert mounted["url_prefix"] == "/synap"
    assert {view["href"] for view in plugin.external_views} == {
        "/synap/runs/{DAG_ID}/{RUN_ID}", "/synap/targets"}


def test_airflow_loads_each_plugin_of_the_package_once_with_no_import_error(tmp_path):
    """As the Home page counts them: Airflow's own plugin loading, in a fresh interpreter of the
    project's environment (an egg-info beside the packages on the path made every entry point
    count twice: "Plugin 'synap_ui' already registered")."""
    probe = ("import json\nfrom airflow import plugins_manager as pm\nplugins, errors = pm._get_plugins()\n"
             "print(json.dumps({'names': [p.name for p in plugins], 'errors': errors}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "AIRFLOW_HOME": str(tmp_path)})
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert sorted(n for n in found["names"] if n.startswith("synap")) == ["synap_connection_check",
                                                                          "synap_ui"]
