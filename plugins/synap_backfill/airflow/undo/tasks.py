"""The bodies of the ``synap_undo`` DAG's tasks: where the undo engine meets Airflow's hooks.

Small, JSON-able values in and out, as for the backfill: a config dict, the
partitions to undo, count reports. The engine is ``deletion/undo.py``; its ledger tables
``deletion/undo_ledger.py``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import closing
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping, Sequence

from synap_backfill.airflow.metrics import deletion_observed
from synap_backfill.airflow.shared import stopped_before
from synap_backfill.common import counters
from synap_backfill.common.config import ParamError
from synap_backfill.deletion.memories import Place, delete_memories
from synap_backfill.deletion.undo import (
    UndoClient,
    UndoPartition,
    UndoReport,
    describe_time_at_pace,
    estimate_seconds,
)
from synap_backfill.deletion.undo_config import UndoConfig, undo_config_from_params
from synap_backfill.deletion.undo_ledger import documents, finish_undo, partitions, record_undo
from synap_backfill.delivery.target import SynapTarget
from synap_backfill.extract import sources
from synap_backfill.holdings.inventory import Inventory
from synap_backfill.preflight import PreflightError, check_synap, check_synap_settings, unknown_keys
from synap_backfill.schema import ensure_tables

if TYPE_CHECKING:
    from synap_backfill.common.source import SourceDeclaration

log = logging.getLogger("synap_backfill")
RUNNING = ("queued", "running")


def resolve_undo(params: Mapping[str, Any], *, conf: Mapping[str, Any] | None = None,
                 known: Iterable[str] = (), ti: Any = None, source: "SourceDeclaration | None" = None,
                 dag_ids: Sequence[str] = ()) -> dict[str, Any]:
    """Validate the params and find the run in the ledger: its target, its connection.

    ``source``: what the deployment declares (the ledger, approval) wins over the params,
    and a conf that changes it is refused; ``dag_ids``: the only DAGs whose runs it undoes.

    Refused in one line, with nothing deleted: a run the ledger does not know, a dry run,
    a run that is still running, a connection that now opens another instance.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.shared import failure_to_xcom

    with failure_to_xcom(ti, (ParamError, PreflightError)):
        if source is not None:
            params = source.apply(params, conf, source.fixed(UndoConfig.params(), backfill=False))
        if conf is not None:
            unknown_keys(conf, known)
        config = undo_config_from_params(params)
        if dag_ids and config.dag_id not in dag_ids:
            raise ParamError("dag_id", f"not a DAG this deployment declares; it undoes runs of "
                                       f"{', '.join(dag_ids)}")
        where = f"the ledger ({config.ledger_schema} on connection {config.ledger_conn_id})"
        with closing(PostgresHook(postgres_conn_id=config.ledger_conn_id).get_conn()) as conn:
            ensure_tables(conn, config.ledger_schema)
            record = Inventory(conn, config.ledger_schema).run(config.dag_id, config.run_id)
        if record is None:
            raise PreflightError(f"param 'run_id': {where} knows no {config.describe_run}; nothing"
                                 " was deleted (the run id is on the run's page in the Airflow UI)")
        if record.dry_run or record.holding is None:
            raise PreflightError(f"param 'run_id': {config.describe_run} was a dry run: it sent"
                                 " nothing, so there is nothing to undo")
        state = _run_state(ti, config.dag_id, config.run_id)
        if state in RUNNING:
            raise PreflightError(f"param 'run_id': {config.describe_run} is still {state}: let it"
                                 " end (or mark it failed), then undo it; nothing was deleted")
        instance = check_synap(check_synap_settings(record.synap_conn_id).hook, record.synap_conn_id)
        if instance != record.target:
            raise PreflightError(
                f"connection {record.synap_conn_id!r} now opens Synap instance {instance}, not"
                f" {record.target} that {config.describe_run} wrote to; nothing was deleted."
                " Point the connection back at that instance to undo the run")
    config = config.model_copy(update={
        "undone_run": record.id, "holding": record.holding, "target": record.target,
        "synap_conn_id": record.synap_conn_id, "source": record.source,
        "postgres_conn_id": str(record.plan.get("postgres_conn_id") or ""),
        "source_table": str(record.plan.get("source_table") or ""),
        "columns": dict(record.settings.get("columns") or {}),
        "source_query": record.settings.get("source_query"),
        "source_settings": dict(record.settings)})
    log.info("undo of %s: it wrote to Synap instance %s through connection %s (%s)%s",
             config.describe_run, config.target, config.synap_conn_id, config.source,
             "; a dry run: nothing is deleted" if config.dry_run else "")
    return config.to_dict()


def _run_state(ti: Any, dag_id: str, run_id: str) -> str | None:
    """The run's state as Airflow knows it (None: Airflow does not say, e.g. a deleted run)."""
    if ti is None:
        return None
    try:
        state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
        return str(getattr(state, "value", state))
    except Exception as exc:
        log.info("Airflow did not give the state of run %s of %s (%s); the ledger knows it",
                 run_id, dag_id, type(exc).__name__)
        return None


def plan_undo(config_dict: Mapping[str, Any], *, dag_id: str, run_id: str, ti: Any = None
              ) -> list[dict[str, Any]]:
    """The run's partitions that got documents accepted: small dicts, never ids. Before a
    survey starts, how long it takes at the instance's pace (XCom ``survey_estimate``)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    config = UndoConfig.from_dict(config_dict)
    with closing(PostgresHook(postgres_conn_id=config.ledger_conn_id).get_conn()) as conn:
        found = [UndoPartition(key, label, n, m)
                 for key, label, n, m in partitions(conn, config.ledger_schema, config.dag_id,
                                                    config.run_id)]
        record_undo(conn, config.ledger_schema, dag_id, run_id, config.undone_run, config.dry_run)
    log.info("%s got %d documents accepted in %d partitions (and counted %d as its own from a"
             " duplicate answer, without an id)", config.describe_run,
             sum(p.documents for p in found), len(found), sum(p.without_id for p in found))
    if config.dry_run or config.require_approval:
        estimate = survey_estimate(config, found)
        log.info("the survey reads one status a document: %s", estimate["line"])
        if ti is not None:
            ti.xcom_push(key="survey_estimate", value=estimate)
    return [p.to_dict() for p in found]


def survey_estimate(config: UndoConfig, found: Sequence[UndoPartition]) -> dict[str, Any]:
    """Status calls a survey makes (every document, or ``survey_sample`` a partition) and how
    long they take at the instance's pace; the exact survey's too, when sampling."""
    rate = SynapTarget.connect(config.synap_conn_id).rate
    exact = sum(p.documents for p in found)
    calls = (sum(min(p.documents, config.survey_sample) for p in found) if config.survey_sample
             else exact)
    line = (f"{calls:,} status calls, {describe_time_at_pace(estimate_seconds(calls, rate))}"
            + (f" at {rate:,.0f} requests a minute" if rate else ""))
    if calls < exact:
        line += (f" for a sample of {calls:,} of {exact:,} documents (every document:"
                 f" {describe_time_at_pace(estimate_seconds(exact, rate))})")
    elif exact > 1000:
        line += "; survey_sample reads fewer, spread over each partition, for an estimate"
    return {"calls": calls, "documents": exact, "seconds": estimate_seconds(calls, rate),
            "exact_seconds": estimate_seconds(exact, rate), "rate": rate, "line": line}


def survey(config_dict: Mapping[str, Any], partition_dict: Mapping[str, Any], *,
           run_id: str = "", dag_id: str = "synap_undo") -> dict[str, Any]:
    """What undoing a partition would delete: its documents' memories, read, none deleted;
    its progress shown in the run's view as it goes (``run_id``: the undo's own run)."""
    config = UndoConfig.from_dict(config_dict)
    return _run(config, UndoPartition.from_dict(partition_dict), dry_run=True, undo_run=run_id,
                undo_dag=dag_id)


def undo(config_dict: Mapping[str, Any], partition_dict: Mapping[str, Any], *,
         run_id: str, dag_id: str = "synap_undo") -> dict[str, Any]:
    """Delete a partition's memories; resumable, and idempotent across undo runs.

    ``run_id``, ``dag_id``: the undo's own run (its metrics are tagged by its DAG)."""
    from synap_backfill.airflow.compat import AirflowFailException

    config = UndoConfig.from_dict(config_dict)
    report = _run(config, UndoPartition.from_dict(partition_dict), dry_run=False, undo_run=run_id,
                  undo_dag=dag_id)
    if report["failed"]:
        raise AirflowFailException(
            f"undo {report['label']}: {sum(report['failed'].values())} memories could not be"
            " deleted: " + "; ".join(f"{n} x {r}" for r, n in report["failed"].items())
            + f" (listed in {config.ledger_schema}.undo_unreached)")
    return report


def _run(config: UndoConfig, partition: UndoPartition, *, dry_run: bool,
         undo_run: str = "", undo_dag: str = "synap_undo") -> dict[str, Any]:
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    ledger_hook = PostgresHook(postgres_conn_id=config.ledger_conn_id)
    synap = SynapTarget.connect(config.synap_conn_id)
    report = UndoReport(partition.label, partition.key, dry_run=dry_run)

    with closing(ledger_hook.get_conn()) as conn:
        docs, without_id = documents(conn, config.ledger_schema, config.dag_id, config.run_id,
                                     partition.key)
    place = None if dry_run else Place(config.undone_run, partition.key, config.holding,
                                       config.dag_id, undo_run)
    asyncio.run(delete_memories(
        synap, ledger_hook.get_conn, config.ledger_schema, instance=config.target, documents=docs,
        without_id=without_id, report=report, place=place, wait_seconds=config.extraction_wait,
        label=f"undo {partition.label}", sample=config.survey_sample if dry_run else 0,
        survey=(undo_dag, undo_run, partition.key) if dry_run and undo_run else None,
        conversations=(lambda client, sdk: _conversations(config, client, synap.isolation(sdk),
                                                          dry_run=dry_run))
        if config.delete_conversations else None))
    deletion_observed(synap.hook, config.target, report, undo_dag)
    log.info("undo %s: %s%s", partition.label, report.label_with_counts().split(" · ", 1)[-1],
             "; an earlier undo had finished it" if report.already_undone else "")
    return report.to_xcom()


def _conversations(config: UndoConfig, client: UndoClient, isolation: str | None, *,
                   dry_run: bool) -> Callable[[list[str]], Awaitable[tuple[int, int]]]:
    """Deletes (``dry_run``: counts) the raw turns of the run's conversations, scoped to the user
    and customer the run sent them under (read from the source with the run's column mapping)."""
    from maximem_synap.scoping import B2C_ISOLATION

    async def delete(conversation_ids: list[str]) -> tuple[int, int]:
        scopes = await asyncio.to_thread(_scopes, config, conversation_ids)
        turns = done = 0
        for conversation in conversation_ids:
            user, customer = scopes.get(conversation, (None, None))
            if isolation == B2C_ISOLATION:
                customer = None
            turns += await client.delete_conversation(conversation, user, customer, dry_run=dry_run)
            done += 1
        return done, turns
    return delete


def _scopes(config: UndoConfig, conversation_ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
    from synap_backfill.airflow.source_hook import source_hook

    if not config.postgres_conn_id or not config.source_table:
        return {}
    sql = sources.recorded(config.source_table, config.columns, config.source_query,
                           config.source_settings)
    with closing(source_hook(config.postgres_conn_id).get_conn()) as conn, \
            conn.cursor() as cur:
        cur.execute(sql.conversation_scopes(), (conversation_ids,))
        return {conv: (user, cust) for conv, user, cust in cur.fetchall()}


def summarize_undo(config_dict: Mapping[str, Any] | None, planned: Sequence[Mapping[str, Any]] | None,
                   surveys: Sequence[Mapping[str, Any]] | None,
                   undone: Sequence[Mapping[str, Any]] | None, *, dag_id: str, run_id: str,
                   before: Sequence[str | None] | None = None, ti: Any = None) -> dict[str, Any]:
    """Add up the partitions; fail when a deletion failed or a partition did not finish."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.compat import AirflowFailException

    if config_dict is None or planned is None:
        stopped_before("undo stopped before any partition", before)
    config = UndoConfig.from_dict(config_dict)
    planned = list(planned)
    reports = [UndoReport.from_xcom(r) for r in (surveys if config.dry_run else undone) or [] if r]
    seen = {r.key for r in reports}
    missing = [p["label"] for p in planned if p["key"] not in seen]
    total = _total(reports)
    rate = SynapTarget.connect(config.synap_conn_id).rate
    problems = [f"partition {label} did not finish (failed or upstream failed)" for label in missing]
    if total.failed_total:
        problems.append(f"{total.failed_total} memories could not be deleted: "
                        + ", ".join(f"{n} x {r}" for r, n in total.failed.most_common()))
    result = {**total.to_xcom(), "memories_estimate": _memories(reports),
              "partitions": len(planned), "problems": problems,
              "dry_run": config.dry_run, "target": config.target, "run": config.describe_run,
              "unreached_at": f"SELECT * FROM {config.ledger_schema}.undo_unreached WHERE target ="
                              f" {config.undone_run} (connection {config.ledger_conn_id})"}
    log.info("undo summary\n%s", render_undo(config, planned, reports, missing, rate))
    with closing(PostgresHook(postgres_conn_id=config.ledger_conn_id).get_conn()) as conn:
        finish_undo(conn, config.ledger_schema, dag_id, run_id, result)
    if problems:
        if ti is not None:
            ti.xcom_push(key="problems", value=problems)
        raise AirflowFailException(f"undo incomplete: {len(problems)} problem(s): "
                                   + "; ".join(problems[:5]))
    return result


def _total(reports: Iterable[UndoReport]) -> UndoReport:
    return counters.add_up(UndoReport("TOTAL", ""), reports)


def _memories(reports: Iterable[UndoReport]) -> int:
    """Memories of every document: counted, or estimated from each partition's sample."""
    return sum(r.memories_estimate for r in reports)


def render_undo(config: UndoConfig, planned: list[Mapping[str, Any]], reports: list[UndoReport],
                missing: list[str], rate: float) -> str:
    """The undo's table and its lines: what was (or would be) deleted, what could not be reached."""
    total = _total(reports)
    header: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    last: tuple[Any, ...]
    if config.dry_run:
        header = ("partition", "documents", "memories", "without id", "not reached")
        rows = [(r.label, r.documents, r.memories, r.without_id, sum(r.not_reached.values()))
                for r in reports]
        last = ("TOTAL", total.documents, total.memories, total.without_id,
                sum(total.not_reached.values()))
    else:
        header = ("partition", "documents", "deleted", "already gone", "failed", "without id")
        rows = [(r.label, r.documents, r.deleted, r.already_gone, r.failed_total, r.without_id)
                for r in reports]
        last = ("TOTAL", total.documents, total.deleted, total.already_gone, total.failed_total,
                total.without_id)
    rows += [(label, *["-"] * (len(header) - 1)) for label in missing]
    widths = [max(len(str(row[i])) for row in [header, last, *rows]) for i in range(len(header))]

    def line(cells: Sequence[Any]) -> str:
        return "  ".join([str(cells[0]).ljust(widths[0])]
                         + [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])])
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [f"undo of {config.describe_run} on Synap instance {config.target}"
           + (" (a dry run: nothing was deleted)" if config.dry_run else ""),
           line(header), rule, *map(line, rows), rule, line(last)]
    if total.sampled:
        out.append(f"from a sample of {total.documents} of {total.total} documents"
                   f" (survey_sample {config.survey_sample}): about {_memories(reports)} memories"
                   " in all; a dry run without survey_sample counts them exactly")
    if config.dry_run:
        requests = total.total + _memories(reports) + total.conversations
        out.append(f"deleting takes {requests} requests (a status call a document, a delete a"
                   f" memory): {describe_time_at_pace(estimate_seconds(requests, rate))} at the"
                   f" connection's {rate:,.0f} requests a minute")
    if total.conversations:
        out.append(f"conversations: {total.conversations}, raw turns"
                   f" {'to delete' if config.dry_run else 'deleted'}: {total.turns}")
    if total.without_id:
        out.append(f"{total.without_id} documents were counted as the run's from a duplicate answer"
                   " and have no ingestion id: their memories cannot be found; listed by row key in"
                   f" {config.ledger_schema}.undo_unreached")
    for reason, n in total.not_reached.most_common():
        out.append(f"not reached: {n} x {reason}")
    if any(r.already_undone for r in reports):
        out.append("an earlier undo had finished some partitions: nothing was sent for them")
    return "\n".join(out)


def approval_body(config: UndoConfig, surveys: list[Mapping[str, Any]]) -> str:
    """The undo approval's body (Markdown): the dry run's figures and what deleting will cost."""

    reports = [UndoReport.from_xcom(r) for r in surveys if r]
    total = _total(reports)
    rate = SynapTarget.connect(config.synap_conn_id).rate
    memories = _memories(reports)
    requests = total.total + memories + total.conversations
    parts = len(reports)
    about = "about " if total.sampled else ""
    lines = [f"**Delete {about}{memories:,} memories** made from **{total.total:,} documents**"
             f" of {config.describe_run}, on Synap instance `{config.target}`"
             f" ({parts} partition{'' if parts == 1 else 's'}).", "",
             f"- time: about {describe_time_at_pace(estimate_seconds(requests, rate))} at the"
             f" connection's {rate:,.0f} requests a minute ({requests:,} requests)",
             f"- documents without an ingestion id (not deletable, listed): {total.without_id:,}"]
    if total.sampled:
        lines.append(f"- memories estimated from a sample of {total.documents:,} documents"
                     " (survey_sample): the undo deletes every one it finds")
    if total.not_reached:
        lines.append("- not reached: " + ", ".join(f"{n:,} x {r}" for r, n in total.not_reached.items()))
    if config.delete_conversations:
        lines.append(f"- raw turns of {total.conversations:,} conversations: {total.turns:,}")
    lines += ["", "Approve: the memories are deleted, permanently. Reject: nothing is deleted."]
    return "\n".join(lines)
