"""The document frame: how a turn's two texts become one document's text, here alone.

The vendor recipe's ``User: <user text>\\nAssistant: <assistant text>``. Building a
document (``delivery/documents.py``), measuring one in SQL before its texts are
fetched (``extract/source_sql.py``) and scrubbing a sent text out of an error
(``common/errors.py``) all read it from here. A frame other than the recipe's is a
document setting of its own (``config.document_settings``): held turns framed
otherwise are not unchanged.
"""

from __future__ import annotations

USER_PREFIX = "User: "
ASSISTANT_PREFIX = "Assistant: "
FRAME = f"{USER_PREFIX}{{user}}\n{ASSISTANT_PREFIX}{{assistant}}"
RECIPE_FRAME = "User: {user}\nAssistant: {assistant}"  # what instances held before were sent
FRAME_CHARS = len(FRAME.format(user="", assistant=""))  # a document's length less its texts


def frame(user_text: str | None, assistant_text: str | None) -> str:
    """A turn's document text; a missing side is empty."""
    return FRAME.format(user=user_text or "", assistant=assistant_text or "")
