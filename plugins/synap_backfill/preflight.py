"""Checks before anything runs: the first task fails in one line, naming the param or connection.

A missing table, a wrong column, a typo in a conf key, a read-only ledger or a
refused API key would otherwise surface only when a partition fails, under a
traceback, after the plan. Each check reads the catalog or calls ``whoami``:
no row is read, nothing is sent, and no message names a value from the source
(a column of the wrong type is caught by its type, before any value is parsed).
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Iterable

from synap_backfill.common.config import BackfillConfig, SourceColumns
from synap_backfill.common.db import as_text, quote_identifier
from synap_backfill.common.errors import sql_error
from synap_backfill.extract import sources
from synap_backfill.extract.source_sql import SourceSQL

if TYPE_CHECKING:
    from synap_backfill.delivery.target import SynapTarget

# pg_type.typcategory: what each mapped column may be.
TIMESTAMP_TYPES = {"D"}  # date, timestamp, timestamptz
TEXT_TYPES = {"S"}  # text, varchar, char, name
NUMBER_TYPES = {"N"}  # smallint, integer, bigint, numeric
JSON_TYPES = {"U"}  # json, jsonb
# What created_at may be, by created_at_format.
_TIMES = {"timestamp": (TIMESTAMP_TYPES, "a timestamp or date"),
          "epoch_seconds": (NUMBER_TYPES, "a number (epoch seconds)"),
          "epoch_milliseconds": (NUMBER_TYPES, "a number (epoch milliseconds)"),
          "iso8601": (TEXT_TYPES, "text (ISO-8601)")}
_KINDS = {"created_at": (TIMESTAMP_TYPES, "a timestamp or date"),
          "user_text": (TEXT_TYPES, "text"), "assistant_text": (TEXT_TYPES, "text"),
          "message_index": (NUMBER_TYPES, "a whole number")}  # ids: anything casts to text


class PreflightError(ValueError):
    """What is wrong and what to do, in one line, naming the param or connection."""


def unknown_keys(conf: Iterable[str], known: Iterable[str]) -> None:
    """Refuse conf keys no param has (a typo would otherwise be ignored silently)."""
    known = sorted(known)
    unknown = sorted(set(conf) - set(known))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise PreflightError(f"unknown conf key{'s' if len(unknown) > 1 else ''}: {', '.join(hints)};"
                             " the params are listed on the trigger form")


def check_source(conn: Any, config: BackfillConfig) -> str:
    """The relation exists, the connection may read it, and each mapped column fits.

    Returns the relation as the database names it (``database.schema.relation``): what an
    inventory is kept for, however the param spelled it.
    """
    where = f"on connection {config.postgres_conn_id}"
    sql = sources.turns(config)
    if sql.query:
        source, columns = _query_columns(conn, sql, where)
        _check_columns(config, columns, f"source_query {config.source_table!r}")
        _check_shape(conn, sql, where)
        return source
    with conn.cursor() as cur:
        cur.execute(*sql.relation_oid())
        (oid,) = cur.fetchone()
        if oid is None:
            nearest = _closest_relation(cur, config.source_table)
            raise PreflightError(f"param 'source_table': no table or view {config.source_table!r}"
                                 f" {where}" + (f" (did you mean {nearest!r}?)" if nearest else
                                                " (names are case-sensitive; give SCHEMA.TABLE if it"
                                                " is not on the search_path)"))
        cur.execute(sql.relation_facts(), (oid,))
        source, readable = cur.fetchone()
        if not readable:
            raise PreflightError(f"param 'source_table': the user of connection"
                                 f" {config.postgres_conn_id} may not SELECT from"
                                 f" {config.source_table}: GRANT SELECT to it")
        cur.execute(sql.relation_columns(), (oid,))
        # A SQL_ASCII database answers text as bytes.
        columns = {as_text(name): (as_text(shown), as_text(category))
                   for name, shown, category in cur.fetchall()}
    conn.commit()
    _check_columns(config, columns, config.source_table)
    _check_shape(conn, sql, where)
    return str(as_text(source))


def _check_shape(conn: Any, sql: SourceSQL, where: str) -> None:
    """A message table's paths, roles and filter run (on no row), each named if it does not."""
    for key, probe in sql.shape_probes():
        try:
            with conn.cursor() as cur:
                cur.execute(probe)
        except Exception as exc:
            conn.rollback()
            raise PreflightError(f"param {key!r}: PostgreSQL refused it {where}"
                                 f" ({sql_error(exc)}): check its syntax and the columns it"
                                 " names") from None
        conn.commit()


def _query_columns(conn: Any, sql: SourceSQL, where: str) -> tuple[str, dict[str, tuple[str, str]]]:
    """A declared query's result columns (run with no row) and its name in the inventory,
    ``database.query.<source_table>``; a query that does not run is named in one line."""
    try:
        with conn.cursor() as cur:
            cur.execute(sql.result_columns())
            described = [(as_text(d[0]), int(d[1])) for d in cur.description]
            cur.execute(sql.type_facts(), ([oid for _, oid in described],))
            types = {int(oid): (as_text(shown), as_text(category)) for oid, shown, category in
                     cur.fetchall()}
            cur.execute(sql.database())
            (database,) = cur.fetchone()
    except Exception as exc:
        conn.rollback()
        raise PreflightError(f"param 'source_query': it does not run {where}"
                             f" ({sql_error(exc)})") from None
    conn.commit()
    return (f"{as_text(database)}.query.{sql.table.split('.')[-1]}",
            {name: types.get(oid, ("unknown", "X")) for name, oid in described})


def _check_columns(config: BackfillConfig, columns: dict[str, tuple[str, str]], what: str) -> None:
    """Each mapped column exists in ``columns`` (name: (type shown, category)) and fits."""
    for param, (column, kinds) in _mapped(config).items():
        if not column:
            continue
        if column not in columns:
            close = difflib.get_close_matches(column, list(columns), n=1)
            raise PreflightError(f"param {param!r}: {what} has no column"
                                 f" {column!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                                 + f"; its columns: {', '.join(sorted(columns))[:300]}")
        shown, category = columns[column]
        if kinds and category not in kinds[0]:
            raise PreflightError(f"param {param!r}: column {column!r} of {what}"
                                 f" is {shown}, not {kinds[1]}")


def _mapped(config: BackfillConfig) -> dict[str, tuple[str, tuple[set[str], str] | None]]:
    """The declared columns by param, with what each may hold (None: anything, read as text)."""
    mapped = {f"{f.name}_column": (getattr(config.columns, f.name), _KINDS.get(f.name))
              for f in fields(SourceColumns)}
    mapped["created_at_column"] = (config.columns.created_at, _TIMES[config.created_at_format])
    if config.tiebreak_column:
        mapped["tiebreak_column"] = (config.tiebreak_column, None)
    if config.message_key_column:  # a key of any type names the turn instead of the index
        del mapped["message_index_column"]
        mapped["message_key_column"] = (config.message_key_column, None)
    grain = config.grain
    if grain is not None:  # a message table: its texts and roles are in its own columns
        for name in ("user_text_column", "assistant_text_column"):
            del mapped[name]
        mapped["messages.role_column"] = (grain.role_column, None)
        mapped["messages.text_column"] = (grain.text_column, (TEXT_TYPES | JSON_TYPES,
                                                              "text, json or jsonb") if
                                          grain.text_path else (TEXT_TYPES, "text"))
    return mapped


def _closest_relation(cur: Any, name: str) -> str | None:
    """The readable relation whose name is closest to ``name``: in its schema if it names one,
    else on the search_path (a typo gets a suggestion, not only a refusal)."""
    schema, _, table = name.rpartition(".")
    cur.execute(SourceSQL.readable_relations(), (schema, schema))
    names = {as_text(rel): as_text(nsp) for nsp, rel in cur.fetchall()}
    found = difflib.get_close_matches(table, list(names), n=1, cutoff=0.6)
    if not found:
        return None
    return f"{names[found[0]]}.{found[0]}" if schema else found[0]


def check_ledger(conn: Any, config: BackfillConfig) -> None:
    """The ledger's schema and tables exist or can be made (checkpoints must be writable)."""
    from synap_backfill.schema import LedgerBusy, ensure_tables

    try:
        ensure_tables(conn, config.ledger_schema)
    except LedgerBusy as exc:
        raise PreflightError(f"param 'ledger_schema': {exc}") from None
    except Exception as exc:  # a DB-API error: name its kind, never its text's values
        conn.rollback()
        raise PreflightError(
            f"param 'ledger_schema': schema {quote_identifier(config.ledger_schema)} on connection"
            f" {config.ledger_conn_id or config.postgres_conn_id} is not writable"
            f" ({sql_error(exc)}); grant CREATE on the database, or point ledger_conn_id"
            " elsewhere") from None


def check_synap_settings(conn_id: str) -> "SynapTarget":
    """The connection read, its extras typed and bounded (``SynapExtras``), before any call:
    a bad one fails the run in the line ``InvalidExtra`` words, naming connection and extra."""
    from synap_backfill.delivery.target import SynapTarget
    from synap_provider.connection_fields import InvalidExtra

    try:
        return SynapTarget.connect(conn_id)
    except InvalidExtra as exc:
        raise PreflightError(str(exc)) from None


def check_synap(hook: Any, conn_id: str) -> str:
    """``whoami`` answers with this key: the instance it opens."""
    return str(who_is(hook, conn_id).get("instance_id") or "")


def who_is(hook: Any, conn_id: str) -> dict[str, Any]:
    """``whoami``'s answer for this key (instance, isolation); a refusal in one line."""
    import asyncio

    from maximem_synap import AuthenticationError

    try:
        who = asyncio.run(hook.whoami())
    except AuthenticationError:
        raise PreflightError(f"connection {conn_id!r}: Synap refused the API key (whoami"
                             " answered 401/403); put a valid key in its password") from None
    except Exception as exc:
        raise PreflightError(f"connection {conn_id!r}: Synap did not answer whoami"
                             f" ({type(exc).__name__}); check its host and that the service is"
                             " up") from None
    return dict(who)


