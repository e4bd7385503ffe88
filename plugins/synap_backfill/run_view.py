"""What the operator's view shows of one run, and of each Synap target: read from the ledger.

Plain Python over a ledger connection: the UI plugin's app (``synap_provider.ui_app``)
adds what Airflow's metadata knows (task states, XCom failures) and serves it.
Counts, window labels, row keys and reason codes only: never message text,
never a secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from synap_backfill.common.db import quote_identifier
from synap_backfill.deletion.undo import UndoReport
from synap_backfill.delivery.accounting import PartitionReport

REJECTS_PAGE = 100


@dataclass
class PartitionProgress:
    """One partition as its latest checkpoint has it: its counts, whether it finished, when."""

    report: PartitionReport
    finished: bool = False
    updated_at: float | None = None


def partitions(conn: Any, schema: str, dag_id: str, run_id: str) -> dict[str, PartitionProgress]:
    """Each partition of a backfill run that has checkpointed, by window key."""
    s = quote_identifier(schema)
    rows = _all(conn, f"SELECT window_key, partition, report, finished, extract(epoch FROM updated_at)"
                      f" FROM {s}.checkpoints WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
    return {key: PartitionProgress(PartitionReport.from_xcom({**_json(report), "label": label}),
                                   bool(finished), float(updated) if updated else None)
            for key, label, report, finished, updated in rows}


def ledger_written(conn: Any, schema: str) -> bool:
    """Whether a run has written to the ledger: its tables exist (the first plan makes them)."""
    return bool(_all(conn, "SELECT to_regclass(%s) IS NOT NULL",
                     (f"{quote_identifier(schema)}.runs",))[0][0])


def run_plan(conn: Any, schema: str, dag_id: str, run_id: str) -> Mapping[str, Any]:
    """The plan's figures the ledger recorded for the run ({} before planning)."""
    s = quote_identifier(schema)
    rows = _all(conn, f"SELECT plan, target, source, id FROM {s}.runs WHERE dag_id = %s AND"
                      " run_id = %s", (dag_id, run_id))
    if not rows:
        return {}
    plan, target, source, run = rows[0]
    return {**_json(plan), "target": target, "source": source, "run": int(run)}


@dataclass
class RejectsPage:
    total: int
    by_reason: dict[str, int]
    rows: list[dict[str, Any]]  # partition, row number, row key, reason
    next_after: str | None  # the cursor of the next page


def rejects(conn: Any, schema: str, dag_id: str, run_id: str, *, after: str | None = None,
            limit: int = REJECTS_PAGE) -> RejectsPage:
    """The run's rejected rows: counts by reason, then one page of row keys (keyset-paged)."""
    s = quote_identifier(schema)
    by_reason = {reason: int(n) for reason, n in _all(
        conn, f"SELECT reason, count(*) FROM {s}.rejected_rows WHERE dag_id = %s AND run_id = %s"
              " GROUP BY reason ORDER BY count(*) DESC, reason", (dag_id, run_id))}
    cursor = ("", -1)
    if after:
        key, _, number = after.rpartition("#")
        cursor = (key, int(number or -1))
    rows = _all(conn, f"SELECT window_key, partition, row_number, row_key, reason"
                      f" FROM {s}.rejected_rows WHERE dag_id = %s AND run_id = %s"
                      " AND (window_key, row_number) > (%s, %s) ORDER BY window_key, row_number"
                      " LIMIT %s", (dag_id, run_id, cursor[0], cursor[1], limit + 1))
    page = [{"partition": label, "row": int(number), "key": key, "reason": reason}
            for _, label, number, key, reason in rows[:limit]]
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    return RejectsPage(sum(by_reason.values()), by_reason, page,
                       f"{last[0]}#{last[2]}" if last else None)


@dataclass
class UndoProgress:
    key: str
    report: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


def undo_partitions(conn: Any, schema: str, undone_run: int) -> dict[str, UndoProgress]:
    s = quote_identifier(schema)
    return {key: UndoProgress(key, _json(report), bool(finished)) for key, report, finished in _all(
        conn, f"SELECT window_key, report, finished FROM {s}.undo_checkpoints WHERE target = %s",
        (undone_run,))}


@dataclass
class TargetView:
    """A Synap instance as the ledger knows it: what it holds of each source, and its runs."""

    target: str
    holdings: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    # Persons erased (their keyed hash and the date, never an id): held back from every target.
    suppressions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SurveyProgress:
    """A dry run's surveys so far, by part (partition or instance): what its view shows."""

    parts: dict[str, dict[str, Any]]

    def totals(self, estimate: Mapping[str, Any] | None) -> dict[str, Any]:
        """Documents surveyed of those to survey, memories found (and, from a sample, the
        estimate for all), the rate (running parts' rates added up) and the time left."""
        reports = list(self.parts.values())
        surveyed = sum(int(r.get("documents") or 0) for r in reports)
        to_survey = int((estimate or {}).get("calls") or 0) or sum(
            int(r.get("total") or 0) for r in reports)
        rate = sum(int(r.get("documents") or 0) / float(r["seconds"]) for r in reports
                   if not r.get("finished") and float(r.get("seconds") or 0) > 0)
        memories = sum(int(r.get("memories") or 0) for r in reports)
        scaled = sum(UndoReport.from_xcom({**r, "label": part, "key": part}).memories_estimate
                     for part, r in self.parts.items())
        left = max(0, to_survey - surveyed)
        return {"surveyed": surveyed, "of": to_survey, "memories": memories,
                "memories_estimate": scaled, "sampled": any(r.get("sampled") for r in reports),
                "rate": round(rate, 2) if rate else None,
                "seconds_left": (left / rate) if rate else None,
                "estimate": (estimate or {}).get("line"),
                "finished": bool(reports) and all(r.get("finished") for r in reports)
                and surveyed >= to_survey}


def survey_progress(conn: Any, schema: str, dag_id: str, run_id: str) -> SurveyProgress:
    from synap_backfill.deletion.undo_ledger import surveys

    return SurveyProgress(surveys(conn, schema, dag_id, run_id))


def targets(conn: Any, schema: str, dag_ids: Iterable[str] | None = None,
            runs_per_target: int = 50) -> list[TargetView]:
    """Every target the ledger knows, with its holdings and its latest runs.

    ``dag_ids``: what the user may read (None: all). Only runs of these DAGs are listed,
    only holdings one of them wrote to, and only suppressions one of them recorded.
    """
    s = quote_identifier(schema)
    allowed = None if dag_ids is None else list(dag_ids)
    views: dict[str, TargetView] = {}
    for target, source, rows, buckets, last in _all(
            conn, f"SELECT h.target, h.source, COALESCE(sum(i.row_count), 0), count(i.bucket),"
                  f" (SELECT r.run_id FROM {s}.runs r WHERE r.holding = h.id AND NOT r.dry_run"
                  f"  ORDER BY r.planned_at DESC LIMIT 1)"
                  f" FROM {s}.holdings h LEFT JOIN {s}.inventory i ON i.holding = h.id"
                  f" WHERE %s::text[] IS NULL OR EXISTS (SELECT 1 FROM {s}.runs r"
                  "  WHERE r.holding = h.id AND r.dag_id = ANY(%s::text[]))"
                  " GROUP BY h.id, h.target, h.source ORDER BY h.target, h.source",
            (allowed, allowed)):
        view = views.setdefault(target, TargetView(target))
        view.holdings.append({"source": source, "rows": int(rows), "buckets": int(buckets),
                              "last_run": last})
    for target, dag_id, run_id, source, dry, planned, finished, summary, undone in _all(
            conn, f"SELECT r.target, r.dag_id, r.run_id, r.source, r.dry_run,"
                  f" extract(epoch FROM r.planned_at), extract(epoch FROM r.finished_at), r.summary,"
                  f" EXISTS (SELECT 1 FROM {s}.undo_checkpoints u WHERE u.target = r.id)"
                  f" FROM {s}.runs r WHERE r.target <> ''"
                  " AND (%s::text[] IS NULL OR r.dag_id = ANY(%s::text[]))"
                  " ORDER BY r.planned_at DESC", (allowed, allowed)):
        view = views.setdefault(target, TargetView(target))
        if len(view.runs) >= runs_per_target:
            continue
        done = _json(summary) if summary else {}
        view.runs.append({"dag_id": dag_id, "run_id": run_id, "source": source, "dry_run": bool(dry),
                          "planned_at": float(planned) if planned else None,
                          "finished_at": float(finished) if finished else None,
                          "ingested": done.get("ingested"), "rows_planned": done.get("rows_planned"),
                          "parity": done.get("parity"), "undo_started": bool(undone)})
    erased = [{"person": person, "recorded_at": float(at)} for person, at in _all(
        conn, f"SELECT person, extract(epoch FROM recorded_at) FROM {s}.suppressions"
              " WHERE %s::text[] IS NULL OR dag_id = ANY(%s::text[])"
              " ORDER BY recorded_at DESC LIMIT 200", (allowed, allowed))]
    for view in views.values():
        view.suppressions = erased
    return sorted(views.values(), key=lambda v: v.target)


def _all(conn: Any, sql: str, args: Any = None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        rows = cur.fetchall()
    conn.commit()
    return rows


def _json(value: Any) -> Any:
    if isinstance(value, (bytes, memoryview)):
        value = bytes(value).decode()
    return json.loads(value) if isinstance(value, str) else (value or {})
