"""The bodies of the ``synap_rekey`` DAG's tasks: every person hash named under the current key.

    plan_rekey → rekey_holding[n] → summarize_rekey

The engine is ``rekeying.process``; nothing is sent to Synap (whoami only, to learn how
each instance names a person).
"""

from __future__ import annotations

import logging
from contextlib import closing
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from synap_backfill.common.checks import ParamError
from synap_backfill.common.db import quote_identifier
from synap_backfill.holdings.inventory import holdings
from synap_backfill.identity.keys import (
    PersonKeyMismatch,
    PersonKeyMissing,
    check_keyring,
    describe_keys,
    require_keyring,
    retire_unused,
    suppressions_under,
)
from synap_backfill.rekeying.config import RekeyConfig
from synap_backfill.rekeying.process import RekeyReport, rekey_holding
from synap_backfill.schema import ensure_tables

if TYPE_CHECKING:
    from synap_backfill.common.source import SourceDeclaration

log = logging.getLogger("synap_backfill")


def plan_rekey(params: Mapping[str, Any], *, ti: Any = None, conf: Mapping[str, Any] | None = None,
               source: "SourceDeclaration | None" = None) -> list[dict[str, Any]]:
    """The holdings with turns (or whose sources may hold persons with suppressions) not named
    under the current key: small dicts, counts only. ``source``: the declared ledger and key,
    which a ``conf`` cannot change."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.shared import fail_before_planning

    if source is not None:
        try:
            params = source.apply(params, conf, source.fixed(RekeyConfig.params(), backfill=False))
        except ParamError as exc:
            fail_before_planning(ti, str(exc))
    config: RekeyConfig = RekeyConfig.from_params(params)
    try:
        keyring = require_keyring(config.person_key_conn_id)
    except PersonKeyMissing as exc:
        fail_before_planning(ti, str(exc))
    with closing(PostgresHook(postgres_conn_id=config.ledger_conn_id).get_conn()) as conn:
        ensure_tables(conn, config.ledger_schema)
        try:
            check_keyring(conn, config.ledger_schema, keyring, config.person_key_conn_id)
        except PersonKeyMismatch as exc:
            fail_before_planning(ti, str(exc))
        s = quote_identifier(config.ledger_schema)
        with conn.cursor() as cur:
            cur.execute(f"SELECT holding, count(*) FROM {s}.held_turns WHERE person_key IS"
                        " DISTINCT FROM %s GROUP BY holding", (keyring.current.id,))
            stale = {int(h): int(n) for h, n in cur.fetchall()}
        conn.commit()
        old_suppressions = len(suppressions_under(conn, config.ledger_schema,
                                                  [k.id for k in keyring.previous]))
        found: list[dict[str, Any]] = [
            {"holding": h.id, "label": f"{h.target} ({h.source})", "turns": stale.get(h.id, 0)}
            for h in holdings(conn, config.ledger_schema) if stale.get(h.id) or old_suppressions]
    log.info("person key %s: %d held turns in %d holdings, and %d suppressions, are named under"
             " other keys%s", keyring.current.id, sum(int(f["turns"]) for f in found), len(found),
             old_suppressions, " (a dry run: nothing is changed)" if config.dry_run else "")
    return found


def rekey_target(params: Mapping[str, Any], item: Mapping[str, Any]) -> dict[str, Any]:
    """Name one holding's held turns (and its source's suppressed persons) under the current key."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from maximem_synap.scoping import B2C_ISOLATION

    from synap_backfill.airflow.erase.finder import instance_isolation
    from synap_backfill.airflow.source_hook import source_hook

    config: RekeyConfig = RekeyConfig.from_params(params)
    keyring = require_keyring(config.person_key_conn_id)
    with closing(PostgresHook(postgres_conn_id=config.ledger_conn_id).get_conn()) as ledger:
        holding = next(h for h in holdings(ledger, config.ledger_schema) if h.id == item["holding"])
        b2c = (instance_isolation(holding, changes="nothing was changed") == B2C_ISOLATION
               or not holding.columns.get("customer_id"))
        with closing(source_hook(holding.postgres_conn_id).get_conn()) as source:
            report = rekey_holding(ledger, source, config.ledger_schema, holding, keyring, b2c=b2c,
                                   dry_run=config.dry_run)
    log.info("rekey %s: %d held turns named under key %s, %d left under their old key (their rows"
             " left the source), %d suppressions recorded again", report.label, report.rederived,
             keyring.current.id, report.left, report.suppressions)
    return report.to_dict()


def summarize_rekey(params: Mapping[str, Any], reports: Sequence[Mapping[str, Any]] | None
                    ) -> dict[str, Any]:
    """Retire every key nothing is recorded under any more; say what each other one still holds."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    config: RekeyConfig = RekeyConfig.from_params(params)
    keyring = require_keyring(config.person_key_conn_id)
    done = [RekeyReport(**dict(r)) for r in reports or [] if r]
    with closing(PostgresHook(postgres_conn_id=config.ledger_conn_id).get_conn()) as conn:
        keys = (describe_keys(conn, config.ledger_schema) if config.dry_run else
                retire_unused(conn, config.ledger_schema, keyring.current.id))
    notes = []
    for k in keys:
        if k["key_id"] == keyring.current.id:
            continue
        if k["retired"]:
            notes.append(f"key {k['key_id']}: retired, nothing is recorded under it; it may leave"
                         " previous_passwords")
        else:
            notes.append(f"key {k['key_id']}: {k['held_turns']:,} held turns and"
                         f" {k['suppressions']:,} suppressions are still under it (their rows left"
                         " every source): keep it in previous_passwords")
    for line in notes:
        log.info("%s", line)
    return {"dry_run": config.dry_run, "current": keyring.current.id,
            "rederived": sum(r.rederived for r in done), "left": sum(r.left for r in done),
            "suppressions": sum(r.suppressions for r in done), "keys": keys, "notes": notes}
