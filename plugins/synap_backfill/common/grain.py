"""What a message-grain source is: one row per message, read as turns.

Most apps keep their history one row per message with a role, not one row per turn
as the vendor's recipe assumes. ``MessageGrain`` is the declared ``messages`` key of
a source (``docs/operating.md``, "Your app's schema"): which column holds the role
(or where in a JSON column), which roles are the user's and the assistant's, where
the text is (a column, or an SQL/JSON path into one), an optional row filter, and
how long after a user message its replies may come. The message key, the
conversation, user, customer and time columns are the source's own params, as for
the recipe's table. ``extract.message_sql`` turns messages into turns; the rule it
follows is written in its docstring.

Declared only: a trigger's conf never sets it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from synap_backfill.common.checks import ParamError

PARAM = "messages"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
DEFAULT_REPLY_WITHIN = 3600  # seconds: a chatbot answers in seconds, a busy desk in minutes


@dataclass(frozen=True)
class MessageGrain:
    """A message table's shape. ``*_path``: PostgreSQL SQL/JSON paths into the column (which
    holds JSON or JSONB, or text that parses as JSON); several matches are joined in order."""

    role_column: str
    text_column: str
    user_roles: tuple[str, ...] = ("user",)
    assistant_roles: tuple[str, ...] = ("assistant",)
    role_path: str | None = None
    text_path: str | None = None
    filter: str | None = None  # SQL over the message table's columns: which rows are messages
    reply_within_seconds: int = DEFAULT_REPLY_WITHIN

    @classmethod
    def from_mapping(cls, raw: Any) -> "MessageGrain":
        """Checked as declared; a ``ParamError`` names ``messages.<key>``."""
        if isinstance(raw, MessageGrain):
            return raw
        if not isinstance(raw, Mapping):
            raise ParamError(PARAM, "must be a mapping (role_column, text_column, ...)")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ParamError(f"{PARAM}.{unknown[0]}", f"not a key of messages (its keys: "
                                                       f"{', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for key in ("role_column", "text_column"):
            name = str(raw.get(key) or "").strip()
            if not _IDENTIFIER.match(name):
                raise ParamError(f"{PARAM}.{key}", "must name a column (a plain identifier)")
            values[key] = name
        for key in ("user_roles", "assistant_roles"):
            if key in raw:
                values[key] = _roles(f"{PARAM}.{key}", raw[key])
        for key in ("role_path", "text_path"):
            text = str(raw.get(key) or "").strip()
            if text and ("%" in text or ";" in text):
                raise ParamError(f"{PARAM}.{key}", "must be an SQL/JSON path without '%' or ';'")
            values[key] = text or None
        values["filter"] = _condition(raw.get("filter"))
        within = raw.get("reply_within_seconds", DEFAULT_REPLY_WITHIN)
        if isinstance(within, bool) or not isinstance(within, int) or not 1 <= within <= 7 * 86_400:
            raise ParamError(f"{PARAM}.reply_within_seconds",
                             "must be a whole number of seconds from 1 to 604800 (a week)")
        values["reply_within_seconds"] = within
        grain = cls(**values)
        both = set(grain.user_roles) & set(grain.assistant_roles)
        if both:
            raise ParamError(f"{PARAM}.assistant_roles", f"{sorted(both)[0][:30]!r} is also one of"
                                                         " user_roles")
        return grain

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["user_roles"], values["assistant_roles"] = list(self.user_roles), list(
            self.assistant_roles)
        return values


def _roles(param: str, value: Any) -> tuple[str, ...]:
    """Role values as text (``0``/``1`` from an integer column are ``"0"``/``"1"``)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    roles = tuple(str(v) for v in items if v is not None and str(v) != "")
    if not roles or any(isinstance(v, (dict, list, bool)) for v in items):
        raise ParamError(param, "must list at least one role value (text or a number)")
    return roles


def _condition(value: Any) -> str | None:
    """A boolean SQL expression on the message row; it runs read-only, inside every read."""
    text = str(value or "").strip()
    if not text:
        return None
    if ";" in text or "%" in text or "--" in text or "/*" in text:
        raise ParamError(f"{PARAM}.filter", "must be one SQL condition without ';', '%' or"
                                            " comments")
    if re.search(r"\b(SELECT|FROM)\b", text, re.IGNORECASE):
        raise ParamError(f"{PARAM}.filter", "must be a condition on the message row's own"
                                            " columns, not a query (join in source_query instead)")
    return text


def grain_of(value: Any) -> MessageGrain | None:
    return None if value in (None, {}, "") else MessageGrain.from_mapping(value)
