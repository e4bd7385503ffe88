"""Synap connection type and hook, in the style of Airflow's provider packages."""

# Absolute: Airflow's plugin manager also loads this file on its own, outside the package.
from synap_provider.hooks import SynapHook

__all__ = ["SynapHook"]
