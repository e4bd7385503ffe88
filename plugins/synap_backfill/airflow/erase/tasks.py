"""The bodies of the ``synap_erase`` DAG's tasks: erase one person from every Synap target.

    resolve_erase → plan_erase → approve_erase → suppress_person → erase_target[n] → summarize_erase

A user id given in the params goes nowhere else: XCom, logs and the ledger carry
the person's keyed hashes (``deletion.person.PersonRef``); the Synap page's Erase form
triggers with those hashes alone. The engine is ``erase.py``; deleting is the
undo engine's (``deletion.undo.undo_partition``).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import closing
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from synap_backfill.airflow.erase.finder import Finder
from synap_backfill.airflow.metrics import StatsMeter, deletion_observed
from synap_backfill.airflow.shared import stopped_before
from synap_backfill.common.counters import add_up
from synap_backfill.deletion.erase import (
    EraseTarget,
    HeldDocument,
    forget,
    frozen_documents,
    record_erasure,
    still_held,
    wait_for_batches,
)
from synap_backfill.deletion.erase_config import EraseConfig, ErasePlan
from synap_backfill.deletion.memories import Place, delete_memories
from synap_backfill.deletion.person import PersonRef
from synap_backfill.deletion.undo import Document, UndoClient, UndoReport
from synap_backfill.delivery.target import SynapTarget
from synap_backfill.holdings.inventory import Holding, holdings
from synap_backfill.identity.keys import (
    PersonKeyMismatch,
    PersonKeyMissing,
    Suppression,
    check_keyring,
    require_keyring,
    suppress,
)
from synap_backfill.preflight import PreflightError, unknown_keys
from synap_backfill.schema import ensure_tables

if TYPE_CHECKING:
    from synap_backfill.common.source import SourceDeclaration

log = logging.getLogger("synap_backfill")


def resolve_erase(params: Mapping[str, Any], *, conf: Mapping[str, Any] | None = None,
                  known: Iterable[str] = (), ti: Any = None,
                  source: "SourceDeclaration | None" = None) -> dict[str, Any]:
    """Validate the params, name the person by keyed hashes; refuse in one line what cannot work.

    ``source``: what the deployment declares (ledger, person key, approval) wins over the
    params, and a conf that changes it is refused."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.shared import failure_to_xcom
    from synap_backfill.common.checks import ParamError

    # A param, a key or a precondition to fix; a ValueError: a value the models refuse.
    with failure_to_xcom(ti, (PreflightError, PersonKeyMissing, PersonKeyMismatch, ParamError,
                              ValueError)):
        if source is not None:
            params = source.apply(params, conf, source.fixed(EraseConfig.params(), backfill=False))
        if conf is not None:
            unknown_keys(conf, known)
        config: EraseConfig = EraseConfig.from_params(params)
        keyring = require_keyring(config.person_key_conn_id)
        with closing(PostgresHook(postgres_conn_id=config.ledger_conn_id).get_conn()) as conn:
            ensure_tables(conn, config.ledger_schema)
            check_keyring(conn, config.ledger_schema, keyring, config.person_key_conn_id)
        if config.person:
            ref = PersonRef.from_token(config.person)
            if sorted(h.key_id for h in ref.hashes) != sorted(keyring.ids) or \
                    ref.hashes[0].key_id != keyring.current.id:
                raise PreflightError(
                    f"param 'person': it was made with person key {ref.hashes[0].key_id}"
                    f" ({len(ref.hashes)} keys), not with the keys connection"
                    f" {config.person_key_conn_id!r} holds now ({keyring.current.id},"
                    f" {len(keyring.ids)} keys): make it again on the Synap page")
        else:
            assert config.user_id is not None  # the model requires one of the two
            ref = PersonRef.of(keyring, config.user_id, config.customer_id)
    plan = ErasePlan(person=ref.token(), dry_run=config.dry_run,
                     include_live_memories=config.include_live_memories,
                     require_approval=config.require_approval,
                     extraction_wait=config.extraction_wait, ledger_conn_id=config.ledger_conn_id,
                     ledger_schema=config.ledger_schema,
                     person_key_conn_id=config.person_key_conn_id)
    log.info("erasure of %s%s", plan.who, " (a dry run: nothing is deleted)" if plan.dry_run else "")
    return plan.to_dict()


def plan_erase(plan_dict: Mapping[str, Any], params: Mapping[str, Any] | None = None, *,
               ti: Any = None) -> list[dict[str, Any]]:
    """The targets holding documents of the person, with counts: small dicts, never ids."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.compat import AirflowFailException

    plan = ErasePlan.from_dict(plan_dict)
    finder = Finder(plan, require_keyring(plan.person_key_conn_id))
    try:
        with closing(PostgresHook(postgres_conn_id=plan.ledger_conn_id).get_conn()) as conn:
            found = [t for t, _ in finder.targets(conn)]
    except AirflowFailException as exc:  # one line, for the summary and the Synap tab
        if ti is not None:
            ti.xcom_push(key="failure", value=str(exc))
        raise
    log.info("%s: %d documents in %d Synap instances (%s)", plan.who,
             sum(t.documents + t.without_id for t in found), len(found),
             ", ".join(f"{t.label}: {t.documents + t.without_id}" for t in found) or "none")
    nothing = _nothing_found(found)
    if nothing:
        log.warning("%s", nothing)
    return [t.to_dict() for t in found]


def _nothing_found(targets: Sequence[EraseTarget]) -> str | None:
    """The loud line of an erasure that finds the person nowhere (a mistyped id, say)."""
    if any(t.documents or t.without_id or t.unattributed or t.in_source for t in targets):
        return None
    other = max((t.other_case for t in targets), default=0)
    return ("NOTHING FOUND: no document and no source row of this person in any Synap instance"
            " or source the ledger knows. Check the id: it is matched as the source stores it"
            " (trimmed), case included" + (f"; {other:,} source rows hold it in another case"
                                          if other else "") + ". A real run still records the"
            " suppression, so their turns are held back should they appear")


def suppress_person(plan_dict: Mapping[str, Any], targets: Sequence[Mapping[str, Any]], *,
                    dag_id: str, run_id: str, ti: Any = None) -> list[dict[str, Any]]:
    """Record the suppression under every holding's fence, wait for the batches marked before
    it, and read the targets again under the fence: what ``erase_target`` maps over. A dry
    run records nothing and passes the plan's targets on."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.compat import AirflowFailException

    plan = ErasePlan.from_dict(plan_dict)
    try:
        with closing(PostgresHook(postgres_conn_id=plan.ledger_conn_id).get_conn()) as conn:
            record_erasure(conn, plan.ledger_schema, dag_id, run_id, _person_label(plan),
                           plan.dry_run)
            if plan.dry_run:
                return [dict(t) for t in targets]
            keyring = require_keyring(plan.person_key_conn_id)
            # Under the current key (every backfill checks its keys): the user id, for
            # documents without a customer; the pair, for documents with one.
            current = plan.ref.hashes[0]
            wanted = {Suppression(current.user, "user", current.key_id)}
            wanted |= {Suppression(p, "pair", current.key_id) for p in
                       {current.pair, *(t["current"] for t in targets if t["form"] == "pair")} if p}
            fenced = suppress(conn, plan.ledger_schema, sorted(wanted, key=str), dag_id=dag_id,
                              run_id=run_id)
            log.info("%s suppressed: no backfill or replay into any of %d targets sends their turns"
                     " from now on", plan.who, len(fenced))
            waited = wait_for_batches(conn, plan.ledger_schema, fenced)
            if waited.timed_out:
                raise AirflowFailException(
                    f"{sum(waited.timed_out.values())} partitions still had batches on the wire"
                    " after 600 s, sent into Synap before the suppression: what they stored is"
                    " not known yet, so nothing was deleted. The suppression is recorded (no later"
                    " batch sends their turns): erase again once those partitions finish")
            found = Finder(plan, keyring).targets(conn)
    except AirflowFailException as exc:
        if ti is not None:
            ti.xcom_push(key="failure", value=str(exc))
        raise
    out = []
    by_holding = {t.holding: t for t, _ in found}
    for holding, n in waited.dead.items():  # its lost answers may have stored their turns
        if holding not in by_holding:
            continue
        by_holding[holding] = _with(by_holding[holding], unanswered=n)
    out = [t.to_dict() for t in by_holding.values()]
    if waited.dead:
        log.warning("%d partitions died with batches on the wire before the suppression: what they"
                    " stored is in no ledger", sum(waited.dead.values()))
    return out


def _with(target: EraseTarget, **changes: Any) -> EraseTarget:
    from dataclasses import replace

    return replace(target, **changes)


def _person_label(plan: ErasePlan) -> str:
    first = plan.ref.hashes[0]
    return first.pair or first.user


def erase_target(plan_dict: Mapping[str, Any], target_dict: Mapping[str, Any],
                 params: Mapping[str, Any], *, run_id: str, dag_id: str = "synap_erase"
                 ) -> dict[str, Any]:
    """Delete (a dry run: count) the memories of the person's documents in one target; a
    document is forgotten only once its memories are gone."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    plan = ErasePlan.from_dict(plan_dict)
    target = EraseTarget.from_dict(target_dict)
    keyring = require_keyring(plan.person_key_conn_id)
    finder = Finder(plan, keyring)
    ledger_hook = PostgresHook(postgres_conn_id=plan.ledger_conn_id)
    with closing(ledger_hook.get_conn()) as conn:
        holding = next(h for h in holdings(conn, plan.ledger_schema) if h.id == target.holding)
        finder.isolation(holding)  # the instance the ledger recorded, or nothing is deleted

        def found() -> list[HeldDocument]:
            return finder.target(conn, holding, target.live)[1]

        docs = (found() if plan.dry_run else
                frozen_documents(conn, plan.ledger_schema, dag_id, run_id, holding.id, found))
    report = UndoReport(target.label, f"erase|{target.holding}", dry_run=plan.dry_run)
    synap = SynapTarget.connect(target.synap_conn_id)
    with_id = [d for d in docs if d.ingestion_id]
    live: dict[str, Any] = {}

    async def live_too(client: UndoClient, sdk: Any) -> None:
        if target.live:
            live.update(await _delete_user(client, sdk, synap, params, finder, holding, target,
                                           plan.dry_run))

    # Each document is forgotten in the checkpoint that finishes it (its holding): one not
    # reached stays held, and pending, for the next erasure.
    place = None if plan.dry_run else Place(target.holding, f"erase|{run_id}", target.holding,
                                            dag_id, run_id, releases=False)
    asyncio.run(delete_memories(
        synap, ledger_hook.get_conn, plan.ledger_schema, instance=target.target,
        documents=[Document(n, str(d.ingestion_id)) for n, d in enumerate(with_id, start=1)],
        without_id=[d.document_id for d in docs if not d.ingestion_id], report=report,
        place=place, wait_seconds=plan.extraction_wait, label=f"erase {target.label}",
        then=live_too, survey=(dag_id, run_id, str(target.holding)) if plan.dry_run else None))
    deletion_observed(synap.hook, target.target, report, dag_id)
    pending: list[HeldDocument] = []
    unattributed, unanswered = target.unattributed, target.unanswered
    if not plan.dry_run:
        with closing(ledger_hook.get_conn()) as conn:
            pending = still_held(conn, plan.ledger_schema, target.holding, docs)
            if live.get("status") == "complete":
                # Everything the instance held of the user is gone: nothing of theirs is pending.
                forget(conn, plan.ledger_schema, target.holding, pending)
                pending, unattributed, unanswered = [], 0, 0
    log.info("erase %s: %s%s", target.label, report.label_with_counts().split(" · ", 1)[-1],
             f"; {len(pending)} documents still held (pending)" if pending else "")
    return {**report.to_xcom(), "target": target.target, "live": live, "pending": len(pending),
            "unattributed": unattributed, "unanswered": unanswered}


async def _delete_user(client: UndoClient, sdk: Any, synap: SynapTarget, params: Mapping[str, Any],
                       finder: Finder, holding: Holding, target: EraseTarget,
                       dry_run: bool) -> dict[str, Any]:
    """Everything the instance holds about the user, the live app's writes included
    (``data.delete``, scope user); its counts, as Synap reports them. The user id in clear
    comes from the params, or from the source's rows (found by hash), in memory only."""
    from maximem_synap.scoping import B2C_ISOLATION

    from synap_backfill.delivery.documents import B2B_ISOLATION

    config = EraseConfig.from_params(params)
    match = finder.source(holding)
    user = config.user_id or match.user_id
    if not user:
        raise ValueError("include_live_memories: the user id is not in the source any more, and a"
                         " person token carries none; trigger synap_erase with user_id for this")
    isolation = synap.isolation(sdk)
    customer = None
    if isolation != B2C_ISOLATION:
        customer = config.customer_id or next(
            (c for c in match.turns if c and {k.pair(c, user) for k in finder.keyring.keys}
             & set(target.persons)), None)
    if isolation == B2B_ISOLATION and not customer:
        raise ValueError("param 'customer_id': include_live_memories on a B2B instance deletes"
                         " within one customer; give the user's customer_id")
    result = await client.delete_user(user, customer, dry_run=dry_run)
    return {"status": str(getattr(result.status, "value", result.status)),
            "counts": {k: v for k, v in (result.counts or {}).items() if isinstance(v, (int, float))}}


def summarize_erase(plan_dict: Mapping[str, Any] | None, targets: Sequence[Mapping[str, Any]] | None,
                    erased: Sequence[Mapping[str, Any]] | None, *, dag_id: str, run_id: str,
                    before: Sequence[str | None] | None = None, ti: Any = None) -> dict[str, Any]:
    """Add up the targets; fail when one did not finish, or anything of the person is left."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.compat import AirflowFailException

    if plan_dict is None or targets is None:
        stopped_before("erasure stopped before any target", before)
    plan = ErasePlan.from_dict(plan_dict)
    found = [EraseTarget.from_dict(t) for t in targets]
    results = {int(str(r["key"]).split("|", 1)[1]): r for r in erased or [] if r}
    reports = {h: UndoReport.from_xcom(r) for h, r in results.items()}
    problems = [f"target {t.label} did not finish (failed or upstream failed)" for t in found
                if t.holding not in results]
    for t in found:
        r, report = results.get(t.holding), reports.get(t.holding)
        if r is None or report is None or plan.dry_run:
            continue
        problems += _left_behind(t, r, report, plan.extraction_wait)
    total = add_up(UndoReport("TOTAL", ""), reports.values())
    result = {"person": _person_label(plan), "dry_run": plan.dry_run, "targets": len(found),
              "documents": total.documents, "memories": total.memories, "deleted": total.deleted,
              "already_gone": total.already_gone, "without_id": total.without_id,
              "pending": sum(int(r.get("pending") or 0) for r in results.values()),
              "unattributed": sum(int(r.get("unattributed") or 0) for r in results.values()),
              "in_source": sum(t.in_source for t in found),
              "requests": total.requests, "problems": problems,
              "live": [r.get("live") for r in results.values() if r.get("live")]}
    nothing = _nothing_found(found)
    result["notes"] = [nothing] if nothing else []
    log.info("erasure summary: %s%s in %d targets: %d documents, %d memories %s, %d already gone,"
             " %d without an ingestion id, %d still pending%s", plan.who,
             " (dry run)" if plan.dry_run else "", len(found), result["documents"],
             result["memories"], "found" if plan.dry_run else f"found, {result['deleted']} deleted",
             result["already_gone"], result["without_id"], result["pending"],
             "; problems: " + "; ".join(problems) if problems else "")
    if nothing:
        log.warning("%s", nothing)
    with closing(PostgresHook(postgres_conn_id=plan.ledger_conn_id).get_conn()) as conn:
        record_erasure(conn, plan.ledger_schema, dag_id, run_id, _person_label(plan),
                       plan.dry_run, result)
    if not plan.dry_run:
        StatsMeter(dag_id).count("erasures.incomplete" if problems else "erasures")
    if problems:
        if ti is not None:
            ti.xcom_push(key="problems", value=problems)  # each in one line, for the Synap tab
        raise AirflowFailException("erasure incomplete: " + "; ".join(problems[:5]))
    return result


def _left_behind(target: EraseTarget, result: Mapping[str, Any], report: UndoReport,
                 wait: int) -> list[str]:
    """What of the person a target still holds, and what finishes it, one line each."""
    out = []
    pending = int(result.get("pending") or 0)
    if pending:
        lagging = sum(n for r, n in report.not_reached.items() if r.startswith("still being"))
        unknown = sum(n for r, n in report.not_reached.items() if "404" in r)
        line = f"{pending} documents of the person are still held by {target.label}"
        parts = []
        if lagging:
            parts.append(f"{lagging} still being extracted after extraction_wait {wait} s: erase"
                         " again once extraction has caught up (nothing was forgotten)")
        if unknown:
            parts.append(f"{unknown} unknown to Synap by their ingestion id (404)")
        if report.without_id:
            parts.append(f"{report.without_id} without an ingestion id (their answer was lost)")
        if report.failed_total:
            parts.append(f"{report.failed_total} memories could not be deleted: "
                         + ", ".join(f"{n} x {r}" for r, n in report.failed.items()))
        out.append(line + (": " + "; ".join(parts) if parts else "")
                   + ("; include_live_memories deletes everything the instance holds of the user"
                      if unknown or report.without_id else ""))
    if int(result.get("unattributed") or 0):
        out.append(f"{result['unattributed']} documents held by {target.label} since before ledger"
                   " version 4 name the user id alone, and their rows left the source: which"
                   " customer's user they were cannot be told; include_live_memories with"
                   " customer_id deletes that customer's user in the instance")
    if int(result.get("unanswered") or 0):
        out.append(f"{result['unanswered']} partitions sending into {target.label} died with"
                   " batches on the wire before the suppression: what they stored is in no"
                   " ledger; include_live_memories deletes everything the instance holds of the"
                   " user")
    return out


def approval_body(plan: ErasePlan, targets: list[Mapping[str, Any]]) -> str:
    found = [EraseTarget.from_dict(t) for t in targets]
    lines = [f"**Erase {plan.who}**: {sum(t.documents for t in found):,} documents with memories in"
             f" {len(found)} Synap instance{'' if len(found) == 1 else 's'}"
             + (", and everything the instances hold about the user (include_live_memories)"
                if plan.include_live_memories else "") + ".", ""]
    lines += [f"- `{t.target}` ({t.source}, where a person is"
              f" {'a user id' if t.form == 'user' else 'a customer and user id'}):"
              f" {t.documents:,} documents, {t.without_id:,} without an ingestion id"
              + (f", {t.unattributed:,} not attributable to one customer" if t.unattributed else "")
              for t in found]
    nothing = _nothing_found(found)
    if nothing:
        lines += ["", f"**{nothing}**"]
    lines += ["", "Approve: their memories are deleted, permanently, and their turns are never sent"
              " again. Reject: nothing is deleted or suppressed."]
    return "\n".join(lines)
