"""The ``apply_source_changes`` task: make what Synap holds follow the source's edits and deletions.

Runs after the plan (and its approval), before any partition sends. With
``apply_source_changes: apply``, for every held turn the plan found edited or
deleted (``changes.py``) it deletes the memories of the document the target
holds for it, exactly as undo does (``deletion.undo.undo_partition``: paced on the
target's shared schedule, a write-ahead mark before a document's first delete,
a checkpoint after each document, a memory already gone counted as such, so a
killed worker's retry deletes nothing twice). Each such document is recorded as
undone, and forgotten from ``held_turns``: the partitions then send an edited
turn's current version under its next generation's id (``...:u1``), so the
target ends holding one live document for it, with its current text.

With ``report`` (the default), in a dry run, or with nothing found, it only
counts. Its XCom: counts, never ids or text.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import closing
from typing import Any, Iterable, Mapping

from synap_backfill.airflow.metrics import deletion_observed
from synap_backfill.common.config import BackfillConfig
from synap_backfill.common.windows import window_key
from synap_backfill.deletion.memories import Place, delete_memories
from synap_backfill.deletion.undo import Document, UndoReport
from synap_backfill.delivery.target import SynapTarget
from synap_backfill.holdings.changes import (
    SourceChanges,
    TurnChange,
    load_changes,
    mark_applied,
    pending_buckets,
)
from synap_backfill.holdings.guard import applied_to_let_go
from synap_backfill.holdings.inventory import Inventory
from synap_backfill.planner.difference import PlannedPartition
from synap_backfill.planner.layout import in_plan

log = logging.getLogger("synap_backfill")
CHANGES_KEY = "source-changes"  # the undo ledger's partition key for a run's source changes


def apply_source_changes(config_dict: Mapping[str, Any], windows: Iterable[Mapping[str, Any]] | None,
                         *, dag_id: str, run_id: str) -> dict[str, Any]:
    """Delete the memories of held turns the source edited or deleted (``apply``), or count them."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    config = BackfillConfig.from_dict(config_dict)
    ledger_hook = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)
    with closing(ledger_hook.get_conn()) as conn:
        record = Inventory(conn, config.ledger_schema).run(dag_id, run_id)
        found = load_changes(conn, config.ledger_schema, record.id) if record else SourceChanges()
    planned = [PlannedPartition.from_dict(w) for w in windows or []]
    changes = [c for c in found.changes if _sent_by(c, planned)]
    result: dict[str, Any] = {"mode": config.apply_source_changes, "edited": len(found.edited),
                              "deleted": len(found.deleted), "applied": False}
    if not changes:
        return result
    if config.apply_source_changes != "apply" or config.dry_run or record is None:
        log.info("%d edited and %d deleted turns found; %s", len(found.edited), len(found.deleted),
                 "a dry run: nothing is deleted" if config.dry_run else
                 "apply_source_changes is report: Synap is left as it is")
        return result
    if len(changes) < len(found.changes):
        log.info("a sample run: applying the %d changes whose turns its partitions send again, of"
                 " %d", len(changes), len(found.changes))
    report = _delete(config, record.id, record.holding, changes, run_id, dag_id)
    with closing(ledger_hook.get_conn()) as conn:
        inventory = Inventory(conn, config.ledger_schema)
        # A change is applied once its held document is forgotten (its memories deleted);
        # the others stay pending, and their buckets are not held as read by this run.
        pending = (mark_applied(conn, config.ledger_schema, record.id, record.holding)
                   if record.holding is not None else len(found.changes))
        unheld = pending_buckets(conn, config.ledger_schema, record.id)
        held_now = inventory.held(record.holding) if record.holding is not None else {}
        empty = applied_to_let_go(changes, found, unheld, held_now, planned)
        if record.holding is not None and empty:
            inventory.release(record.holding, empty)
    result.update(applied=True, documents=report.documents, memories_deleted=report.deleted,
                  already_gone=report.already_gone, failed=dict(report.failed),
                  without_id=report.without_id, not_reached=dict(report.not_reached),
                  pending=pending, requests=report.requests, seconds=round(report.seconds, 1))
    log.info("source changes applied: the memories of %d documents (%d edited, %d deleted turns):"
             " %d deleted, %d already gone, %d failed, %d without an ingestion id, %d not reached;"
             " %d requests, %.1f s (listed in %s.undo_unreached)", report.documents,
             sum(1 for c in changes if c.kind == "edited"),
             sum(1 for c in changes if c.kind == "deleted"), report.deleted, report.already_gone,
             report.failed_total, report.without_id, sum(report.not_reached.values()),
             report.requests, report.seconds, config.ledger_schema)
    if pending:
        log.warning("%d source changes are not applied yet (not reached, or without an ingestion"
                    " id): Synap still holds their old version, their buckets are not held as read,"
                    " and the next run finds and applies them", pending)
    if report.failed:
        from synap_backfill.airflow.compat import AirflowFailException

        raise AirflowFailException(
            f"source changes: {report.failed_total} memories could not be deleted: "
            + "; ".join(f"{n} x {r}" for r, n in report.failed.items())
            + f" (listed in {config.ledger_schema}.undo_unreached); nothing was sent")
    return result


def _sent_by(change: TurnChange, planned: list[PlannedPartition]) -> bool:
    """A deletion always applies; an edit only where a partition of this run sends the turn again
    (a sample run sends some partitions: the others' edits wait, held, for a run that does)."""
    return change.kind == "deleted" or (change.source_bucket is not None
                                        and in_plan(change.source_bucket, planned))


def _delete(config: BackfillConfig, run: int, holding: int | None, changes: list[TurnChange],
            run_id: str, dag_id: str) -> UndoReport:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    ledger_hook = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)
    synap = SynapTarget.connect(config.synap_conn_id)
    report = UndoReport("source changes", window_key(CHANGES_KEY, None))
    ids = [c.ingestion_id for c in changes if c.ingestion_id is not None]
    documents = [Document(n, ingestion_id) for n, ingestion_id in enumerate(ids, start=1)]
    without_id = [c.document_id for c in changes if c.ingestion_id is None]

    asyncio.run(delete_memories(
        synap, ledger_hook.get_conn, config.ledger_schema, instance=config.target,
        documents=documents, without_id=without_id, report=report,
        place=Place(run, CHANGES_KEY, holding, "", run_id), wait_seconds=config.extraction_wait,
        label="source changes"))
    deletion_observed(synap.hook, config.target, report, dag_id)
    return report
