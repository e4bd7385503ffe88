"""The bodies of the ``synap_backfill`` DAG's tasks: where the engine meets Airflow's hooks.

Each function takes and returns small, JSON-able values (a config dict,
window dicts, count reports), so the DAG file only wires them together and
XCom never carries rows or text.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import replace
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping, NoReturn, Sequence

from ..accounting import PartitionReport, summarize
from ..buckets import UNTIMED, bucket_label
from ..changes import SourceChanges, find_changes, pending_buckets, save_changes
from ..changes import describe as describe_changes
from ..config import RENAMED_PARAMS, BackfillConfig, ParamError, config_from_params
from ..credits import credits_for
from ..documents import B2B_ISOLATION, B2C_ISOLATION
from ..held_turns import held_turn_count
from ..inventory import Inventory
from ..persons import HeldBack, PersonKeyMismatch, PersonKeyMissing, check_keyring, load_keyring
from ..ledger import Ledger, save_copies
from ..partition import PartitionFailed, PartitionSettings, describe_error, run_partition_rows
from ..redaction import ShapingNotReady, shaper_for
from ..redaction import check as check_shaping
from ..preflight import (PreflightError, check_ledger, check_source, check_synap_settings,
                        unknown_keys, who_is)
from ..target import SynapTarget
from ..planning import (Difference, PlannedPartition, conflict_message, describe_range, difference,
                        in_plan, lay_out, lost_ranges)
from ..source import (bucket_counts, copies_at_different_times, quote_identifier, quoted_table,
                     read_window, timestamp_index, turns_are_unique)
from ..windows import Grid

log = logging.getLogger("synap_backfill")

UNINDEXED_PARTITIONS = 8  # full scans a plan may cost when the timestamp column has no index


def resolve_config(params: Mapping[str, Any], *, conf: Mapping[str, Any] | None = None,
                   known: Iterable[str] = (), ti: Any = None,
                   interval: tuple[datetime, datetime] | None = None) -> dict[str, Any]:
    """Validate the run's params and check everything they point at, before anything runs.

    ``interval``: a scheduled (or ``airflow backfill create``) run's data
    interval. Without ``start`` and ``end`` params, such a run replays
    ``[data_interval_start, data_interval_end)``: what arrived since the last
    run, not the whole table again; and it looks back before the interval for
    buckets the target holds that changed since (late rows).

    A bad param, an unknown conf key, a missing relation or column, a column of
    the wrong type, a read-only ledger or a refused API key fails this first
    task in one line naming it (``preflight.py``); the line also goes to XCom
    (key ``failure``) for ``summarize`` to repeat. The config it returns names
    the Synap instance the connection opens (``target``) and the source relation
    as the database names it (``source``): what the target's inventory is kept by.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    try:
        if conf is not None:
            unknown_keys(conf, [*known, *RENAMED_PARAMS])
            params = {**params, **{k: v for k, v in conf.items() if k in RENAMED_PARAMS}}
        lookback = interval is not None and not (params.get("start") or params.get("end"))
        if lookback:
            assert interval is not None
            params = {**params, "start": interval[0].isoformat(), "end": interval[1].isoformat()}
            log.info("a scheduled run: replaying its data interval [%s, %s), and any bucket before"
                     " it that this target holds and that changed since", params["start"],
                     params["end"])
        config = config_from_params(params)
        try:  # the transform imports, the token key exists: before anything is read
            pii_key_id = check_shaping(config)
        except ValueError as exc:
            raise PreflightError(str(exc)) from None
        with closing(PostgresHook(postgres_conn_id=config.postgres_conn_id).get_conn()) as conn:
            source = check_source(conn, config)
        ledger = config.ledger_conn_id or config.postgres_conn_id
        with closing(PostgresHook(postgres_conn_id=ledger).get_conn()) as conn:
            check_ledger(conn, config)
            if not config.dry_run:
                try:  # the key the ledger's persons were named with, or none if none was erased
                    check_keyring(conn, config.ledger_schema,
                                  load_keyring(config.person_key_conn_id), config.person_key_conn_id)
                except (PersonKeyMissing, PersonKeyMismatch) as exc:
                    raise PreflightError(str(exc)) from None
        synap = check_synap_settings(config.synap_conn_id)
        who: dict[str, Any] = {}
        if config.dry_run:
            try:
                who = who_is(synap.hook, config.synap_conn_id)
            except PreflightError as exc:
                log.warning("a dry run without Synap (%s): the plan cannot tell what the instance"
                            " holds, so every row counts as new", exc)
        else:
            who = who_is(synap.hook, config.synap_conn_id)
        instance = str(who.get("instance_id") or "")
        config = config.model_copy(update={
            "target": instance, "source": source, "lookback": lookback, "pii_key_id": pii_key_id,
            "isolation": who.get("user_context_isolation") or None})
    except (ParamError, PreflightError) as exc:
        _fail_before_planning(ti, str(exc))
    except Exception as exc:  # unforeseen: still say which task stopped the run, and why
        if ti is not None:
            ti.xcom_push(key="failure", value=describe_error(exc))
        raise_scrubbed(exc)
        raise
    log.info("backfill of %s into Synap connection %s%s, batches of %d, mode %s; preflight passed",
             source, config.synap_conn_id, f" (instance {instance})" if instance else "",
             config.batch_size, config.mode)
    if config.redact_pii:
        log.info("personal data is redacted before sending: %s, as %ss%s",
                 ", ".join(config.pii_entities), config.pii_replacement,
                 f"; phone numbers in the national formats of {', '.join(config.pii_phone_regions)}"
                 if "phone" in config.pii_entities else "")
    if config.document_transform:
        log.info("each turn then goes through document_transform %s", config.document_transform)
    return config.to_dict()


def _fail_before_planning(ti: Any, message: str) -> NoReturn:
    """Fail the task, without retries, leaving the one-line reason for the summary."""
    from airflow.sdk.exceptions import AirflowFailException

    if ti is not None:
        ti.xcom_push(key="failure", value=message)
    raise AirflowFailException(message)


def plan_partitions(config_dict: Mapping[str, Any], *, dag_id: str = "synap_backfill",
                    run_id: str = "manual", ti: Any = None) -> list[dict[str, Any]]:
    """Window bounds for the mapped partitions: small dicts, never rows.

    One pass counts every row into the inventory's buckets, with the fingerprint of
    their keys (with no start and end, the relation's whole range); buckets the target
    holds unchanged are skipped (``planning.py``). Rows without a usable timestamp get a
    partition of their own that rejects them with a reason, so none is lost. One more
    pass lists the turns the source holds at several timestamps, for the ledger, so
    each partition sends only the earliest copy. A failure's one-line reason also goes
    to XCom (key ``failure``) for the summary.
    """
    from airflow.sdk.exceptions import AirflowFailException

    config = BackfillConfig.from_dict(config_dict)
    try:
        return _plan(config, dag_id, run_id)
    except Exception as exc:
        if ti is not None:
            # Our own one-line reasons go as they are; anything else, scrubbed and cut short.
            ti.xcom_push(key="failure", value=str(exc) if isinstance(exc, AirflowFailException)
                         else describe_error(exc))
        raise_scrubbed(exc)
        raise


def _plan(config: BackfillConfig, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    grid = Grid.of(config.window_size, config.partition_timezone)
    # A scheduled run counts from the first row, to see late rows before its interval.
    start = None if config.lookback else config.start
    ledger_hook = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)
    source_hook = PostgresHook(postgres_conn_id=config.postgres_conn_id)
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
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(conflict_message(
                diff.conflicts, config.document_settings(), source=config.source,
                target=config.target))
        _log_difference(config, diff, held)
        cap = config.max_partitions
        if diff.planned and timestamp_index(conn, config) is False:
            cap = min(cap, UNINDEXED_PARTITIONS)
            log.warning("%s has no index on %s: every partition reads the whole table, so this plan"
                        " keeps to %d partitions, larger than max_rows_per_partition if need be."
                        " To let partitions read only their window: CREATE INDEX CONCURRENTLY ON %s"
                        " (%s)", config.source_table, config.columns.created_at, cap,
                        quoted_table(config), quote_identifier(config.columns.created_at))
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
        frozen = _guard_deletes(config, changes, diff, lost, planned,
                                lambda: held_turn_count(ledger_conn, config.ledger_schema, holding),
                                lambda: sum(b.rows for b in held.values()))
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
                  "unchanged_outside": plan.unchanged_outside, "new": diff.new_rows,
                  "changed": diff.changed_rows, "partitions": len(plan.partitions),
                  "deleted_rows": diff.deleted_rows,
                  "source_changes": {**describe_changes(changes), "by_bucket": changes.by_bucket(),
                                     "apply": config.apply_source_changes},
                  "deletions": [[d.bucket, d.held, d.now, d.holder.run_id]
                                for d in diff.deletions[:DELETIONS_KEPT]],
                  "lost_ranges": [describe_range(lo, hi) for lo, hi in lost[:DELETIONS_KEPT]],
                  "frozen": frozen, "isolation": config.isolation,
                  "credits_estimate": credits.estimate if credits else None,
                  "credits_metric": credits.metric if credits else None})
        inventory.save_plan(run, plan.buckets)
        save_changes(ledger_conn, config.ledger_schema, run, changes)
        if holding is not None and diff.adopt and not config.dry_run:
            inventory.adopt_content(holding, diff.adopt)
        # A bucket the source emptied stays held while the target still holds turns of it:
        # until they are applied (airflow/source_changes.py lets it go then), every run
        # reports them. One without held turns (held before the ledger kept turns) is let
        # go, unless the source looks emptied by accident (frozen).
        gone = [d.bucket for d in diff.deletions if d.now == 0 and d.bucket not in changes.buckets]
        if holding is not None and gone and not config.dry_run and not frozen:
            inventory.release(holding, gone)  # nothing left there to hold
    if copies:
        log.info("%d turns (conversation_id, message_index) are held by several rows at different"
                 " times: the earliest row of each is sent, the others are rejected as copies",
                 len(copies))
    _check_unusable(config, plan)
    if credits is not None:
        log.info("Synap credits for the whole plan: %s", credits.describe())
        if credits.short and not sampling:
            from airflow.sdk.exceptions import AirflowFailException

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


DELETIONS_KEPT = 100  # buckets with deleted rows, kept with the run for its summary


def _guard_deletes(config: BackfillConfig, changes: SourceChanges, diff: Difference,
                   lost: list[tuple[int, int]], planned: list[PlannedPartition],
                   held_turns: Callable[[], int], held_rows: Callable[[], int]) -> bool:
    """Say what the source changed in what the target holds, and refuse, before anything is
    deleted, what looks like an accident: more than ``max_source_change_share`` of the held
    turns to lose their memories (edited, deleted, emptied), or a range of more than a day of
    held buckets gone. In report mode nothing is deleted: such a source freezes the inventory
    instead (True: no held bucket is let go or rewritten by this run)."""
    from airflow.sdk.exceptions import AirflowFailException

    applying = config.apply_source_changes == "apply"
    if changes.changes or changes.unknown:
        edited, deleted = len(changes.edited), len(changes.deleted)
        emptied = len(changes.emptied)
        log.info("source changes in what instance %s holds of %s: %d edited and %d deleted turns"
                 "%s (of %d held turns compared in the buckets that changed%s)%s%s", config.target,
                 config.source, edited, deleted, f" ({emptied} of them emptied: both texts blank)"
                 if emptied else "", changes.compared,
                 f"; {changes.unknown} held by runs from before turns' content was kept: edits to"
                 " them cannot be told" if changes.unknown else "",
                 f"; by bucket: {changes.by_bucket()}" if changes.changes else "",
                 "; apply_source_changes is apply: their memories are deleted, and edited turns"
                 " sent again" if applying else "; apply_source_changes is report: Synap is left as"
                 " it is")
    ranges = ", ".join(describe_range(lo, hi) for lo, hi in lost[:3]) + (
        f" and {len(lost) - 3} more" if len(lost) > 3 else "")
    if not applying:
        deleted_turns = len(changes.deleted)
        lost_share = max(deleted_turns / held_turns() if deleted_turns else 0.0,
                         diff.deleted_rows / held_rows() if diff.deleted_rows else 0.0)
        if lost or lost_share > config.max_source_change_share:
            log.warning("the source lost %s of what instance %s holds of it%s: apply_source_changes"
                        " is report, so nothing is deleted, and this run lets go of no held bucket"
                        " (the inventory is kept as it is, for when the rows come back)",
                        f"{lost_share:.1%}", config.target, f", and all of {ranges}" if lost else "")
            return True
        return False
    # What this run deletes: every deletion, and the edits of the turns its partitions send.
    applies = [c for c in changes.changes if c.kind == "deleted"
               or (c.source_bucket is not None and in_plan(c.source_bucket, planned))]
    if applies:
        held = held_turns()
        share = len(applies) / held if held else 1.0
        if share > config.max_source_change_share:
            edited = sum(1 for c in applies if c.kind == "edited")
            emptied = sum(1 for c in applies if c.emptied)
            message = (f"{len(applies):,} of the {held:,} turns Synap instance {config.target} holds"
                       f" of {config.source} would lose their memories ({share:.1%}: {edited:,}"
                       f" edited, {len(applies) - edited - emptied:,} deleted, {emptied:,} emptied"
                       f" in the source), more than max_source_change_share"
                       f" {config.max_source_change_share:.1%}: nothing was deleted or sent. If the"
                       " table was emptied, blanked or rewritten by mistake, restore it; if the"
                       " changes are real, raise max_source_change_share for this run")
            if config.dry_run:
                log.warning("a real run would stop here: %s", message)
            else:
                raise AirflowFailException(message)
    if lost and not config.accept_lost_ranges:
        message = (f"every row of {ranges} that Synap instance {config.target} holds of"
                   f" {config.source} is gone from the source ({len(lost)} range"
                   f"{'' if len(lost) == 1 else 's'} of more than a day): nothing was deleted or"
                   " sent. If a partition was detached or a view's filter changed, restore it; if"
                   " the rows were removed on purpose, set accept_lost_ranges for this run")
        if config.dry_run:
            log.warning("a real run would stop here: %s", message)
        else:
            raise AirflowFailException(message)
    return False


def _check_unusable(config: BackfillConfig, plan: Any) -> None:
    """State the share of rows without a usable timestamp; fail before sending when they alone
    are more than ``max_rejected_share`` of the rows to read (each would be rejected anyway,
    and the run would fail at its end, after hours of sending the rest)."""
    from airflow.sdk.exceptions import AirflowFailException

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


def run_partition(config_dict: Mapping[str, Any], window_dict: Mapping[str, Any], *,
                  dag_id: str = "synap_backfill", run_id: str = "manual",
                  synap: SynapTarget | None = None) -> dict[str, Any]:
    """Backfill one partition; return its counts for XCom. Safe to retry: it resumes.

    ``synap``: the task's Synap target when its ``pre_execute`` built it already.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    config = BackfillConfig.from_dict(config_dict)
    partition = PlannedPartition.from_dict(window_dict)
    report = PartitionReport(partition.label, window_dict.get("start"), window_dict.get("end"),
                             unchanged=partition.unchanged, rows_planned=partition.rows,
                             edited=partition.edited, deleted=partition.deleted)
    source = PostgresHook(postgres_conn_id=config.postgres_conn_id)
    target = synap or SynapTarget.connect(config.synap_conn_id)
    ranges = partition.ranges if partition.timed else None

    def read(after: Any) -> Iterator[Any]:
        # A connection per pass: after a lost connection the next pass opens a new one.
        with closing(source.get_conn()) as conn:
            yield from read_window(conn, config, ranges, after)

    settings = PartitionSettings(
        batch_size=config.batch_size, mode=config.mode, max_in_flight=target.settings.max_in_flight,
        duplicate_pattern=target.duplicate_pattern, retry=target.retry,
        max_chars=config.max_document_chars, read_errors=_connection_errors(),
        expected_rows=partition.rows)
    try:
        settings.shaper = shaper_for(config)
    except ShapingNotReady as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"partition {partition.label}: {exc}") from None

    ledger_hook = PostgresHook(postgres_conn_id=config.ledger_conn_id or config.postgres_conn_id)

    def prepare(ledger: Ledger) -> None:
        """The ledger's and the connection's reads, before the event loop starts: none of
        them may block it. The ledger's tables exist: resolve_config made them, once."""
        if partition.timed:
            settings.copies = ledger.copies(partition.ranges[0][0], partition.ranges[-1][1])
        if len(partition.ranges) > 1 or partition.unchanged:
            log.info("partition %s reads %d range%s of it, about %d rows; %d rows in it are held"
                     " unchanged by the target and are not read", partition.label,
                     len(partition.ranges), "" if len(partition.ranges) == 1 else "s",
                     partition.rows, partition.unchanged)
        if config.dry_run:
            return
        record = Inventory(ledger.conn, config.ledger_schema).run(dag_id, run_id)
        if record is not None and record.holding is not None:
            ledger.holding, ledger.run = record.holding, record.id
            settings.holds = partition.reads_whole
            # Every batch: an apply or an undo of another run may record a generation while
            # this one sends; both then send the same next id, and Synap keeps one document.
            settings.regenerate = ledger.generations
            if partition.reads_held and not config.resend_unchanged:
                settings.held = ledger.held_turns
            settings.persons = HeldBack(config.person_key_conn_id)
            unheld: set[int] = set()
            if partition.reads_held:
                # A bucket with a change not applied (reported only, or not reached) is not
                # held as read: the next run finds the change again, and applies it when asked.
                unheld = pending_buckets(ledger.conn, config.ledger_schema, record.id)
                if record.plan.get("frozen"):
                    # The source looked emptied by accident: no held bucket is rewritten.
                    unheld |= Inventory(ledger.conn, config.ledger_schema).held_within(
                        record.holding, partition.ranges)
            if unheld:
                settings.holds = lambda b: partition.reads_whole(b) and b not in unheld

    async def run(ledger: Ledger, pacing_conn: Any) -> None:
        if config.dry_run:
            await run_partition_rows(read, None, report, settings)
            return
        async with target.session() as sdk:
            instance = getattr(sdk, "instance_id", None) or ""
            if config.target and instance != config.target:
                raise PartitionFailed(
                    f"connection {config.synap_conn_id!r} now opens Synap instance {instance or '?'},"
                    f" not {config.target} that this run planned against; nothing was sent."
                    " Trigger a new run", permanent=True)
            settings.isolation = target.isolation(sdk)
            _log_scope(settings.isolation, config.columns.customer_id)
            # The limit is the instance's: every partition sending there shares one
            # schedule. Its own connection: checkpoints commit from another thread.
            settings.pacer = target.pacer(pacing_conn, config.ledger_schema, instance,
                                          label=report.label)

            async def submit(documents: list[Any]) -> Any:
                return await sdk.memories.batch_create(documents=documents, fail_fast=False)

            await run_partition_rows(read, submit, report, settings, ledger,
                                     restart=config.restart_partitions)

    try:
        with closing(ledger_hook.get_conn()) as ledger_conn, ExitStack() as stack:
            ledger = Ledger(ledger_conn, config.ledger_schema, dag_id, run_id, partition.key,
                            report.label)
            prepare(ledger)
            paced = not config.dry_run and target.paced
            pacing_conn = stack.enter_context(closing(ledger_hook.get_conn())) if paced else None
            asyncio.run(run(ledger, pacing_conn))
    except PartitionFailed as exc:
        if exc.permanent:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from None  # retrying cannot help
        raise
    if report.rows_read != partition.rows:
        log.warning("partition %s read %d rows where the plan counted %d: the source changed since"
                    " planning, or the read missed rows; summarize recounts and says which",
                    report.label, report.rows_read, partition.rows)
    pacer = settings.pacer
    slots = pacer.slots
    log.info("partition %s done: read %d, ingested %d, duplicates %d, rejected %d%s in %d batches,"
             " %.1f s (%.0f rows/s%s)", report.label, report.rows_read, report.ingested,
             report.duplicates, report.rejected_total,
             f", not sent (dry run) {report.not_sent}" if config.dry_run else "", report.batches,
             report.seconds, report.rows_read / report.seconds if report.seconds else 0.0,
             f"; a request waited {pacer.waited / slots:.2f} s on average for its pacing slot"
             if slots else "")
    if report.turns_redacted:
        log.info("partition %s: personal data redacted in %d turns: %s", report.label,
                 report.turns_redacted, ", ".join(f"{k} {n}" for k, n in report.redacted.most_common()))
    return report.to_xcom()


def _log_scope(isolation: str | None, customer_column: str) -> None:
    """Say once how the instance's isolation shapes the documents' scope."""
    if isolation == B2C_ISOLATION:
        log.info("the Synap instance is B2C (user_context_isolation=%r): documents carry user_id"
                 " only%s", isolation,
                 f"; column {customer_column} is not sent" if customer_column else "")
    elif isolation == B2B_ISOLATION:
        log.info("the Synap instance is B2B (user_context_isolation=%r): rows with a user and no"
                 " customer are rejected before sending", isolation)
    else:
        log.info("the Synap instance does not report a known user_context_isolation (%r):"
                 " documents carry user_id and customer_id as read, and Synap decides", isolation)


def announce_complete(config_dict: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
    """Let the run's assets be emitted only when it sent the whole table."""
    from airflow.sdk.exceptions import AirflowSkipException

    if config_dict.get("dry_run"):
        raise AirflowSkipException("a dry run sent nothing: not announcing the backfill complete")
    if summary.get("sample_of"):
        raise AirflowSkipException("a sample run sent part of the table: not announcing the "
                                   "backfill complete")
    log.info("backfill complete: %d rows accounted for (%d read, %d held unchanged); announcing it",
             summary.get("rows_planned") or 0, summary.get("rows_read", 0), summary.get("unchanged", 0))


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What psycopg (3 or 2) raises when the source connection is lost."""
    errors: list[type[BaseException]] = []
    try:
        import psycopg

        errors += [psycopg.OperationalError, psycopg.InterfaceError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import psycopg2

        errors += [psycopg2.OperationalError, psycopg2.InterfaceError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


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
    from airflow.sdk.exceptions import AirflowFailException

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
    result.update({k: facts[k] for k in ("deleted_rows", "changed_during_run", "parity") if k in facts})
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

    from ..reconcile import reconcile

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
                with closing(PostgresHook(postgres_conn_id=config.postgres_conn_id).get_conn()) as conn:
                    unheld = pending_buckets(ledger_conn, config.ledger_schema, record.id)
                    checked = reconcile(conn, config, inventory, record, finished, unheld)
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


class DatabaseError(RuntimeError):
    """A database error, as the task fails with it: scrubbed, without the original's text."""


def raise_scrubbed(exc: BaseException) -> None:
    """Re-raise a database error without its text: Airflow logs a failing task's exception
    whole, and PostgreSQL's messages quote values (``invalid input syntax ...: "<a cell>"``)."""
    from ..db_errors import is_database_error

    if is_database_error(exc):
        raise DatabaseError(describe_error(exc)) from None


def one_line(exc: BaseException) -> str:
    """A task's failure in one line: our own reasons as written, anything else scrubbed and cut."""
    from airflow.sdk.exceptions import AirflowFailException

    if isinstance(exc, (AirflowFailException, PartitionFailed, ParamError, PreflightError)):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return describe_error(exc)


def window_key_of(raw: Mapping[str, Any]) -> str:
    from ..accounting import window_key

    return window_key(raw.get("start"), raw.get("end"))
