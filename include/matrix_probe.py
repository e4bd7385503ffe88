"""One combination of the matrix, from inside its fresh venv: the wheel's provider, plugins and
DAGs as that Airflow loads them, then one backfill through ``dag.test()``.

Run by ``tests/e2e/test_matrix.py`` with the venv's Python, the checkout on ``PYTHONPATH``
for this tooling only (the engine must come from the installed wheel), and the environment
that points Airflow at a scratch home, the test's PostgreSQL and local Synap API. Prints one
JSON line: what it found, counts and names only.

    python -m include.matrix_probe     # the source as SYNAP_SOURCE_FILE declares it
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _plugins() -> tuple[list[str], dict[str, str]]:
    """The plugins Airflow loaded and its plugin import errors, across the minors' APIs."""
    from airflow import plugins_manager as pm

    if hasattr(pm, "get_import_errors"):  # 3.2 and later
        errors = pm.get_import_errors()
    else:
        pm.ensure_plugins_loaded()
        errors = dict(pm.import_errors)
    return sorted(p["name"] for p in pm.get_plugin_info()), dict(errors)


def probe() -> dict[str, Any]:
    import airflow
    from airflow.providers_manager import ProvidersManager

    import synap_backfill
    from include import local_airflow

    out: dict[str, Any] = {"airflow": airflow.__version__, "python": sys.version.split()[0],
                           "engine_from": synap_backfill.__file__}
    hook = ProvidersManager().hooks.get("synap")
    out["provider"] = hook.hook_class_name if hook else None
    out["plugins"], out["plugin_errors"] = _plugins()
    bag = local_airflow.dag_bag()
    out["dags"] = sorted(bag.dag_ids)
    out["dag_errors"] = {k: str(v)[-300:] for k, v in bag.import_errors.items()}
    local_airflow.migrate_db()
    run = local_airflow.run_dag("synap_backfill", {"verify_sample": 0})
    out["state"] = str(run.state)
    out["tasks"] = {f"{t}[{i}]" if i >= 0 else t: str(s).rsplit(".", 1)[-1]
                    for (t, i), s in local_airflow.task_states(run).items()}
    out["failures"] = {t: local_airflow.task_xcom(run, t, "failure")
                       for t in ("resolve_config", "plan_partitions", "backfill_partition")}
    summary = (local_airflow.task_results(run, "summarize") or [{}])[0] or {}
    out["summary"] = {k: summary.get(k) for k in ("rows_read", "ingested", "duplicates", "rejected",
                                                  "rows_planned", "problems")}
    return out


if __name__ == "__main__":
    print(json.dumps(probe()))
