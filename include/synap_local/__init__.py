"""A local, Synap-compatible HTTP API: the embedded default target of the backfill.

Start it with ``python -m include.synap_local serve`` (see ``--help``).
"""

from .server import DEFAULT_API_KEY, LocalSynapServer, ServerSettings, Tenant

__all__ = ["DEFAULT_API_KEY", "LocalSynapServer", "ServerSettings", "Tenant"]
