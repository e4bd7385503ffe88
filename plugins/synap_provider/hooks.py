"""Airflow hook for Synap, Maximem's hosted agent memory, through the ``maximem-synap`` SDK.

The connection (type ``synap``, default id ``synap_default``):

* ``host``: the API base URL, e.g. ``http://127.0.0.1:8765`` for the local
  Synap API. Empty means the SDK's hosted default. A host without a scheme
  gets ``https://`` (or the connection's ``schema`` field as the scheme),
  and ``port`` is appended when set.
* ``password``: the API key. Airflow masks it in task logs.
* ``extra``: all optional, each declared once in ``connection_fields.SynapExtras``
  (type, default, bounds, label; the reference table is ``docs/reference.md``),
  which also gives the Add Connection form one typed field per extra. A bad one
  fails with a message naming the connection and the extra: when the
  connection is saved through the API or the UI (``connection_check.py``),
  else when a task first reads it.

The SDK's own retries are off: the backfill retries itself (honouring a
``Retry-After`` past the SDK's 10 s cap, and resending a batch whose outcome
is unknown, which the SDK will not do).

Example, as an environment variable::

    AIRFLOW_CONN_SYNAP_DEFAULT='{"conn_type": "synap", "host": "http://127.0.0.1:8765",
                                 "password": "<api key>"}'
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator

from airflow.sdk import BaseHook

from synap_provider.connection_fields import DEFAULT_CONN_ID, InvalidExtra, SynapExtras, SynapSettings

if TYPE_CHECKING:
    from maximem_synap import MaximemSynapSDK


class SynapHook(BaseHook):
    """Builds, initializes and shuts down a ``MaximemSynapSDK`` from an Airflow connection.

    :param synap_conn_id: The Airflow connection holding the base URL (host)
        and the API key (password). Defaults to ``synap_default``.
    """

    conn_name_attr = "synap_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "synap"
    hook_name = "Synap"

    def __init__(self, synap_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.synap_conn_id = synap_conn_id
        self._settings: SynapSettings | None = None

    @property
    def settings(self) -> SynapSettings:
        """The connection, read once: base URL, API key and its extras, typed and checked.

        A bad extra raises ``InvalidExtra`` naming the connection and the extra
        (``connection_fields.SynapExtras`` holds each one's type, default and bounds).
        """
        if self._settings is None:
            conn = self.get_connection(self.synap_conn_id)
            extras = SynapExtras.parse(self.synap_conn_id, conn.extra_dejson)
            self._settings = SynapSettings(**extras.model_dump(), api_key=conn.password or "",
                                           base_url=base_url(conn.host, conn.port, conn.schema))
        return self._settings

    @property
    def duplicate_pattern(self) -> str | None:
        """The connection's ``duplicate_pattern`` extra; None: the engine's default."""
        return self.settings.duplicate_pattern

    def get_conn(self) -> "MaximemSynapSDK":
        """A new, not yet initialized SDK for this connection; prefer ``session()``.

        ``_force_new``: the SDK keeps one client per API key per process and
        ignores the base URL when it hands an existing one back, so two
        connections with one key (two regions) would share a target. Each hook
        gets its own client instead.
        """
        from maximem_synap import MaximemSynapSDK, SDKConfig, TimeoutConfig

        s = self.settings
        if not s.api_key:
            raise ValueError(f"Synap connection {self.synap_conn_id!r} has no API key (password)")
        config = SDKConfig(
            api_base_url=s.base_url,
            cache_backend=None,  # a backfill reads nothing back; keep workers stateless
            history_search_model=None,
            timeouts=TimeoutConfig(read=s.timeout_seconds),
            retry_policy=None,  # the package's one retry policy (synap_backfill.delivery.calls)
        )
        self.log.info("Synap client for connection %s at %s", self.synap_conn_id,
                      s.base_url or "the hosted default")
        return MaximemSynapSDK(api_key=s.api_key, config=config, _force_new=True)

    @asynccontextmanager
    async def session(self) -> AsyncIterator["MaximemSynapSDK"]:
        """An initialized SDK, shut down (telemetry flushed, sockets closed) on exit."""
        sdk = self.get_conn()
        await sdk.initialize()
        try:
            yield sdk
        finally:
            await sdk.shutdown()

    @staticmethod
    def user_context_isolation(sdk: "MaximemSynapSDK") -> str | None:
        """The instance's isolation as whoami reported it on ``initialize()``.

        ``equals_customer`` (``maximem_synap.scoping.B2C_ISOLATION``) on B2C,
        ``strict-isolation`` on B2B, None when the server did not say. The SDK
        keeps it in a private attribute and offers no public accessor: this is
        the one place that reads it.
        """
        return getattr(sdk, "_user_context_isolation", None)

    async def whoami(self) -> dict[str, Any]:
        """``GET /api/v1/auth/whoami``: the client and instance this API key opens.

        ``initialize()`` tolerates a failing whoami, so this calls it directly
        through the SDK's transport to get the server's answer, errors included.
        """
        async with self.session() as sdk:
            return await _call(sdk, "GET", "/api/v1/auth/whoami")

    @staticmethod
    async def credit_balance(sdk: "MaximemSynapSDK") -> float:
        """``GET /v1/credits/balance``: the wallet's ``balance_credits``.

        The SDK's ``credits.get_balance()`` (0.6.9) calls its transport without
        the auth context the transport requires, and raises TypeError; this is
        the same request, made with it.
        """
        return float((await _call(sdk, "GET", "/v1/credits/balance"))["balance_credits"])

    @staticmethod
    async def credit_estimate(sdk: "MaximemSynapSDK", *, metric_type: str, units: float,
                              item_count: int | None = None, endpoint: str | None = None,
                              mode: str | None = None) -> float:
        """``POST /v1/credits/estimate``: ``credits_estimate`` (the SDK's ``credits.estimate()``
        fails as ``get_balance()`` does)."""
        body = {"metric_type": metric_type, "units": units, "item_count": item_count,
                "endpoint": endpoint, "mode": mode}
        return float((await _call(sdk, "POST", "/v1/credits/estimate", json=body))["credits_estimate"])

    def test_connection(self) -> tuple[bool, str]:
        """Call whoami; the message names the instance, or the error."""
        try:
            who = asyncio.run(self.whoami())
        except InvalidExtra as exc:  # our own words: connection and extra, never the value
            return False, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # the UI shows the message: scrubbed, never the key
            return False, describe_failure(exc)
        return True, (f"Connected: instance {who.get('instance_id')} "
                      f"({who.get('user_context_isolation') or 'isolation not reported'})")


def describe_failure(exc: BaseException) -> str:
    """An error as the UI may show it: the engine's one scrubber (its kind and first line,
    quoted values taken out: a server's or a database's message can echo what it was sent)."""
    from synap_backfill.common.errors import describe_error

    return describe_error(exc, limit=180)


async def _call(sdk: "MaximemSynapSDK", method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One request through the SDK's own transport, authenticated as its public calls are.

    The one place that touches the SDK's private transport: for endpoints its
    public surface does not reach (whoami's answer, errors included) or reaches
    broken (credits in 0.6.9).
    """
    auth = await sdk._get_auth_context()
    transport = sdk._http_transport
    if transport is None:
        raise RuntimeError("the Synap SDK did not set up its HTTP transport")
    if method == "GET":
        return await transport.get(path, auth_context=auth, **kwargs)
    return await transport.post(path, auth_context=auth, **kwargs)


def base_url(host: str | None, port: int | None, scheme: str | None) -> str | None:
    """The SDK's ``api_base_url`` from a connection's host, port and schema fields."""
    if not host:
        return None
    host = host.rstrip("/")
    if "://" not in host:
        host = f"{scheme or 'https'}://{host}"
    if port and host.count(":") < 2:
        host = f"{host}:{port}"
    return host
