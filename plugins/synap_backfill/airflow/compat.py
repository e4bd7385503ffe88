"""The Airflow APIs that moved between the supported minors (3.1 to 3.3), bridged in one place.

The rest of the package imports Airflow's names directly and never branches on a version;
a name that lives in different modules across the range is asked for here. Each bridge is
the ``apache-airflow-providers-common-compat`` provider's, which Airflow's own providers use
for the same purpose: it tries the newest location first.

- ``stats()``: Airflow's metrics (``airflow.sdk.observability.stats`` from 3.2 or so,
  ``airflow.stats`` in 3.1).
- ``hook_lineage_collector()``: the collector hooks report their reads and writes to
  (``airflow.sdk.lineage`` in 3.3, ``airflow.lineage.hook`` before).
- ``AirflowFailException``, ``AirflowSkipException``: ``airflow.sdk.exceptions`` from 3.2,
  ``airflow.exceptions`` in 3.1.

The tasks import this module when they run: a DAG file's parse imports none of it.

May import: nothing of this package
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException

__all__ = ["AirflowFailException", "AirflowSkipException", "hook_lineage_collector", "stats"]


def stats() -> Any:
    """Airflow's ``Stats``: ``incr``, ``timing``, ``gauge`` with tags."""
    from airflow.providers.common.compat.sdk import Stats

    return Stats


def hook_lineage_collector() -> Any:
    """The running task's hook lineage collector (a no-op one when lineage is off)."""
    from airflow.providers.common.compat.lineage.hook import get_hook_lineage_collector

    return get_hook_lineage_collector()
