"""A document_transform as an operator ships one in their project (test_redaction.py names it)."""

from __future__ import annotations

from dataclasses import replace

SIGNATURE = "\n-- \n"


def clean_turn(turn):
    """Leave out slash-commands, strip the agent's signature; stumble on one marked turn."""
    if turn.user_text.startswith("/system"):
        return None
    if "STUMBLE" in turn.user_text:
        raise ValueError(f"cannot handle {turn.user_text!r}")  # its text must not travel
    return replace(turn, assistant_text=turn.assistant_text.split(SIGNATURE)[0])


not_callable = 42
