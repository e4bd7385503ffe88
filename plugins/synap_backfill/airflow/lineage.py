"""What each task reads and changes, told to Airflow's hook-level lineage collector.

With Airflow's OpenLineage provider installed and a transport configured, the
collector's inputs and outputs become each task's OpenLineage datasets: the source
relation as ``postgres://<host>:<port>`` (``localhost`` for a Unix socket),
``<database>.<schema>.<relation>`` (the postgres provider's own convention), and a
Synap instance as ``synap://<API host>``, ``<instance id>`` (``synap_provider.assets``),
with the task's counts as a facet.
Without the provider (or without a transport) the collector takes nothing: no cost.
Never a key, a text or an id in clear: relation names, instance ids and counts.

The events a task emits when it ends carry them; its start event cannot (a TaskFlow
task's lineage is known once it has run).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

log = logging.getLogger("synap_backfill")


def _collector() -> Any:
    from synap_backfill.airflow.compat import hook_lineage_collector

    return hook_lineage_collector()


def source_host(host: str | None) -> str:
    """The namespace's host: the connection's, or ``localhost`` for a Unix socket (a path)."""
    return "localhost" if not host or host.startswith("/") else host


def source_read(hook: Any, source: str) -> None:
    """The task read ``source`` (``database.schema.relation``) through ``hook`` (a PostgresHook)."""
    try:
        database, schema, table = source.split(".", 2)
        conn = hook.get_connection(getattr(hook, hook.conn_name_attr))
        _collector().add_input_asset(context=hook, scheme="postgres", asset_kwargs={
            "host": source_host(conn.host), "port": int(conn.port or 5432),
            "database": database, "schema": schema, "table": table})
    except Exception as exc:  # lineage never fails the work it describes
        log.debug("lineage of %s not reported: %s", source, type(exc).__name__)


def target_changed(hook: Any, instance: str, counts: Mapping[str, Any] | None = None) -> None:
    """The task wrote to (or deleted from) Synap ``instance`` through ``hook`` (a SynapHook)."""
    from synap_provider.assets import SCHEME, host_of

    if not instance:
        return
    try:
        _collector().add_output_asset(
            context=hook, scheme=SCHEME,
            asset_kwargs={"host": host_of(hook.settings.base_url), "instance": instance},
            asset_extra={"counts": {k: v for k, v in (counts or {}).items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool)}})
    except Exception as exc:
        log.debug("lineage of %s not reported: %s", instance, type(exc).__name__)
