"""Naming an error without its text: the one scrubber every log line, XCom, reason and UI
message goes through. A server's or a database's message can echo what it was sent (a
turn's text, a cell), so quoted values and any run of a sent text are taken out, and a
database error is named by its kind and SQLSTATE alone.
"""

from __future__ import annotations

import re
from typing import Iterable

from synap_backfill.common.db import LOCK_NOT_AVAILABLE, is_database_error, sqlstate
from synap_backfill.common.frame import ASSISTANT_PREFIX, USER_PREFIX

# A database error is known by its kind in common.db; named here (the old db_errors module).
__all__ = ["LOCK_NOT_AVAILABLE", "MAX_REASON_LENGTH", "describe_error", "first_line",
           "is_database_error", "reason_code", "scrub", "shorten", "sql_error", "sqlstate"]

MAX_REASON_LENGTH = 120  # a counted reason code
QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def scrub(message: str, documents: Iterable[str] = ()) -> str:
    """One line of a message with anything that may echo the input taken out.

    Quoted values go (which also folds messages that differ only in them into
    one reason), and so does any run of a sent document's text, whole or its
    first 80, 40 or 20 characters, in case a server echoes it truncated.
    """
    text = QUOTED.sub("'…'", " ".join(message.split()))
    for document in documents:
        for line in document.splitlines():
            for prefix in (USER_PREFIX, ASSISTANT_PREFIX):
                line = line.removeprefix(prefix)
            line = " ".join(line.split())
            for n in (len(line), 80, 40, 20):
                if len(line[:n]) >= 8 and line[:n] in text:
                    text = text.replace(line[:n], "…")
                    break
    return text


def first_line(exc: BaseException) -> str:
    """An exception's first line, scrubbed."""
    return scrub((str(exc).strip().splitlines() or [""])[0])


def shorten(text: str, limit: int = MAX_REASON_LENGTH) -> str:
    return text[:limit] + "…" if len(text) > limit else text


def describe_error(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line``, scrubbed, the line cut at ``limit``: how a failure is shown."""
    line = shorten(first_line(exc), limit)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def reason_code(message: str | None, limit: int = 80) -> str:
    """A server's reason (an extraction's ``error_message``) as a short code to count by."""
    lines = (message or "").strip().splitlines() or ["no reason given"]
    return shorten(scrub(lines[0]))[:limit]


def sql_error(exc: BaseException) -> str:
    """``LockNotAvailable, SQLSTATE 55P03``: a database error's kind and code, never its text."""
    state = sqlstate(exc)
    return f"{type(exc).__name__}" + (f", SQLSTATE {state}" if state else "")
