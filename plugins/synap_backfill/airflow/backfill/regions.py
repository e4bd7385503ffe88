"""The region replay config (a ``regions.yaml``): one replay DAG per entry.

Read when the DAG file is parsed: a local file, no database or network. The
DAG file names its project's file (this repository's is ``include/regions.yaml``);
``SYNAP_REGIONS_FILE`` overrides it. No file means no replay DAGs. A malformed
entry raises an error naming the region and the field, which Airflow shows as
an import error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synap_backfill.common.checks import ParamError, timestamp
from synap_backfill.common.source import SourceDeclaration

AFTER_PRIMARY = "after_primary"
_NAME = re.compile(r"^[a-z0-9_]{1,40}$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")


class RegionConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Region:
    name: str
    synap_conn_id: str
    schedule: str | None = None
    start: str | None = None
    end: str | None = None
    pool: str = ""
    postgres_conn_id: str | None = None
    source_table: str | None = None

    @property
    def dag_id(self) -> str:
        return f"synap_replay_{self.name}"

    @property
    def pool_name(self) -> str:
        return self.pool or f"synap_{self.name}"

    def source(self, primary: SourceDeclaration | None) -> SourceDeclaration | None:
        """The primary's declaration with what this entry changes explicitly: its Synap
        connection, and a source connection or relation where it names one."""
        if primary is None:
            return None
        return primary.overriding(f"{primary.origin}, region {self.name!r} of regions.yaml",
                                  synap_conn_id=self.synap_conn_id,
                                  postgres_conn_id=self.postgres_conn_id,
                                  source_table=self.source_table)

    def param_defaults(self, declared: bool = False) -> dict[str, Any]:
        """What this region changes in the backfill's trigger form: its range, and without a
        declaration (deprecated) its connections and relation."""
        out: dict[str, Any] = {"start": self.start, "end": self.end}
        if declared:
            return out
        out["synap_conn_id"] = self.synap_conn_id
        if self.postgres_conn_id:
            out["postgres_conn_id"] = self.postgres_conn_id
        if self.source_table:
            out["source_table"] = self.source_table
        return out


def regions_file(default: Path | str | None = None) -> Path | None:
    """``SYNAP_REGIONS_FILE`` when set, else the DAG file's own choice (None: no regions)."""
    chosen = os.environ.get("SYNAP_REGIONS_FILE") or default
    return Path(chosen) if chosen else None


def load_regions(default: Path | str | None = None) -> list[Region]:
    """The regions of ``regions_file(default)``; an empty list when there is no such file."""
    import yaml

    path = regions_file(default)
    if path is None or not path.exists():
        return []
    raw = yaml.safe_load(path.read_text()) or {}
    entries = raw.get("regions") or []
    if not isinstance(entries, list):
        raise RegionConfigError(f"{path}: 'regions' must be a list")
    regions = [_region(entry, i, path) for i, entry in enumerate(entries)]
    names = [r.name for r in regions]
    if len(set(names)) != len(names):
        raise RegionConfigError(f"{path}: region names must be unique, got {names}")
    return regions


def _region(entry: Any, index: int, path: Path) -> Region:
    where = f"{path}: region #{index + 1}"
    if not isinstance(entry, dict):
        raise RegionConfigError(f"{where}: must be a mapping")
    unknown = set(entry) - set(Region.__dataclass_fields__)
    if unknown:
        raise RegionConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    name = str(entry.get("name") or "")
    if not _NAME.match(name):
        raise RegionConfigError(f"{where}: 'name' must be lowercase letters, digits and _")
    where = f"{path}: region {name!r}"
    conn_id = str(entry.get("synap_conn_id") or "")
    if not _CONN_ID.match(conn_id):
        raise RegionConfigError(f"{where}: 'synap_conn_id' is required")
    schedule = entry.get("schedule")
    if schedule is not None and (not isinstance(schedule, str) or not schedule.strip()):
        raise RegionConfigError(f"{where}: 'schedule' must be {AFTER_PRIMARY!r}, a cron "
                                "expression or preset, or null")
    try:
        start = timestamp("start", entry.get("start"))
        end = timestamp("end", entry.get("end"))
    except ParamError as exc:
        raise RegionConfigError(f"{where}: {exc}") from None
    if (start is None) != (end is None) or (start and end and end <= start):
        raise RegionConfigError(f"{where}: give both start and end (end after start), or neither")
    return Region(name=name, synap_conn_id=conn_id, schedule=schedule,
                  start=start.isoformat() if start else None, end=end.isoformat() if end else None,
                  pool=str(entry.get("pool") or ""), postgres_conn_id=entry.get("postgres_conn_id"),
                  source_table=entry.get("source_table"))
