"""What the engine counts as it works, for whatever the Airflow side sends it to.

The engine moves a ``Meter`` (counts and seconds, by name); the Airflow side gives it
one backed by Airflow's Stats (``airflow.metrics``), so StatsD, Datadog or
OpenTelemetry get them as Airflow's own metrics. Without one nothing is sent.
"""

from __future__ import annotations

from typing import Protocol


class Meter(Protocol):
    def count(self, name: str, n: int = 1) -> None: ...

    def seconds(self, name: str, seconds: float) -> None: ...


class NoMeter:
    """Counts nothing."""

    def count(self, name: str, n: int = 1) -> None:
        return None

    def seconds(self, name: str, seconds: float) -> None:
        return None
