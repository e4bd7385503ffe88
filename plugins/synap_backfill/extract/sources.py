"""The source's turns, as every reader gets them: ``turns(config)`` or ``recorded(...)``.

A table of the recipe's shape is its own turns (``source_sql.SourceSQL``); a message
table's turns are made from its messages (``message_sql.MessageSQL``). Callers ask
here and never branch on which.
"""

from __future__ import annotations

from typing import Any, Mapping

from synap_backfill.common.config import BackfillConfig
from synap_backfill.common.grain import grain_of
from synap_backfill.extract.message_sql import MessageSQL
from synap_backfill.extract.source_sql import SourceSQL


def turns(config: BackfillConfig) -> SourceSQL:
    """The SQL of the declared source's turns."""
    return _as_turns(SourceSQL.declared(config), config.messages)


def recorded(table: str, columns: Mapping[str, str], query: str | None = None,
             settings: Mapping[str, Any] | None = None) -> SourceSQL:
    """The SQL of the turns a holding's (or an undone run's) source was read as."""
    return _as_turns(SourceSQL.recorded(table, columns, query, settings),
                     (settings or {}).get("messages"))


def _as_turns(sql: SourceSQL, messages: Any) -> SourceSQL:
    grain = grain_of(messages)
    return sql if grain is None else MessageSQL.over(sql, grain)
