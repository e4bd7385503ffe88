"""What the task bodies of every DAG share: the pool their Synap calls take slots of, and a
failure said in one line (and left in XCom for the summary and the Synap tab), scrubbed.

Light at the top: DAG files import it when they are parsed."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, NoReturn, Sequence

from synap_backfill.common.errors import describe_error

log = logging.getLogger("synap_backfill")

DEFAULT_POOL = "synap_api"  # the primary's pool; a region's is synap_<region>


def stopped_before(what: str, reasons: Sequence[str | None] | None) -> NoReturn:
    """A summary's failure when its run stopped before the mapped tasks: the first reason an
    earlier task left (its ``failure`` XCom), in one line."""
    from synap_backfill.airflow.compat import AirflowFailException

    reason = next((r for r in reasons or () if r), "see the first task's log")
    raise AirflowFailException(f"the {what}: {reason}")


def fail_before_planning(ti: Any, message: str) -> NoReturn:
    """Fail the task, without retries, leaving the one-line reason for the summary."""
    from synap_backfill.airflow.compat import AirflowFailException

    if ti is not None:
        ti.xcom_push(key="failure", value=message)
    raise AirflowFailException(message)


class DatabaseError(RuntimeError):
    """A database error, as the task fails with it: scrubbed, without the original's text."""


def raise_scrubbed(exc: BaseException) -> None:
    """Re-raise a database error without its text: Airflow logs a failing task's exception
    whole, and PostgreSQL's messages quote values (``invalid input syntax ...: "<a cell>"``)."""
    from synap_backfill.common.db import is_database_error

    if is_database_error(exc):
        raise DatabaseError(describe_error(exc)) from None


def one_line(exc: BaseException) -> str:
    """A task's failure in one line: our own reasons as written, anything else scrubbed and cut."""
    from synap_backfill.airflow.compat import AirflowFailException
    from synap_backfill.common.checks import ParamError
    from synap_backfill.pipeline.settings import PartitionFailed
    from synap_backfill.preflight import PreflightError

    if isinstance(exc, (AirflowFailException, PartitionFailed, ParamError, PreflightError)):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return describe_error(exc)


@contextmanager
def failure_to_xcom(ti: Any, refusals: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """A task body's failure left in XCom (key ``failure``), in one line, for the summary and
    the Synap tab. A refusal (``refusals``: a param or a precondition the operator fixes)
    fails the task without retries; anything else is re-raised, a database error without
    its text (``raise_scrubbed``)."""
    from synap_backfill.common.db import is_database_error

    try:
        yield
    except Exception as exc:
        if isinstance(exc, refusals) and not is_database_error(exc):
            fail_before_planning(ti, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if ti is not None:
            ti.xcom_push(key="failure", value=one_line(exc))
        raise_scrubbed(exc)
        raise


def connection_errors() -> tuple[type[BaseException], ...]:
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


def window_key_of(raw: Mapping[str, Any]) -> str:
    from synap_backfill.common.windows import window_key

    return window_key(raw.get("start"), raw.get("end"))
