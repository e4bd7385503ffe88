"""``plan_partitions``: window bounds for the mapped partitions (small dicts, never rows),
planned by difference against what the target holds."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from datetime import datetime
from typing import Any, Mapping

from synap_backfill.airflow.lineage import source_read
from synap_backfill.airflow.shared import failure_to_xcom
from synap_backfill.common.buckets import UNTIMED, bucket_label
from synap_backfill.common.config import BackfillConfig
from synap_backfill.common.windows import Grid
from synap_backfill.delivery.credits import credits_for
from synap_backfill.extract import sources
from synap_backfill.extract.copies import save_copies
from synap_backfill.extract.reader import (
    bucket_counts,
    copies_at_different_times,
    skipped_messages,
    timestamp_index,
    turns_are_unique,
)
from synap_backfill.holdings.changes import SourceChanges, find_changes, save_changes
from synap_backfill.holdings.changes import describe as describe_changes
from synap_backfill.holdings.guard import DeletionRefused, emptied_to_let_go, guard_deletes
from synap_backfill.holdings.held_turns import held_turn_count
from synap_backfill.holdings.inventory import Inventory
from synap_backfill.planner.difference import (
    Difference,
    conflict_message,
    describe_range,
    difference,
    lost_ranges,
)
from synap_backfill.planner.layout import lay_out

log = logging.getLogger("synap_backfill")

UNINDEXED_PARTITIONS = 8  # full scans a plan may cost when the timestamp column has no index
DELETIONS_KEPT = 100  # buckets with deleted rows, kept with the run for its summary


def plan_partitions(config_dict: Mapping[str, Any], *, dag_id: str = "synap_backfill",
                    run_id: str = "manual", ti: Any = None) -> list[dict[str, Any]]:
    """Window bounds for the mapped partitions: small dicts, never rows.

    One pass counts every row into the inventory's buckets, with the fingerprint of
    their keys (with no start and end, the relation's whole range); buckets the target
    holds unchanged are skipped (``planner.difference``). Rows without a usable timestamp get a
    partition of their own that rejects them with a reason, so none is lost. One more
    pass lists the turns the source holds at several timestamps, for the ledger, so
    each partition sends only the earliest copy. A failure's one-line reason also goes
    to XCom (key ``failure``) for the summary.
    """

    config = BackfillConfig.from_dict(config_dict)
    with failure_to_xcom(ti):
        return _plan(config, dag_id, run_id)


def _plan(config: BackfillConfig, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.source_hook import source_hook as read_only

    grid = Grid.of(config.window_size, config.partition_timezone)
    # A scheduled run counts from the first row, to see late rows before its interval.
    start = None if config.lookback else config.start
    ledger_hook = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)
    source_hook = read_only(config.postgres_conn_id, config.source_statement_timeout)
    with closing(source_hook.get_conn()) as conn, closing(ledger_hook.get_conn()) as ledger_conn, \
            ThreadPoolExecutor(max_workers=1) as background:
        inventory = Inventory(ledger_conn, config.ledger_schema)  # tables: resolve_config made them
        holding = inventory.holding(config.target, config.source) if config.target else None
        held = inventory.held(holding) if holding is not None else {}
        unique = turns_are_unique(conn, config)
        early_copies = None
        if not held and not unique:
            # A first run reads every row: look for copies meanwhile, on a connection of its own
            # (the database runs both aggregates at once).
            def copies_everywhere() -> list[tuple[str, datetime, datetime]]:
                with closing(source_hook.get_conn()) as other:
                    return copies_at_different_times(other, config, start, config.end)
            early_copies = background.submit(copies_everywhere)
        counted = bucket_counts(conn, config, start=start, end=config.end)
        skipped = skipped_messages(conn, config, start, config.end)  # a message table's: by reason
        if skipped:
            log.info("%d messages of %s make no turn's text: %s", sum(skipped.values()),
                     config.source_table, "; ".join(f"{n} {reason}" for reason, n in skipped.items()))
        source_read(source_hook, config.source)
        timed_buckets = [c for c in counted if c.bucket != UNTIMED]
        if config.start is None and config.end is None:
            first, last = ((grid.window(grid.window_of(timed_buckets[i].bucket)).label for i in (0, -1))
                           if timed_buckets else ("", ""))
            log.info("%s holds %d rows with a usable timestamp%s, and %d without (NULL, infinite"
                     " or outside the years 1-9999)", config.source_table,
                     sum(c.rows for c in timed_buckets),
                     f", from the window {first} to {last}" if timed_buckets else "",
                     sum(c.rows for c in counted if c.bucket == UNTIMED))
        diff = difference(counted, held, digest=config.settings_digest,
                          resend=config.resend_unchanged, start=start, end=config.end,
                          lookback_before=config.start if config.lookback else None,
                          covered=inventory.covered(holding) if config.lookback and holding else (),
                          settings=config.document_settings())
        if diff.conflicts:
            from synap_backfill.airflow.compat import AirflowFailException

            raise AirflowFailException(conflict_message(
                diff.conflicts, config.document_settings(), source=config.source,
                target=config.target))
        _log_difference(config, diff, held)
        cap = config.max_partitions
        if diff.planned and timestamp_index(conn, config) is False:
            cap = min(cap, UNINDEXED_PARTITIONS)
            log.warning("%s has no index on %s: every partition reads the whole table, so this plan"
                        " keeps to %d partitions, larger than max_rows_per_partition if need be."
                        " To let partitions read only their window: %s", config.source_table,
                        config.columns.created_at, cap, sources.turns(config).index_hint())
        plan = lay_out(diff, grid, start=start, end=config.end,
                       max_rows=config.max_rows_per_partition, min_rows=config.min_rows_per_partition,
                       max_partitions=cap)
        # Turn by turn inside the changed buckets; not where the texts could not be read. A
        # turn that left them may have moved to a bucket never held: an edit, not a deletion.
        readable = all(c.content is not None for c in counted)
        changes = (find_changes(conn, ledger_conn, config, holding, diff.changed - {UNTIMED},
                                new_buckets=[c.bucket for c in diff.planned
                                             if c.bucket not in held and c.bucket != UNTIMED])
                   if holding is not None and diff.changed and readable else SourceChanges())
        if changes.changes:
            plan.partitions = [replace(p, edited=changes.count_in("edited", p.start, p.end),
                                       deleted=changes.count_in("deleted", p.start, p.end))
                               if p.timed else p for p in plan.partitions]
        timed = [p for p in plan.partitions if p.timed]
        copies = []
        if timed and unique:
            log.info("%s has a unique index on (%s, %s): it holds no copies of a turn; not"
                     " looking for them", config.source_table, config.columns.conversation_id,
                     config.columns.message_index)
        elif early_copies is not None:
            copies = early_copies.result()
        elif timed:
            copies = copies_at_different_times(conn, config, min(p.ranges[0][0] for p in timed),
                                               max(p.ranges[-1][1] for p in timed))
        planned = plan.partitions
        sampling = bool(config.sample_partitions and config.sample_partitions < len(planned))
        if sampling:
            planned = _spread(timed, min(config.sample_partitions, len(timed)))
        # Before anything is deleted or the inventory changes: what the run would delete.
        lost = lost_ranges(diff, counted)
        try:
            frozen = guard_deletes(config, changes, diff, lost, planned,
                                   lambda: held_turn_count(ledger_conn, config.ledger_schema,
                                                           holding),
                                   lambda: sum(b.rows for b in held.values()))
        except DeletionRefused as exc:
            from synap_backfill.airflow.compat import AirflowFailException

            raise AirflowFailException(str(exc)) from None
        save_copies(ledger_conn, config.ledger_schema, dag_id, run_id, copies)
        credits = (credits_for(config, plan.rows) if plan.partitions and not config.dry_run
                   else None)
        run = inventory.record_run(
            dag_id, run_id, holding=holding, target=config.target, source=config.source,
            synap_conn_id=config.synap_conn_id, digest=config.settings_digest,
            settings=config.document_settings(), start=config.start, end=config.end,
            lookback=config.lookback, dry_run=config.dry_run,
            plan={"postgres_conn_id": config.postgres_conn_id, "source_table": config.source_table,
                  "rows": plan.rows, "unchanged": diff.unchanged_rows,
                  "unchanged_buckets": len(diff.unchanged),
                  "unchanged_outside": plan.unchanged_outside, "new": diff.new_rows,
                  "changed": diff.changed_rows, "partitions": len(plan.partitions),
                  "deleted_rows": diff.deleted_rows,
                  "source_changes": {**describe_changes(changes), "by_bucket": changes.by_bucket(),
                                     "apply": config.apply_source_changes},
                  "deletions": [[d.bucket, d.held, d.now, d.holder.run_id]
                                for d in diff.deletions[:DELETIONS_KEPT]],
                  "lost_ranges": [describe_range(lo, hi) for lo, hi in lost[:DELETIONS_KEPT]],
                  "frozen": frozen, "isolation": config.isolation, "skipped_messages": skipped,
                  "credits_estimate": credits.estimate if credits else None,
                  "credits_metric": credits.metric if credits else None})
        inventory.save_plan(run, plan.buckets)
        save_changes(ledger_conn, config.ledger_schema, run, changes)
        if holding is not None and diff.adopt and not config.dry_run:
            inventory.adopt_content(holding, diff.adopt)
        # Unless the source looks emptied by accident (frozen): nothing left there to hold.
        gone = emptied_to_let_go(diff, changes)
        if holding is not None and gone and not config.dry_run and not frozen:
            inventory.release(holding, gone)
    if copies:
        log.info("%d turns (conversation_id, message_index) are held by several rows at different"
                 " times: the earliest row of each is sent, the others are rejected as copies",
                 len(copies))
    _check_unusable(config, plan)
    if credits is not None:
        log.info("Synap credits for the whole plan: %s", credits.describe())
        if credits.short and not sampling:
            from synap_backfill.airflow.compat import AirflowFailException

            raise AirflowFailException(
                f"not enough Synap credits: the plan needs {credits.describe()}; nothing was sent"
                " (add credits, or send less: start/end, sample_partitions)")
    if sampling:
        whole = {"partitions": len(plan.partitions), "rows": plan.rows,
                 "credits": credits.describe() if credits else None,
                 "credits_estimate": credits.estimate if credits else None}
        planned = [p.with_sample(whole) for p in planned]
        log.info("sample run: %d of %d partitions, about %d of %d rows", len(planned),
                 len(plan.partitions), sum(p.rows for p in planned), plan.rows)
    log.info("planned %d partition%s for about %d rows%s", len(planned),
             "" if len(planned) == 1 else "s", sum(p.rows for p in planned),
             f": {planned[0].label}" if len(planned) == 1 else
             f", from {planned[0].label} to {planned[-1].label}" if planned else "")
    return [p.to_dict() for p in planned]


def _check_unusable(config: BackfillConfig, plan: Any) -> None:
    """State the share of rows without a usable timestamp; fail before sending when they alone
    are more than ``max_rejected_share`` of the rows to read (each would be rejected anyway,
    and the run would fail at its end, after hours of sending the rest)."""
    from synap_backfill.airflow.compat import AirflowFailException

    unusable = sum(p.rows for p in plan.partitions if not p.timed)
    if not unusable:
        return
    share = unusable / plan.rows if plan.rows else 1.0
    column = config.columns.created_at
    log.info("%d of %d rows to read (%.2f%%) have no usable %s (NULL, or outside what a timestamp"
             " can hold): they are read last and rejected with that reason", unusable, plan.rows,
             share * 100, column)
    if share > config.max_rejected_share and not config.dry_run:
        raise AirflowFailException(
            f"{unusable:,} of {plan.rows:,} rows to read ({share:.1%}) of {config.source_table} have"
            f" no usable {column} (NULL, or outside what a timestamp can hold): more than"
            f" max_rejected_share {config.max_rejected_share:.1%} before anything is sent; nothing"
            " was sent. Fix or leave out those rows, or raise max_rejected_share")


def _log_difference(config: BackfillConfig, diff: Difference, held: Mapping[int, Any]) -> None:
    """Say what the target holds and what changed, in counts and bucket times, never text."""
    if not config.target:
        return
    if not held:
        log.info("instance %s holds nothing of %s yet: every row is new", config.target,
                 config.source)
        return
    log.info("instance %s holds %d buckets of %s: %d rows unchanged (not read, not sent), %d rows"
             " in new buckets, %d rows in buckets that changed since they were held%s",
             config.target, len(held), config.source, diff.unchanged_rows, diff.new_rows,
             diff.changed_rows, "; resend_unchanged: sending every row of the range anyway"
             if config.resend_unchanged else "")
    for d in diff.deletions[:20]:
        log.info("rows deleted from the source: bucket %s held %d rows (%s), now %d: at least %d"
                 " deleted; nothing is sent for them", bucket_label(d.bucket), d.held,
                 d.holder.describe(), d.now, d.held - d.now)
    if len(diff.deletions) > 20:
        log.info("... and %d more buckets with deleted rows", len(diff.deletions) - 20)


def _spread(windows: list[Any], count: int) -> list[Any]:
    """``count`` windows spread evenly from the first to the last (one: the middle one)."""
    if count <= 1:
        return [windows[len(windows) // 2]]
    return [windows[i] for i in sorted({round(i * (len(windows) - 1) / (count - 1))
                                         for i in range(count)})]
