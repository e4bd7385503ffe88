"""An undo's settings: its params, each declared once, and what the ledger recorded of the run.

Light to import (the DAG file builds its trigger form from ``UndoConfig``):
nothing here touches the SDK, a database or the network.
"""

from __future__ import annotations

from typing import Any, Mapping

from synap_backfill.common.config import CONN_ID
from synap_backfill.common.ledger_params import ledger_conn_param, ledger_schema_param
from synap_backfill.common.params import ParamsModel, param


class UndoConfig(ParamsModel):
    """The undo's params, and what the ledger recorded of the run it undoes (resolved first)."""

    dag_id: str = param(
        "synap_backfill", title="DAG", check="non_empty", pattern=CONN_ID,
        description="The backfill DAG whose run to undo: synap_backfill, or a region replay "
                    "(synap_replay_<region>).")
    run_id: str = param(
        "", title="Run id", check="run_id", required=True, minLength=1,
        description="The run to undo, as its page in the Airflow UI names it.")
    dry_run: bool = param(
        True, title="Dry run", check="boolean",
        description="Count what would be deleted (documents, memories, time) and delete nothing. "
                    "On by default.")
    require_approval: bool = param(
        False, title="Require approval", check="boolean",
        description="Show the dry run's figures under Required Actions and delete only once "
                    "someone approves.")
    survey_sample: int = param(
        0, title="Survey sample", check="whole", minimum=0, maximum=100_000_000,
        description="A dry run reads one status per document to count its memories, at the "
                    "instance's pace (the plan's log says how long). A number here reads that "
                    "many documents per partition, spread over it, and estimates the rest from "
                    "them: minutes instead of hours. 0: every document, an exact count.")
    delete_conversations: bool = param(
        False, title="Delete conversations", check="boolean",
        description="Also delete the raw turns of the run's conversations (data.delete, scope "
                    "conversation); counted by the dry run first.")
    extraction_wait: int = param(
        600, title="Extraction wait (s)", check="whole", minimum=0, maximum=86_400,
        description="How long a document still being extracted is waited for before its memories "
                    "are read; one still extracting then is reported, not deleted.")
    ledger_conn_id: str = ledger_conn_param(
        "Where the run was recorded: the backfill's ledger (its ledger_conn_id, else its "
        "postgres_conn_id).")
    ledger_schema: str = ledger_schema_param()

    # Resolved from the ledger by the first task, not params.
    undone_run: int = 0  # the run's id in the ledger's ``runs``
    holding: int | None = None
    target: str = ""  # the Synap instance the run wrote to
    synap_conn_id: str = ""
    source: str = ""
    postgres_conn_id: str = ""
    source_table: str = ""
    columns: dict[str, str] = {}  # the run's column mapping
    source_query: str | None = None  # the run's declared SELECT, when it read one
    source_settings: dict[str, Any] = {}  # how it read its turns (a message table's shape)

    @property
    def describe_run(self) -> str:
        return f"run {self.run_id!r} of DAG {self.dag_id!r}"


def undo_config_from_params(params: Mapping[str, Any]) -> UndoConfig:
    """Validate the undo DAG's params; raise ParamError naming the first bad one."""
    config: UndoConfig = UndoConfig.from_params(params)
    return config
