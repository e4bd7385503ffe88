"""``summarize`` and ``announce_complete``: every partition added up and checked against the
source, the run failed when anything is unaccounted for; the assets emitted after a full run."""

from __future__ import annotations

import logging
from contextlib import closing
from typing import Any, Iterable, Mapping, Sequence

from synap_backfill.airflow.backfill.plan import DELETIONS_KEPT
from synap_backfill.airflow.lineage import source_read
from synap_backfill.airflow.shared import window_key_of
from synap_backfill.common.buckets import bucket_label
from synap_backfill.common.config import BackfillConfig
from synap_backfill.common.errors import describe_error
from synap_backfill.delivery.accounting import summarize
from synap_backfill.holdings.changes import pending_buckets
from synap_backfill.holdings.inventory import Inventory
from synap_backfill.planner.difference import PlannedPartition

log = logging.getLogger("synap_backfill")


def summarize_run(windows: Iterable[Mapping[str, Any]] | None,
                  reports: Iterable[Mapping[str, Any]] | None,
                  config_dict: Mapping[str, Any] | None = None, run_id: str | None = None,
                  before_planning: Sequence[str | None] | None = None, *,
                  dag_id: str = "synap_backfill", parity_with: str | None = None,
                  ti: Any = None, changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Add up every partition, check the reads against the source, print the table, and fail
    when anything is unaccounted for.

    ``before_planning``: the ``failure`` XComs of resolve_config and
    plan_partitions, to say in one line why a run stopped before any partition.
    ``parity_with``: the primary backfill's DAG id, for a region replay: how much of what
    the primary's instance holds this region's instance holds too.
    ``changes``: what ``apply_source_changes`` did (None: it did not run, or failed).
    """
    from synap_backfill.airflow.compat import AirflowFailException

    if windows is None:
        failures = dict(zip(("resolve_config", "plan_partitions"), before_planning or ()))
        task = "resolve_config" if config_dict is None else "plan_partitions"
        raise AirflowFailException(f"the run stopped before any partition: {task} failed:"
                                   f" {failures.get(task) or 'see its log'}")
    if isinstance(reports, Sequence):
        # One slice request; iterating a lazy XCom sequence item by item ends
        # on a not-found lookup that Airflow logs as an error.
        reports = reports[:]
    windows = list(windows)
    reports = [r for r in reports or [] if r]
    config = BackfillConfig.from_dict(config_dict) if config_dict else None
    facts: dict[str, Any] = {}
    if config and run_id:
        facts = _check_against_source(config, dag_id, run_id, windows, reports, parity_with,
                                      changes)
    summary = summarize(windows, reports, config.max_rejected_share if config else 1.0,
                        facts.get("unchanged_outside", 0))
    summary.emptied_in_source = facts.get("emptied", 0)
    summary.notes += facts.get("notes", [])
    summary.found += facts.get("problems", [])
    rejects_at = None
    if config and run_id and not config.dry_run:
        rejects_at = (f"SELECT * FROM {config.ledger_schema}.rejected_rows WHERE run_id = '{run_id}'"
                      f" (connection {config.ledger_conn_id or config.postgres_conn_id})")
    log.info("backfill summary\n%s", summary.render(rejects_at))
    if summary.problems and ti is not None:
        ti.xcom_push(key="problems", value=summary.problems)  # each in one line, for the UI
    # Where the rejected rows are, in the run's XCom: readable in the UI without a log.
    result: dict[str, Any] = {**summary.to_xcom(), "rejects_at": rejects_at, "notes": summary.notes}
    result.update({k: facts[k] for k in ("deleted_rows", "changed_during_run", "parity",
                                          "skipped_messages") if k in facts})
    if "source_changes" in facts:
        result["source_changes"] = {**facts["source_changes"], **(changes or {})}
    if config is not None and facts.get("record") is not None:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        ledger = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)
        with closing(ledger.get_conn()) as conn:
            Inventory(conn, config.ledger_schema).finish_run(facts["record"].id, result)
    if summary.problems:
        raise AirflowFailException(
            f"backfill incomplete: {len(summary.problems)} problem(s): "
            + "; ".join(summary.problems[:5]))
    return result


def _check_against_source(config: BackfillConfig, dag_id: str, run_id: str,
                          windows: list[Mapping[str, Any]], reports: list[Mapping[str, Any]],
                          parity_with: str | None, changes: Mapping[str, Any] | None = None
                          ) -> dict[str, Any]:
    """What the ledger knows of the run (its plan's unchanged rows and deletions), the recount of
    what its partitions read (``reconcile.py``), and a region's parity with the primary."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.source_hook import source_hook
    from synap_backfill.holdings.reconcile import reconcile

    ledger_hook = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)
    facts: dict[str, Any] = {"notes": [], "problems": []}
    with closing(ledger_hook.get_conn()) as ledger_conn:
        inventory = Inventory(ledger_conn, config.ledger_schema)
        record = inventory.run(dag_id, run_id)
        if record is None:
            return facts
        facts.update(record=record, unchanged_outside=int(record.plan.get("unchanged_outside") or 0))
        found = record.plan.get("source_changes") or {}
        if found.get("edited") or found.get("deleted") or found.get("unknown"):
            facts["source_changes"] = {k: found.get(k, 0)
                                       for k in ("edited", "deleted", "emptied", "unknown")}
            facts["notes"].append(_changes_note(found, config, changes))
        facts["emptied"] = int(found.get("emptied") or 0)
        skipped = record.plan.get("skipped_messages") or {}
        if skipped:
            facts["skipped_messages"] = skipped
            facts["notes"].append(f"{sum(skipped.values())} messages make no turn's text ("
                                  + "; ".join(f"{n}: {reason}" for reason, n in skipped.items())
                                  + "): not sent, counted here")
        lost = record.plan.get("lost_ranges") or []
        if lost:
            facts["notes"].append(
                f"every row of {', '.join(lost[:3])}{' and more' if len(lost) > 3 else ''} that"
                f" instance {config.target} holds is gone from the source"
                + ("; accept_lost_ranges: applied as deletions" if config.accept_lost_ranges
                   and config.apply_source_changes == "apply" else
                   "; nothing was deleted for them, and the inventory keeps them held"))
        elif record.plan.get("frozen"):
            facts["notes"].append(
                "the source lost more than max_source_change_share of what the instance holds:"
                " apply_source_changes is report, so this run let go of no held bucket")
        deleted = int(record.plan.get("deleted_rows") or 0)
        if deleted:
            shown = record.plan.get("deletions") or []
            facts["deleted_rows"] = deleted
            facts["notes"].append(
                f"rows deleted from the source since they were held: at least {deleted} in"
                f" {len(shown)}{'+' if len(shown) >= DELETIONS_KEPT else ''} buckets ("
                + ", ".join(f"{bucket_label(b)}: {held} held, {now} now" for b, held, now, _ in shown[:3])
                + (", ..." if len(shown) > 3 else "") + "); nothing is sent for them")
        finished_keys = {window_key_of(r) for r in reports}
        finished = [PlannedPartition.from_dict(w) for w in windows if window_key_of(w) in finished_keys]
        if not config.dry_run and record.holding is not None:
            try:
                source = source_hook(config.postgres_conn_id, config.source_statement_timeout)
                with closing(source.get_conn()) as conn:
                    # Held short of their turns to retry, on purpose: not a read that skipped.
                    retry = {int(b) for r in reports for b in (r.get("retry_buckets") or {})}
                    unheld = {*pending_buckets(ledger_conn, config.ledger_schema, record.id), *retry}
                    checked = reconcile(conn, config, inventory, record, finished, unheld)
                source_read(source, config.source)
            except Exception as exc:  # the summary must still be given
                facts["problems"].append(f"the reads could not be checked against the source:"
                                         f" {describe_error(exc)}")
            else:
                facts["notes"] += checked.notes()
                facts["problems"] += checked.problems()
                facts["changed_during_run"] = len(checked.changed)
                log.info("checked %d buckets read by this run against the source: %d changed while"
                         " it read, %d read wrong", checked.checked, len(checked.changed),
                         len(checked.skipped))
        if parity_with and record.holding is not None and not config.dry_run:
            primary = inventory.latest_run(parity_with, config.source)
            if primary is not None and primary.holding is not None and primary.holding != record.holding:
                held, both = inventory.parity(primary.holding, record.holding)
                facts["parity"] = {"primary": primary.target, "primary_rows": held,
                                   "held_here": both}
                facts["notes"].append(
                    f"parity with the primary: instance {config.target} holds {both} of the"
                    f" {held} rows of {config.source} that the primary's instance {primary.target}"
                    f" holds ({both / held:.1%})" if held else
                    f"parity with the primary: the primary's instance {primary.target} holds"
                    f" nothing of {config.source} yet")
    return facts


def _changes_note(found: Mapping[str, Any], config: BackfillConfig,
                  applied: Mapping[str, Any] | None = None) -> str:
    """One line: what the source changed in what the target holds, and what became of it."""
    edited, deleted, unknown, emptied = (int(found.get(k) or 0)
                                         for k in ("edited", "deleted", "unknown", "emptied"))
    line = (f"source changes: {edited} edited and {deleted} deleted turns"
            + (f" ({emptied} of them emptied: both texts blank)" if emptied else "")
            + f" that instance {config.target} holds"
            + (f" ({found['by_bucket']})" if found.get("by_bucket") else ""))
    pending = int((applied or {}).get("pending") or 0)
    if config.apply_source_changes == "apply" and not config.dry_run and (applied or {}).get("applied"):
        line += ("; applied: the memories of their held documents were deleted, and the edited"
                 " turns sent again with their current text")
        if pending:
            line += (f"; {pending} not applied yet (not reached, or without an ingestion id):"
                     " Synap still holds their old version, and the next run applies them")
    else:
        line += ("; reported only: Synap still holds them as they were sent (apply_source_changes"
                 " apply follows them)")
    if unknown:
        line += (f"; {unknown} held turns were sent before the ledger kept each turn's content:"
                 " their edits cannot be told")
    return line


def announce_complete(config_dict: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """Let the run's assets be emitted only when it sent the whole table."""
    from synap_backfill.airflow.compat import AirflowSkipException

    if config_dict.get("dry_run"):
        raise AirflowSkipException("a dry run sent nothing: not announcing the backfill complete")
    if summary.get("sample_of"):
        raise AirflowSkipException("a sample run sent part of the table: not announcing the "
                                   "backfill complete")
    log.info("backfill complete: %d rows accounted for (%d read, %d held unchanged); announcing it",
             summary.get("rows_planned") or 0, summary.get("rows_read", 0), summary.get("unchanged", 0))
