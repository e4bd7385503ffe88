"""The provider's metadata for Airflow's providers manager (entry point ``apache_airflow_provider``).

Airflow registers a connection type, its form and its Test button only from a
provider installed with this entry point (``pyproject.toml``); a hook found on
the plugins path is never registered.
"""

from __future__ import annotations

from typing import Any

from synap_provider.connection_fields import conn_fields


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "synap-backfill",
        "name": "Synap",
        "description": "Synap (Maximem's hosted agent memory) through the `maximem-synap` SDK: "
                       "the `synap` connection type and `SynapHook`.",
        "versions": ["0.2.0", "0.1.0"],
        "integrations": [{"integration-name": "Synap", "external-doc-url": "https://maximem.ai",
                          "tags": ["service"]}],
        "hooks": [{"integration-name": "Synap", "python-modules": ["synap_provider.hooks"]}],
        # Lineage: a Synap instance as an asset, and as an OpenLineage dataset (assets.py).
        "asset-uris": [{
            "schemes": ["synap"],
            "handler": "synap_provider.assets.sanitize_uri",
            "factory": "synap_provider.assets.create_asset",
            "to_openlineage_converter": "synap_provider.assets.convert_asset_to_openlineage",
        }],
        "connection-types": [{
            "hook-class-name": "synap_provider.hooks.SynapHook",
            "hook-name": "Synap",
            "connection-type": "synap",
            "conn-fields": conn_fields(),
            "ui-field-behaviour": {
                "hidden-fields": ["login", "schema"],
                "relabeling": {"host": "API base URL", "password": "API key"},
                # Airflow 3.3.2's Test button needs a stored port (apache/airflow#73298).
                "placeholders": {"host": "https://... (empty: hosted Synap)",
                                 "port": "443 (the URL's port; Test needs one)"},
            },
        }],
    }
