"""One Synap connection as one task uses it: the hook, its settings, the retry policy, the pacing.

A task builds its ``SynapTarget`` once (reading the connection once, before
any event loop runs) and everything in it takes what it needs from there:
the SDK session, the rate it keeps to, the pacer it shares with every other
task sending to the same instance, the retry policy, the duplicate pattern.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synap_backfill.delivery.calls import RetryPolicy
from synap_backfill.delivery.pacing import Pacer, SharedPacer, Unpaced, pacing_target
from synap_backfill.delivery.results import DEFAULT_DUPLICATE_PATTERN, DEFAULT_RETRY_PATTERN

if TYPE_CHECKING:
    from maximem_synap import MaximemSynapSDK

    from synap_provider.connection_fields import SynapSettings
    from synap_provider.hooks import SynapHook


@dataclass(frozen=True)
class SynapTarget:
    """A Synap connection, read once: build it with ``SynapTarget.connect(conn_id)``."""

    hook: "SynapHook"
    settings: "SynapSettings"

    @classmethod
    def connect(cls, conn_id: str) -> "SynapTarget":
        """Read the connection; a bad extra raises ``InvalidExtra`` naming it and the extra."""
        from synap_provider.hooks import SynapHook

        hook = SynapHook(synap_conn_id=conn_id)
        return cls(hook, hook.settings)

    @property
    def conn_id(self) -> str:
        return self.hook.synap_conn_id

    @property
    def rate(self) -> float:
        """Batch requests a minute every task sending to this instance keeps to; 0: unpaced."""
        return float(self.settings.requests_per_minute)

    @property
    def paced(self) -> bool:
        return self.rate > 0

    @property
    def retry(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(max_attempts=s.max_attempts, backoff_max=s.backoff_max,
                           max_wait=s.max_wait, not_ready_max_wait=s.not_ready_max_wait)

    @property
    def duplicate_pattern(self) -> str:
        return self.settings.duplicate_pattern or DEFAULT_DUPLICATE_PATTERN

    @property
    def retry_pattern(self) -> str:
        return self.settings.retry_pattern or DEFAULT_RETRY_PATTERN

    def session(self) -> AbstractAsyncContextManager["MaximemSynapSDK"]:
        """An initialized SDK for this connection, shut down on exit."""
        return self.hook.session()

    def pacer(self, conn: Any, schema: str, instance: str | None, *, label: str) -> Pacer:
        """The instance's shared pacing schedule in the ledger (``conn``), or no pacing when the
        connection turns it off or there is no ledger connection."""
        if conn is None or not self.paced:
            return Unpaced()
        return SharedPacer(conn, schema, pacing_target(self.settings.base_url, instance), self.rate,
                           label=label)

    @staticmethod
    def isolation(sdk: "MaximemSynapSDK") -> str | None:
        from synap_provider.hooks import SynapHook

        return SynapHook.user_context_isolation(sdk)
