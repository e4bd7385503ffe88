"""``resolve_config``: the backfill's params validated, and everything they point at checked,
before anything is read or sent."""

from __future__ import annotations

import logging
from contextlib import closing
from datetime import datetime
from typing import Any, Iterable, Mapping

from synap_backfill.airflow.shared import failure_to_xcom
from synap_backfill.common.checks import ParamError
from synap_backfill.common.config import RENAMED_PARAMS, SHAPE_PARAMS, BackfillConfig, config_from_params
from synap_backfill.common.source import SourceDeclaration, form_source_warning
from synap_backfill.identity.keys import PersonKeyMismatch, PersonKeyMissing, check_keyring, load_keyring
from synap_backfill.preflight import (
    PreflightError,
    check_ledger,
    check_source,
    check_synap_settings,
    unknown_keys,
    who_is,
)
from synap_backfill.privacy.redaction import check as check_shaping

DECLARED_ONLY = ("source_query", *SHAPE_PARAMS)  # what reads SQL or reshapes turns: never a conf

log = logging.getLogger("synap_backfill")


def resolve_config(params: Mapping[str, Any], *, conf: Mapping[str, Any] | None = None,
                   known: Iterable[str] = (), ti: Any = None,
                   interval: tuple[datetime, datetime] | None = None,
                   declared: SourceDeclaration | None = None, dag_id: str = "") -> dict[str, Any]:
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

    ``declared``: the deployment's source declaration. What it declares comes from it, whatever
    the params say, and a conf that sets one of those to another value is refused.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    from synap_backfill.airflow.source_hook import source_hook

    with failure_to_xcom(ti, (ParamError, PreflightError)):
        if declared is None:
            log.warning(form_source_warning(dag_id or "this DAG"))
            for name in DECLARED_ONLY:
                if params.get(name) not in (None, "", BackfillConfig.model_fields[name].default):
                    raise ParamError(name, "read only where the deployment declares it"
                                           " (synap_source.yaml), never from a run's conf")
        else:
            params = declared.apply(params, conf, declared.values)
        if conf is not None:  # declared keys are known: a conf may repeat what is declared
            unknown_keys(conf, [*known, *RENAMED_PARAMS, *(declared.values if declared else ())])
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
        reader = source_hook(config.postgres_conn_id, config.source_statement_timeout)
        with closing(reader.get_conn()) as conn:
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
