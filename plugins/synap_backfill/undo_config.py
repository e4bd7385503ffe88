"""An undo's settings: its params, validated, and what the ledger recorded of the run it undoes.

Light to import (the DAG file reads its defaults for the trigger form): nothing
here touches the SDK, a database or the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from .config import ParamError, boolean, bounded_int, identifier, non_empty

@dataclass(frozen=True)
class UndoConfig:
    """The undo's params, and what the ledger recorded of the run it undoes (resolved first)."""

    dag_id: str = "synap_backfill"
    run_id: str = ""
    dry_run: bool = True
    require_approval: bool = False
    delete_conversations: bool = False
    extraction_wait: int = 600  # seconds a document still being extracted is waited for
    ledger_conn_id: str = "postgres_default"
    ledger_schema: str = "synap_backfill"
    # Resolved from the ledger by the first task, not params.
    target_run: int = 0  # the run's id in the ledger's ``runs``
    holding: int | None = None
    target: str = ""  # the Synap instance the run wrote to
    synap_conn_id: str = ""
    source: str = ""
    postgres_conn_id: str = ""
    source_table: str = ""
    columns: Mapping[str, str] = field(default_factory=dict)  # the run's column mapping

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "columns": dict(self.columns)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "UndoConfig":
        return cls(**raw)

    @property
    def describe_run(self) -> str:
        return f"run {self.run_id!r} of DAG {self.dag_id!r}"


LIMITS = {"extraction_wait": (0, 86_400)}


def undo_config_from_params(params: Mapping[str, Any]) -> UndoConfig:
    """Validate the undo DAG's params; raise ParamError naming the first bad one."""
    defaults = UndoConfig()

    def get(name: str) -> Any:
        return params.get(name, getattr(defaults, name))

    run_id = get("run_id")
    if not isinstance(run_id, str) or not run_id.strip():
        raise ParamError("run_id", "name the run to undo (its run id, as the Airflow UI shows it)")
    return UndoConfig(
        dag_id=non_empty("dag_id", get("dag_id")), run_id=run_id.strip(),
        dry_run=boolean("dry_run", get("dry_run")),
        require_approval=boolean("require_approval", get("require_approval")),
        delete_conversations=boolean("delete_conversations", get("delete_conversations")),
        extraction_wait=bounded_int("extraction_wait", get("extraction_wait"),
                                    *LIMITS["extraction_wait"]),
        ledger_conn_id=non_empty("ledger_conn_id", get("ledger_conn_id")),
        ledger_schema=identifier("ledger_schema", get("ledger_schema")))
