"""Synap instances as Airflow assets, for lineage: ``synap://<API host>/<instance id>``.

A data catalog learns what a backfill copies into Synap from the OpenLineage events
Airflow's OpenLineage provider emits per task; a task reports the instance it writes
to through Airflow's hook-level lineage (``add_output_asset(scheme="synap", ...)``),
and these functions, registered under ``asset-uris`` in ``get_provider_info``, make
the asset and its OpenLineage dataset: namespace ``synap://<API host>`` (the
connection's base URL, or hosted Synap's), name the instance id. Never the API key.
A task's counts ride along as a dataset facet (``synapBackfill``): counts only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import SplitResult, urlsplit

if TYPE_CHECKING:
    from airflow.providers.common.compat.assets import Asset

HOSTED = "synap-cloud-prod.maximem.ai"  # the SDK's default base URL's host
SCHEME = "synap"


def host_of(base_url: str | None) -> str:
    """The asset's authority: the API base URL's host (and port), or hosted Synap's."""
    return urlsplit(base_url).netloc if base_url else HOSTED


def sanitize_uri(uri: SplitResult) -> SplitResult:
    if not uri.netloc:
        raise ValueError("URI format synap:// must contain the API host")
    if not uri.path.strip("/") or "/" in uri.path.strip("/"):
        raise ValueError("URI format synap:// must name one instance: synap://<host>/<instance id>")
    return uri


def create_asset(*, host: str, instance: str, extra: Mapping[str, Any] | None = None) -> "Asset":
    from airflow.providers.common.compat.assets import Asset

    return Asset(uri=f"{SCHEME}://{host}/{instance}", extra=dict(extra or {}))


def convert_asset_to_openlineage(asset: "Asset", lineage_context: Any) -> Any:
    """The asset as an OpenLineage dataset; its ``counts`` extra as the ``synapBackfill`` facet."""
    import attr
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from openlineage.client.facet_v2 import DatasetFacet

    @attr.define
    class SynapBackfillDatasetFacet(DatasetFacet):
        """What the task did to the instance, in counts."""

        counts: dict[str, int] = attr.field(factory=dict)

        @staticmethod
        def _get_schema() -> str:
            return "https://github.com/synap-backfill/facets/SynapBackfillDatasetFacet.json"

    parsed = urlsplit(asset.uri)
    raw = (asset.extra or {}).get("counts")
    counts = {str(k): int(v) for k, v in (raw.items() if isinstance(raw, dict) else ())
              if isinstance(v, (int, float)) and not isinstance(v, bool)}
    facets: dict[str, DatasetFacet] = (
        {"synapBackfill": SynapBackfillDatasetFacet(counts=counts)} if counts else {})
    return Dataset(namespace=f"{SCHEME}://{parsed.netloc}", name=parsed.path.strip("/"),
                   facets=facets)
