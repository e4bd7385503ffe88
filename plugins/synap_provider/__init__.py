"""Synap provider: the ``synap`` connection type, ``SynapHook`` and the connection check.

Registered with Airflow through the ``apache_airflow_provider`` entry point
(``pyproject.toml``). Importing the package imports nothing heavy: the
connection check plugin loads it in every Airflow process, DAG parsing included.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SynapHook"]


def __getattr__(name: str) -> Any:
    if name == "SynapHook":
        from synap_provider.hooks import SynapHook

        return SynapHook
    raise AttributeError(name)
