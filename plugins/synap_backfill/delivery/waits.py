"""A wait long enough to be noticed says why, and until when, in the task's log."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

log = logging.getLogger("synap_backfill")

LONG_WAIT = 5.0  # seconds; a longer wait is logged with its cause and end


async def wait_logged(seconds: float, cause: str, label: str,
                      sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
    """Sleep, saying why and until when if it is long enough to be noticed."""
    if seconds >= LONG_WAIT:
        until = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        log.warning("partition %s: waiting %.0f s, until %s UTC: %s", label, seconds,
                    until.strftime("%H:%M:%S"), cause)
    await sleep(seconds)
    if seconds >= LONG_WAIT:
        log.info("partition %s: done waiting %.0f s (%s)", label, seconds, cause)
