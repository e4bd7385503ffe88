"""What happens to a turn's texts between the read and its document: redaction, then your transform.

``document_transform`` names a callable of the operator's project, given each
turn as a ``Turn`` (after redaction) and returning it, changed with
``dataclasses.replace``, or ``None`` to leave it out::

    from dataclasses import replace

    def clean_turn(turn):
        if turn.user_text.startswith("/system"):
            return None                              # rejected: dropped by document_transform
        return replace(turn, assistant_text=turn.assistant_text.split("\\n-- \\n")[0])

Only the texts may change: the ids and the time make the document id and its
scope. A turn the callable raises on is rejected with the exception's type
(never its message, which could quote the text); the turns around it go on.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable

from synap_backfill.privacy.pii import Redactor


@dataclass(frozen=True, slots=True)
class Turn:
    """One conversation turn, as ``document_transform`` is given it. NULL texts are ``""``."""

    conversation_id: str
    message_index: int
    created_at: datetime
    user_id: str | None
    customer_id: str | None
    user_text: str
    assistant_text: str


Transform = Callable[[Turn], "Turn | None"]


class Reason:
    """Reject reasons of this stage: stable strings, counted, never carrying text."""

    DROPPED = "dropped by document_transform"
    NOT_A_TURN = "document_transform returned neither a Turn with texts nor None"
    KEYS_CHANGED = "document_transform changed the turn's ids or time (only its texts may change)"

    @staticmethod
    def raised(exc: BaseException) -> str:
        return f"document_transform raised {type(exc).__name__}"

    @staticmethod
    def redaction_failed(exc: BaseException) -> str:
        return f"redaction failed ({type(exc).__name__}); not sent"


class TransformNotUsable(ValueError):
    """``document_transform`` names nothing callable: one line naming the path."""


def load_transform(path: str) -> Transform:
    """The callable at ``path`` (``package.module.name`` or ``package.module:name``)."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    where = f"param 'document_transform': {path!r}"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error's text names the module, not data; keep it short
        raise TransformNotUsable(f"{where} does not import ({type(exc).__name__} importing"
                                 f" {module_name!r}); ship the module in your project's"
                                 " dags/, plugins/ or an installed package") from None
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise TransformNotUsable(f"{where}: module {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise TransformNotUsable(f"{where} is a {type(target).__name__}, not a callable")
    return target


@dataclass
class Redactions:
    """Values replaced, by kind, and the turns they were in: counts only, never a value."""

    by_kind: Counter[str] = field(default_factory=Counter)
    turns: int = 0

    def add(self, other: "Redactions") -> None:
        self.by_kind.update(other.by_kind)
        self.turns += other.turns


_KEYS = ("conversation_id", "message_index", "created_at", "user_id", "customer_id")


class TurnShaper:
    """Redaction (``redactor``), then the operator's transform, for each turn built."""

    def __init__(self, redactor: Redactor | None = None, transform: Transform | None = None) -> None:
        self.redactor, self.transform = redactor, transform

    def shape(self, turn: Turn, redacted: Redactions) -> Turn | str:
        """The turn to send, or why it is not sent; its redactions join ``redacted`` only
        when it is sent."""
        found: Counter[str] = Counter()
        if self.redactor is not None:
            try:
                turn = replace(turn, user_text=self.redactor.redact(turn.user_text, found),
                               assistant_text=self.redactor.redact(turn.assistant_text, found))
            except Exception as exc:  # never sent unredacted
                return Reason.redaction_failed(exc)
        if self.transform is not None:
            try:
                changed = self.transform(turn)
            except Exception as exc:
                return Reason.raised(exc)
            if changed is None:
                return Reason.DROPPED
            if not isinstance(changed, Turn) or not isinstance(changed.user_text, str) \
                    or not isinstance(changed.assistant_text, str):
                return Reason.NOT_A_TURN
            if any(getattr(changed, k) != getattr(turn, k) for k in _KEYS):
                return Reason.KEYS_CHANGED
            turn = changed
        if found:
            redacted.by_kind.update(found)
            redacted.turns += 1
        return turn
