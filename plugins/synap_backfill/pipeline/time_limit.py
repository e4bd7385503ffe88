"""A partition's time limit: its planned batches at the target's pace, with a margin.

Airflow enforces a task's ``execution_timeout``; a partition's is set when it
starts (``pre_execute``, before Airflow reads it), from the rows the plan gave
it, so a stalled partition (a source that stops answering, a lock nobody
releases) fails and retries from its checkpoint instead of holding a pool slot
for ever, and a big partition is never cut short by a limit sized for a small
one. The margin: three times the time its batches take at the connection's
``requests_per_minute`` (600 a minute when unpaced), plus every wait a healthy
attempt may spend: one ``max_wait`` (a 429's hold), ``not_ready_max_wait`` (a new
instance), the wait for an earlier attempt's lock, and ten minutes of reading.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any, Mapping

log = logging.getLogger("synap_backfill")

MARGIN = 3.0  # times the planned sending time
UNPACED_RATE = 600.0  # batches a minute assumed when pacing is off
LOCK_WAIT = 600.0  # seconds a partition waits for an earlier attempt's lock (PartitionSettings.lock_wait)
READING = 600.0  # seconds for reading and checkpoints beyond the sending
TARGET_KEY = "synap_target"  # the context key pre_execute leaves the task's SynapTarget under


def partition_time_limit(rows: int, batch_size: int, synap: Mapping[str, Any]) -> timedelta:
    """The longest one attempt of a partition of ``rows`` planned rows may take."""
    batches = max(1, math.ceil(max(0, rows) / max(1, batch_size)))
    rate = float(synap["requests_per_minute"]) or UNPACED_RATE
    sending = batches * 60.0 / rate
    waits = float(synap["max_wait"]) + float(synap["not_ready_max_wait"]) + LOCK_WAIT + READING
    return timedelta(seconds=math.ceil(MARGIN * sending + waits))


def set_partition_time_limit(context: Any) -> None:
    """``pre_execute`` of the partition task: its ``execution_timeout`` from its own plan.

    The task's Synap target is built here, once, and handed on to the task body in
    the context (``synap_target``): the connection is read once per attempt.
    """
    from synap_backfill.common.config import BackfillConfig
    from synap_backfill.delivery.target import SynapTarget

    task = context["task"]
    config = BackfillConfig.from_dict(task.op_kwargs["config"])
    window = task.op_kwargs["window"]
    rows = int(window.get("rows") or 0)
    target = SynapTarget.connect(config.synap_conn_id)
    context[TARGET_KEY] = target
    limit = partition_time_limit(rows, config.batch_size, target.settings.model_dump())
    if task.execution_timeout is None or limit < task.execution_timeout:
        task.execution_timeout = limit
    log.info("partition %s: time limit %s (%d planned rows in batches of %d at %g a minute, x%g,"
             " plus the waits a healthy attempt may spend); past it the attempt fails and its"
             " retry resumes from the checkpoint", window.get("label"), task.execution_timeout,
             rows, config.batch_size, target.rate or UNPACED_RATE, MARGIN)
