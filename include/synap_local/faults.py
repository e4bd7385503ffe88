"""Test-only misbehaviour of the local Synap API: rate limits and injected faults.

All of it is off by default. Tests and benchmarks switch it on at start-up
(CLI flags) or while the server runs (``POST /_local/controls``), so one
server can be healthy, then throttled, then broken, then healthy again.

The vendor's docs disagree on where the rate limit applies (per API key on a
plan, or per instance for ingestion): this server limits per instance, and
the number is configurable.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FAULT_KINDS = frozenset({"status", "drop_before_store", "drop_after_store", "reset_after_store",
                         "stall", "stall_after_store"})


class TokenBucket:
    """``per_minute`` requests a minute, with a burst of one second's worth."""

    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, burst if burst is not None else self.rate)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take a token: 0.0 when allowed, else the seconds until one is free."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate


def retry_after_header(wait_seconds: float) -> str:
    """Retry-After is whole seconds; never tell a client to come back at 0."""
    return str(max(1, math.ceil(wait_seconds)))


@dataclass
class FaultRule:
    """One injected fault for batch/create requests.

    kind: ``status`` answers ``status`` without storing; ``drop_before_store``
    closes the connection without storing; ``drop_after_store`` stores, then
    closes the connection with no answer (the client cannot know it landed);
    ``reset_after_store`` stores, then resets the connection (TCP RST) while
    the client waits for the answer; ``stall`` waits ``seconds`` and then
    answers normally; ``stall_after_store`` stores, then waits ``seconds``
    before answering (a client killed meanwhile never learns it landed).
    times: how many requests it hits (None: every one until cleared).
    for_seconds: instead of a count, every matching request from the first one
    it hits until that many seconds later (a storm: a client that comes back
    before its ``Retry-After`` is up gets hit again).
    created_from/created_to: only batches holding a document whose
    ``document_created_at`` falls in ``[created_from, created_to)``.
    on: which requests it hits: ``ingest`` (batch and create, the default), ``status``
    (a memory's ingestion status) or ``delete`` (a memory's delete).
    reason: with ``status`` 429, a credit or plan stop's reason in the body (as the credit
    gate answers: ``trial_limit_reached``), which the SDK reads as ``RateLimitError.reason``.
    """

    kind: str
    status: int = 503
    times: int | None = 1
    seconds: float = 0.0
    retry_after: int | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    for_seconds: float | None = None
    on: str = "ingest"
    reason: str | None = None
    hits: int = 0
    _first_hit: float | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FaultRule":
        kind = raw.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {sorted(FAULT_KINDS)}")
        return cls(
            kind=kind,
            status=int(raw.get("status", 503)),
            times=None if raw.get("times", 1) is None else int(raw.get("times", 1)),
            seconds=float(raw.get("seconds", 0.0)),
            retry_after=None if raw.get("retry_after") is None else int(raw["retry_after"]),
            created_from=_parse(raw.get("created_from")),
            created_to=_parse(raw.get("created_to")),
            for_seconds=None if raw.get("for_seconds") is None else float(raw["for_seconds"]),
            on=_on(raw.get("on", "ingest")),
            reason=None if raw.get("reason") is None else str(raw["reason"]),
        )

    def matches(self, created_ats: list[datetime]) -> bool:
        if self.created_from is None and self.created_to is None:
            return True
        return any(
            (self.created_from is None or ts >= self.created_from)
            and (self.created_to is None or ts < self.created_to)
            for ts in created_ats
        )


@dataclass
class Controls:
    """The switchable behaviour of a running server, shared by its threads."""

    rate_limit_per_minute: float = 0.0
    latency_ms: float = 0.0
    faults: list[FaultRule] = field(default_factory=list)
    # Refuse a whole batch (422) when one document is invalid, as an API that
    # validates the request schema would, instead of per-document failures.
    strict_batches: bool = False
    # Refuse every document with this reason (a plan without the mode, a scope
    # the instance does not have): a server that accepts nothing of a backfill.
    refuse_documents: str = ""
    # Refusals echo the refused document, as FastAPI's default 422 does with its input.
    echo_input: bool = False
    # This share of documents (chosen by their document id, so the same ones every time) fails
    # in a batch's answer with documents_failure_reason, and is not stored: a service in trouble.
    documents_failed_share: float = 0.0
    documents_failure_reason: str = "internal error while ingesting; please try again later"
    # Seconds added to this server's clock (its queued_at): a worker clock
    # 10 minutes ahead of the server is -600 here.
    clock_offset_seconds: float = 0.0
    # Extraction runs after "queued", asynchronously (the docs' status endpoint):
    # a stored document reads queued for the first half of extraction_seconds,
    # processing for the second, then completed, or, for extraction_failed_share
    # of documents (chosen by their ingestion id), failed with
    # extraction_failure_reason. 0 seconds: completed at once.
    extraction_seconds: float = 0.0
    extraction_failed_share: float = 0.0
    extraction_failure_reason: str = "extraction_failed"
    # This share of stored documents (chosen by their ingestion id) is unknown to the status
    # endpoint (404): a service that lost them, or never kept them.
    status_unknown_share: float = 0.0
    # Credits (GET /v1/credits/balance, POST /v1/credits/estimate): the wallet's
    # balance, and the price of one unit per metric_type. Synap publishes no
    # metric names: an estimate for a metric not listed here is a 400.
    credits_balance: float = 1_000_000.0
    credit_prices: dict[str, float] = field(default_factory=lambda: {"documents": 1.0})
    # The instance is still being built until then (monotonic; 0: ready).
    _not_ready_until: float = 0.0
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, raw: dict[str, Any]) -> None:
        with self._lock:
            if "rate_limit_per_minute" in raw:
                self.rate_limit_per_minute = float(raw["rate_limit_per_minute"] or 0)
                self._buckets.clear()
            if "latency_ms" in raw:
                self.latency_ms = float(raw["latency_ms"] or 0)
            if "faults" in raw:
                self.faults = [FaultRule.from_dict(f) for f in raw["faults"] or []]
            if "strict_batches" in raw:
                self.strict_batches = bool(raw["strict_batches"])
            if "refuse_documents" in raw:
                self.refuse_documents = str(raw["refuse_documents"] or "")
            if "echo_input" in raw:
                self.echo_input = bool(raw["echo_input"])
            if "documents_failed_share" in raw:
                self.documents_failed_share = float(raw["documents_failed_share"] or 0)
            if "documents_failure_reason" in raw:
                self.documents_failure_reason = str(raw["documents_failure_reason"] or "")
            if "clock_offset_seconds" in raw:
                self.clock_offset_seconds = float(raw["clock_offset_seconds"] or 0)
            if "extraction_seconds" in raw:
                self.extraction_seconds = float(raw["extraction_seconds"] or 0)
            if "extraction_failed_share" in raw:
                self.extraction_failed_share = float(raw["extraction_failed_share"] or 0)
            if "status_unknown_share" in raw:
                self.status_unknown_share = float(raw["status_unknown_share"] or 0)
            if "extraction_failure_reason" in raw:
                self.extraction_failure_reason = str(raw["extraction_failure_reason"] or "")
            if "credits_balance" in raw:
                self.credits_balance = float(raw["credits_balance"])
            if "credit_prices" in raw:
                self.credit_prices = {str(k): float(v) for k, v in (raw["credit_prices"] or {}).items()}
            if "instance_not_ready_for_seconds" in raw:
                seconds = float(raw["instance_not_ready_for_seconds"] or 0)
                self._not_ready_until = time.monotonic() + seconds if seconds > 0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rate_limit_per_minute": self.rate_limit_per_minute,
                "latency_ms": self.latency_ms,
                "strict_batches": self.strict_batches,
                "refuse_documents": self.refuse_documents,
                "clock_offset_seconds": self.clock_offset_seconds,
                "echo_input": self.echo_input,
                "documents_failed_share": self.documents_failed_share,
                "documents_failure_reason": self.documents_failure_reason,
                "extraction_seconds": self.extraction_seconds,
                "extraction_failed_share": self.extraction_failed_share,
                "extraction_failure_reason": self.extraction_failure_reason,
                "status_unknown_share": self.status_unknown_share,
                "credits_balance": self.credits_balance,
                "credit_prices": dict(self.credit_prices),
                "instance_not_ready_for_seconds": round(self.not_ready_left(), 1),
                "faults": [
                    {"kind": f.kind, "status": f.status, "times": f.times,
                     "created_from": f.created_from and f.created_from.isoformat(),
                     "created_to": f.created_to and f.created_to.isoformat()}
                    for f in self.faults
                ],
            }

    def not_ready_left(self) -> float:
        """Seconds until the instance is built (0: ready)."""
        return max(0.0, self._not_ready_until - time.monotonic()) if self._not_ready_until else 0.0

    def server_now(self) -> datetime:
        """This server's clock, as skewed by ``clock_offset_seconds``."""
        from datetime import timedelta, timezone

        return datetime.now(timezone.utc) + timedelta(seconds=self.clock_offset_seconds)

    def throttle(self, instance_id: str) -> float:
        """0.0 when the request may proceed, else seconds to wait."""
        with self._lock:
            if self.rate_limit_per_minute <= 0:
                return 0.0
            bucket = self._buckets.get(instance_id)
            if bucket is None:
                bucket = self._buckets[instance_id] = TokenBucket(self.rate_limit_per_minute)
        return bucket.take()

    def take_fault(self, created_ats: list[datetime], on: str = "ingest") -> FaultRule | None:
        """The first rule matching this request, consuming one of its uses."""
        with self._lock:
            now = time.monotonic()
            for rule in list(self.faults):
                if rule.on != on or not rule.matches(created_ats):
                    continue
                if rule.for_seconds is not None:
                    rule._first_hit = rule._first_hit or now
                    if now - rule._first_hit > rule.for_seconds:
                        self.faults.remove(rule)
                        continue
                elif rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self.faults.remove(rule)
                rule.hits += 1
                return rule
        return None


def _on(value: Any) -> str:
    if value not in ("ingest", "status", "delete"):
        raise ValueError("a fault's 'on' must be one of ingest, status, delete")
    return str(value)


def _parse(value: Any) -> datetime | None:
    if value is None:
        return None
    from datetime import timezone
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
