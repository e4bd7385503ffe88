"""The operator's view as an Airflow 3 plugin: a "Synap" tab on every run page, a targets view.

Registered through the ``airflow.plugins`` entry point, so every Airflow process loads it:
the scheduler, the DAG processor and each task's worker process too (for listeners and
hook lineage). The FastAPI app (``synap_provider.ui_app``) imports FastAPI and the API
server's auth manager, which no worker needs; it is imported when Airflow asks for the
plugin's apps, which only the API server (and ``airflow plugins``) does.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin


class SynapUIPlugin(AirflowPlugin):
    """The operator's view: the FastAPI app, the run tab and the targets page."""

    name = "synap_ui"
    external_views = [
        {"name": "Synap", "href": "/synap/runs/{DAG_ID}/{RUN_ID}", "destination": "dag_run",
         "url_route": "synap-run"},
        {"name": "Synap targets", "href": "/synap/targets", "destination": "nav",
         "url_route": "synap-targets", "category": "browse"},
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The app, imported on first ask: a worker loading the plugin never pays for it."""
        from synap_provider.ui_app import app

        return [{"app": app, "url_prefix": "/synap", "name": "Synap operator's view"}]
