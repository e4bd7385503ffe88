"""The engine's counts as Airflow metrics: ``synap_backfill.<name>``, tagged by DAG and target.

Sent through Airflow's own Stats (``compat.stats()``, which the task runner
sets up from ``[metrics]``): StatsD with ``statsd_on`` (the distribution's ``metrics`` extra
brings its client), Datadog, or OpenTelemetry. Plain StatsD drops tags; the names alone add
up across DAGs and targets then. The table of names is in docs/operating.md, "Metrics".
"""

from __future__ import annotations

import logging
from datetime import timedelta

log = logging.getLogger("synap_backfill")
PREFIX = "synap_backfill"


class StatsMeter:
    """A ``common.metrics.Meter`` on Airflow's Stats; a metric that cannot go is dropped quietly."""

    def __init__(self, dag_id: str, target: str = "") -> None:
        self.tags = {"dag_id": dag_id, **({"target": target} if target else {})}

    def count(self, name: str, n: int = 1) -> None:
        if n:
            self._send("incr", name, int(n))

    def seconds(self, name: str, seconds: float) -> None:
        if seconds:
            self._send("timing", name, timedelta(seconds=seconds))

    def _send(self, kind: str, name: str, value: object) -> None:
        try:
            from synap_backfill.airflow.compat import stats

            getattr(stats(), kind)(f"{PREFIX}.{name}", value, tags=self.tags)
        except Exception as exc:  # metrics never fail the work they count
            log.debug("metric %s not sent: %s", name, type(exc).__name__)


def deletion_observed(hook: object, instance: str, report: object, dag_id: str) -> None:
    """An apply's, undo's or erasure's deletions, told to lineage and to the metrics."""
    from synap_backfill.airflow.lineage import target_changed

    counts = report.to_xcom()  # type: ignore[attr-defined]
    if counts.get("dry_run"):
        return
    target_changed(hook, instance, {k: counts.get(k) for k in
                                    ("documents", "memories", "deleted", "already_gone")})
    meter = StatsMeter(dag_id, instance)
    meter.count("memories.deleted", int(counts.get("deleted") or 0))
    meter.count("delete_requests", int(counts.get("requests") or 0))
