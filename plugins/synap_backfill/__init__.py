"""The Synap backfill engine, one package per concern, each importing only those below it.

    common      the shared parts: params and their checks, the run's config, buckets and
                windows, document ids, database helpers, error scrubbing
    store       the ledger's shared store: each partition's checkpoint, sent mark, rejects
    planner     the plan by difference and its windows: bounds, never rows
    extract     reading the source relation, counting its buckets
    privacy     what leaves a turn before it is sent: redaction, document_transform
    delivery    the Synap target and what reaches it: documents, batches, pacing, results,
                verification, credits, the counts
    holdings    what each target holds: the inventory, held turns, source changes, the
                deletion guard
    identity    persons as keyed hashes, their keys, suppressions
    rekeying    moving the ledger's person hashes to a new key
    deletion    deleting what was written: the one memory-deletion path, undo, erasure
    pipeline    one partition's work, stage by stage
    (modules)   schema (every concern's tables, in order), preflight, run_view
    airflow     what Airflow runs, one package per DAG

Plain Python, importable and testable without a scheduler. The Synap hook and connection
type are in ``synap_provider``, shipped in the same distribution. Each package's docstring
says what it owns and what it may import; ``tests/unit/test_layout.py`` holds the code to it.

Modules moved in 0.2.0 keep their old import path until 0.3.0, with a FutureWarning
(``MOVED``): ``synap_backfill.turns`` is ``synap_backfill.privacy.turns``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any, Sequence

# Old path (under synap_backfill) -> new path: deprecated, gone in MOVED_REMOVED_IN.
MOVED_REMOVED_IN = "0.3.0"
MOVED = {
    "params": "common.params",
    "checks": "common.checks",
    "config": "common.config",
    "buckets": "common.buckets",
    "windows": "common.windows",
    "connection_secret": "common.secrets",
    "db_errors": "common.errors",
    "ddl": "common.db",
    "ledger": "store.ledger",
    "source": "extract.reader",
    "planning": "planner.difference",
    "extract.planning": "planner.difference",
    "extract.layout": "planner.layout",
    "pii": "privacy.pii",
    "turns": "privacy.turns",
    "redaction": "privacy.redaction",
    "results": "delivery.results",
    "sending": "delivery.sending",
    "pacing": "delivery.pacing",
    "target": "delivery.target",
    "credits": "delivery.credits",
    "verify": "delivery.verify",
    "documents": "delivery.documents",
    "accounting": "delivery.accounting",
    "inventory": "holdings.inventory",
    "held_turns": "holdings.held_turns",
    "changes": "holdings.changes",
    "reconcile": "holdings.reconcile",
    "persons": "identity.keys",
    "rekey": "rekeying.process",
    "rekey_config": "rekeying.config",
    "identity.rekey": "rekeying.process",
    "identity.rekey_config": "rekeying.config",
    "undo": "deletion.undo",
    "undo_ledger": "deletion.undo_ledger",
    "undo_config": "deletion.undo_config",
    "erase": "deletion.erase",
    "erase_config": "deletion.erase_config",
    "partition": "pipeline.partition",
    "time_limit": "pipeline.time_limit",
    "airflow.dag_factory": "airflow.backfill.dag",
    "airflow.tasks": "airflow.backfill.tasks",
    "airflow.source_changes": "airflow.backfill.apply",
    "regions": "airflow.backfill.regions",
    "airflow.undo_dag": "airflow.undo.dag",
    "airflow.undo_tasks": "airflow.undo.tasks",
    "airflow.erase_dag": "airflow.erase.dag",
    "airflow.erase_tasks": "airflow.erase.tasks",
    "airflow.rekey_dag": "airflow.erase.rekey_dag",
    "airflow.rekey_tasks": "airflow.erase.rekey_tasks",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as its new module, once, with a FutureWarning (which Python
    and Airflow show, unlike a DeprecationWarning, in a DAG file's import).

    The new module keeps its own ``__spec__``: importlib gives the module it gets from
    ``create_module`` the alias's spec, and ``exec_module`` puts the real one back, so
    ``importlib.reload`` of either name reloads the real module."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        old = name.removeprefix(__name__ + ".")
        return importlib.util.spec_from_loader(name, self) if old in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = f"{__name__}.{MOVED[spec.name.removeprefix(__name__ + '.')]}"
        warnings.warn(f"{spec.name} is now {new}: import it from there (the old path goes in"
                      f" {MOVED_REMOVED_IN})", FutureWarning, stacklevel=2)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # the real spec, for exec_module to restore
        return module

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        if spec is not None and spec.loader_state is not None:
            module.__spec__ = spec.loader_state  # the new module ran already; its spec is its own


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())  # after the real finders: a real module always wins


def __getattr__(name: str) -> Any:
    if name in MOVED:  # synap_backfill.config as an attribute, not an import
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)
