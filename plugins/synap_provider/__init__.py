"""Synap connection type and hook, in the style of Airflow's provider packages."""

from .hooks import SynapHook

__all__ = ["SynapHook"]
