"""The bodies of the ``synap_erase`` DAG's tasks: erase one person from every Synap target.

    resolve_erase → plan_erase → approve_erase → suppress_person → erase_target[n] → summarize_erase

The user id comes from the run's params and goes nowhere else: XCom, logs and
the ledger carry the person's keyed hash (``persons.py``). The engine is
``erase.py``; deleting is the undo engine's (``undo.undo_partition``).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, closing
from typing import Any, Iterable, Mapping, Sequence

from ..erase import (EraseTarget, documents_of, forget, holdings, record_erasure,
                     wait_for_batches)
from ..erase_config import EraseConfig, ErasePlan
from ..ledger import ensure_tables
from ..partition import describe_error
from ..persons import PersonKeyMissing, require_key, suppress
from ..preflight import PreflightError, check_synap, check_synap_settings, unknown_keys
from ..source import quote_identifier
from ..target import SynapTarget
from ..undo import Document, UndoClient, UndoReport, undo_partition
from ..undo_ledger import PartitionUndoLedger

log = logging.getLogger("synap_backfill")


def resolve_erase(params: Mapping[str, Any], *, conf: Mapping[str, Any] | None = None,
                  known: Iterable[str] = (), ti: Any = None) -> dict[str, Any]:
    """Validate the params, name the person by their keyed hash; refuse in one line what cannot work."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from .tasks import _fail_before_planning

    try:
        if conf is not None:
            unknown_keys(conf, known)
        config: EraseConfig = EraseConfig.from_params(params)
        key = require_key(config.person_key_conn_id)
        with closing(PostgresHook(postgres_conn_id=config.ledger_conn_id).get_conn()) as conn:
            ensure_tables(conn, config.ledger_schema)
    except (PreflightError, PersonKeyMissing) as exc:
        _fail_before_planning(ti, str(exc))
    except Exception as exc:
        from ..checks import ParamError

        if isinstance(exc, ParamError):
            _fail_before_planning(ti, str(exc))
        if ti is not None:
            ti.xcom_push(key="failure", value=describe_error(exc))
        raise
    person = key.of(config.user_id)
    assert person is not None  # a user id is required
    plan = ErasePlan(person=person, dry_run=config.dry_run,
                     include_live_memories=config.include_live_memories,
                     require_approval=config.require_approval,
                     extraction_wait=config.extraction_wait, ledger_conn_id=config.ledger_conn_id,
                     ledger_schema=config.ledger_schema)
    log.info("erasure of %s%s", plan.who, " (a dry run: nothing is deleted)" if plan.dry_run else "")
    return plan.to_dict()


def _source_turns(params: Mapping[str, Any], postgres_conn_id: str, table: str,
                  settings: Mapping[str, Any]) -> list[str]:
    """The person's turns as a source holds them now (``conversation_id:message_index``)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    columns = settings.get("columns") or {}
    if not (postgres_conn_id and table and columns.get("user_id")):
        return []
    q = quote_identifier
    relation = ".".join(q(part) for part in table.split("."))
    conv, index = q(columns["conversation_id"]), q(columns["message_index"])
    try:
        with closing(PostgresHook(postgres_conn_id=postgres_conn_id).get_conn()) as conn, \
                conn.cursor() as cur:
            cur.execute(f"SELECT DISTINCT {conv}::text || ':' || trunc({index}::numeric)::text FROM"
                        f" {relation} WHERE {q(columns['user_id'])}::text = %s AND {conv} IS NOT NULL"
                        f" AND {index} IS NOT NULL", (EraseConfig.from_params(params).user_id,))
            return [row[0] for row in cur.fetchall()]
    except Exception as exc:  # the source is gone or moved: the ledger's record still finds them
        log.warning("the source %s could not be read for the person's turns (%s); erasing what the"
                    " ledger recorded under their key", table, describe_error(exc))
        return []


def plan_erase(plan_dict: Mapping[str, Any], params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The targets holding documents of the person, with counts: small dicts, never ids."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    plan = ErasePlan.from_dict(plan_dict)
    found = []
    asked: set[str] = set()  # instances whose user scope is asked for (include_live_memories)
    with closing(PostgresHook(postgres_conn_id=plan.ledger_conn_id).get_conn()) as conn:
        for holding, target, source, conn_id, pg_conn, table, settings in holdings(conn, plan.ledger_schema):
            turns = _source_turns(params, pg_conn, table, settings)
            docs = documents_of(conn, plan.ledger_schema, holding, plan.person, turns)
            live = plan.include_live_memories and target not in asked
            if docs or live:
                if live:
                    asked.add(target)
                found.append(EraseTarget(holding, target, source, conn_id,
                                         sum(1 for d in docs if d[2]), sum(1 for d in docs if not d[2]),
                                         live))
    log.info("%s: %d documents in %d Synap instances (%s)", plan.who,
             sum(t.documents + t.without_id for t in found), len(found),
             ", ".join(f"{t.label}: {t.documents + t.without_id}" for t in found) or "none")
    return [t.to_dict() for t in found]


def suppress_person(plan_dict: Mapping[str, Any], *, dag_id: str, run_id: str) -> dict[str, Any]:
    """Record the suppression under every target's fence, then wait for the batches marked
    before it: from here on no backfill sends the person's turns (a dry run records nothing)."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    plan = ErasePlan.from_dict(plan_dict)
    with closing(PostgresHook(postgres_conn_id=plan.ledger_conn_id).get_conn()) as conn:
        record_erasure(conn, plan.ledger_schema, dag_id, run_id, plan.person, plan.dry_run)
        if plan.dry_run:
            return {"suppressed": False, "waited_for": 0}
        every = [h[0] for h in holdings(conn, plan.ledger_schema)]
        suppress(conn, plan.ledger_schema, plan.person, every, dag_id=dag_id, run_id=run_id)
        waited = wait_for_batches(conn, plan.ledger_schema, every)
    log.info("%s suppressed: no backfill or replay into any of %d targets sends their turns from"
             " now on", plan.who, len(every))
    return {"suppressed": True, "waited_for": waited}


def erase_target(plan_dict: Mapping[str, Any], target_dict: Mapping[str, Any],
                 params: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
    """Delete (a dry run: count) the memories of the person's documents in one target."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.sdk.exceptions import AirflowFailException

    plan = ErasePlan.from_dict(plan_dict)
    target = EraseTarget.from_dict(target_dict)
    ledger_hook = PostgresHook(postgres_conn_id=plan.ledger_conn_id)
    try:
        instance = check_synap(check_synap_settings(target.synap_conn_id).hook, target.synap_conn_id)
    except PreflightError as exc:
        raise AirflowFailException(f"erase {target.label}: {exc}; nothing was deleted") from None
    if instance != target.target:
        raise AirflowFailException(
            f"connection {target.synap_conn_id!r} now opens Synap instance {instance}, not"
            f" {target.target} that the ledger recorded; nothing was deleted there. Point it back"
            " at that instance and erase again")
    with closing(ledger_hook.get_conn()) as conn:
        settings = next((h for h in holdings(conn, plan.ledger_schema) if h[0] == target.holding))
        turns = _source_turns(params, settings[4], settings[5], settings[6])
        docs = documents_of(conn, plan.ledger_schema, target.holding, plan.person, turns)
    report = UndoReport(target.label, f"erase|{target.holding}", dry_run=plan.dry_run)
    synap = SynapTarget.connect(target.synap_conn_id)
    with_id = [d for d in docs if d[2]]
    live: dict[str, Any] = {}

    async def run() -> None:
        with closing(ledger_hook.get_conn()) as conn:
            async with synap.session() as sdk, AsyncExitStack() as stack:
                pacing = stack.enter_context(closing(ledger_hook.get_conn())) if synap.paced else None
                pacer = synap.pacer(pacing, plan.ledger_schema, instance, label=f"erase {target.label}")
                client = UndoClient(sdk, pacer, synap.retry, f"erase {target.label}")
                # No holding: the turns are forgotten once all are done (``erase.forget``), so a
                # retry finds the same documents in the same order and resumes.
                ledger = None if plan.dry_run else PartitionUndoLedger(
                    conn, plan.ledger_schema, target.holding, f"erase|{run_id}", target.label,
                    holding=None, dag_id="", run_id=run_id)
                await undo_partition([Document(n, d[2]) for n, d in enumerate(with_id, start=1)
                                      if d[2]], [d[1] for d in docs if not d[2]], client, report,
                                     ledger, dry_run=plan.dry_run, wait_seconds=plan.extraction_wait)
                if target.live:
                    live.update(await _delete_user(client, sdk, synap, params, plan.dry_run))

    asyncio.run(run())
    if not plan.dry_run and not report.failed_total:
        with closing(ledger_hook.get_conn()) as conn:
            forget(conn, plan.ledger_schema, target.holding, [(d[0], d[1]) for d in docs])
    log.info("erase %s: %s", target.label, report.label_with_counts().split(" · ", 1)[-1])
    result = {**report.to_xcom(), "target": target.target, "live": live}
    if report.failed:
        raise AirflowFailException(
            f"erase {target.label}: {report.failed_total} memories could not be deleted: "
            + "; ".join(f"{n} x {r}" for r, n in report.failed.items()))
    return result


async def _delete_user(client: UndoClient, sdk: Any, synap: SynapTarget, params: Mapping[str, Any],
                       dry_run: bool) -> dict[str, Any]:
    """Everything the instance holds about the user, the live app's writes included
    (``data.delete``, scope user); its counts, as Synap reports them."""
    from maximem_synap.scoping import B2C_ISOLATION

    from ..documents import B2B_ISOLATION

    config = EraseConfig.from_params(params)
    isolation = synap.isolation(sdk)
    customer = None if isolation == B2C_ISOLATION else (config.customer_id or None)
    if isolation == B2B_ISOLATION and not customer:
        raise ValueError("param 'customer_id': include_live_memories on a B2B instance deletes"
                         " within one customer; give the user's customer_id")
    result = await client.delete_user(config.user_id, customer, dry_run=dry_run)
    return {"status": str(getattr(result.status, "value", result.status)),
            "counts": {k: v for k, v in (result.counts or {}).items() if isinstance(v, (int, float))}}


def summarize_erase(plan_dict: Mapping[str, Any] | None, targets: Sequence[Mapping[str, Any]] | None,
                    erased: Sequence[Mapping[str, Any]] | None, *, dag_id: str, run_id: str,
                    before: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Add up the targets; fail when one did not finish or a deletion failed."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from airflow.sdk.exceptions import AirflowFailException

    if plan_dict is None or targets is None:
        reason = next((b for b in before or () if b), "see the first task's log")
        raise AirflowFailException(f"the erasure stopped before any target: {reason}")
    plan = ErasePlan.from_dict(plan_dict)
    reports = [UndoReport.from_xcom({k: v for k, v in r.items() if k not in ("target", "live")})
               for r in erased or [] if r]
    done = {r.key for r in reports}
    missing = [EraseTarget.from_dict(t).label for t in targets
               if f"erase|{t['holding']}" not in done]
    problems = [f"target {label} did not finish (failed or upstream failed)" for label in missing]
    result = {"person": plan.person, "dry_run": plan.dry_run, "targets": len(targets),
              "documents": sum(r.documents for r in reports),
              "memories": sum(r.memories for r in reports),
              "deleted": sum(r.deleted for r in reports),
              "already_gone": sum(r.already_gone for r in reports),
              "without_id": sum(r.without_id for r in reports),
              "requests": sum(r.requests for r in reports), "problems": problems,
              "live": [r.get("live") for r in erased or [] if r and r.get("live")]}
    log.info("erasure summary: %s%s in %d targets: %d documents, %d memories %s, %d already gone,"
             " %d without an ingestion id%s", plan.who, " (dry run)" if plan.dry_run else "",
             len(targets), result["documents"], result["memories"],
             "found" if plan.dry_run else f"found, {result['deleted']} deleted",
             result["already_gone"], result["without_id"],
             "; problems: " + "; ".join(problems) if problems else "")
    with closing(PostgresHook(postgres_conn_id=plan.ledger_conn_id).get_conn()) as conn:
        record_erasure(conn, plan.ledger_schema, dag_id, run_id, plan.person, plan.dry_run, result)
    if problems:
        raise AirflowFailException("erasure incomplete: " + "; ".join(problems[:5]))
    return result


def approval_body(plan: ErasePlan, targets: list[Mapping[str, Any]]) -> str:
    found = [EraseTarget.from_dict(t) for t in targets]
    lines = [f"**Erase {plan.who}**: {sum(t.documents for t in found):,} documents with memories in"
             f" {len(found)} Synap instance{'' if len(found) == 1 else 's'}"
             + (", and everything the instances hold about the user (include_live_memories)"
                if plan.include_live_memories else "") + ".", ""]
    lines += [f"- `{t.target}` ({t.source}): {t.documents:,} documents, {t.without_id:,} without an"
              " ingestion id" for t in found]
    lines += ["", "Approve: their memories are deleted, permanently, and their turns are never sent"
              " again. Reject: nothing is deleted or suppressed."]
    return "\n".join(lines)
