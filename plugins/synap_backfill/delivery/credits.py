"""What a backfill will cost in Synap credits, and whether the wallet holds it, before sending.

A run that runs out of credits halfway (``InsufficientCreditsError``, HTTP 402)
leaves a half-built memory, so a full run compares the estimate for every
document it plans to send with the balance first, and stops, with both
numbers, when the balance is short. A sample run states the estimate for the
whole table next to its time estimate.

Synap publishes no metric names. The estimate asks for ``credits_metric`` (a
connection extra, default ``documents``) with ``units`` = documents to send:
the planner knows that count without reading any text. If your plan bills
another metric (the SDK's own example names ``llm_input_tokens``), set the
extra to it. An estimate the server refuses, or a missing endpoint, is logged
and does not stop the run: it cannot be known, so it is not guessed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synap_backfill.common.config import BackfillConfig

if TYPE_CHECKING:
    from synap_backfill.delivery.target import SynapTarget
from synap_backfill.common.errors import first_line

BATCH_ENDPOINT = "/api/v1/memories/batch"


@dataclass(frozen=True)
class CreditCheck:
    """The wallet and the estimate for ``documents`` (None: Synap could not say; ``note``: why)."""

    documents: int
    balance: float | None
    estimate: float | None
    metric: str
    note: str = ""

    @property
    def short(self) -> bool:
        return self.balance is not None and self.estimate is not None and self.estimate > self.balance

    def describe(self) -> str:
        estimate = (f"about {self.estimate:,.0f} credits ({self.metric}) for {self.documents:,}"
                    f" documents" if self.estimate is not None
                    else f"no credit estimate ({self.note})")
        balance = (f"balance {self.balance:,.0f} credits" if self.balance is not None
                   else "balance unknown")
        return f"{estimate}; {balance}"


async def check_credits(sdk: Any, documents: int, metric: str, mode: str) -> CreditCheck:
    """Ask Synap for the balance and an estimate; whatever it cannot answer stays None."""
    from maximem_synap.models.errors import SynapError

    from synap_provider.hooks import SynapHook

    balance = estimate = None
    notes = []
    try:
        balance = await SynapHook.credit_balance(sdk)
    except SynapError as exc:
        notes.append(f"balance: {first_line(exc)[:120]}")
    try:
        estimate = await SynapHook.credit_estimate(sdk, metric_type=metric, units=float(documents),
                                                   item_count=documents, endpoint=BATCH_ENDPOINT,
                                                   mode=mode)
    except SynapError as exc:
        notes.append(f"estimate: {first_line(exc)[:120]}")
    return CreditCheck(documents, balance, estimate, metric, "; ".join(notes))


def credits_for(config: BackfillConfig, documents: int,
                synap: "SynapTarget | None" = None) -> CreditCheck:
    """The balance and the estimate for ``documents``, from the run's Synap connection
    (``synap``: the task's target, when it has one already).

    Advisory where Synap does not answer: preflight already proved the connection.
    """
    from synap_backfill.common.errors import describe_error
    from synap_backfill.delivery.target import SynapTarget

    synap = synap or SynapTarget.connect(config.synap_conn_id)

    async def ask() -> CreditCheck:
        async with synap.session() as sdk:
            return await check_credits(sdk, documents, synap.settings.credits_metric, config.mode)

    try:
        return asyncio.run(ask())
    except Exception as exc:
        return CreditCheck(documents, None, None, "", f"Synap did not answer: {describe_error(exc)}")
