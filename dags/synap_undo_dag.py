"""Airflow DAG: undo one Synap backfill run, deleting exactly the memories it made."""

from __future__ import annotations

from pathlib import Path

from synap_backfill.airflow.backfill.regions import load_regions
from synap_backfill.airflow.undo.dag import build_undo_dag
from synap_backfill.common.source import load_source

INCLUDE = Path(__file__).resolve().parents[1] / "include"
SOURCE = load_source(INCLUDE / "synap_source.yaml")
# The DAGs built from that declaration: the only ones whose runs it undoes.
BACKFILLS = ["synap_backfill", *(region.dag_id for region in load_regions(INCLUDE / "regions.yaml"))]

DOC_MD = """
### Synap undo

Deletes exactly what one backfill run made in Synap: the memories extracted from the
documents it got accepted, read from each document's status and deleted one by one.
Nothing else the instance holds is touched.

1. **resolve_undo** finds the run in the ledger, its Synap connection and instance.
   A run the ledger does not know, a dry run, a run still running, or a connection that
   now opens another instance is refused in one line, and nothing is deleted.
2. **plan_undo** lists the run's partitions that got documents accepted.
3. **survey_partition** (a dry run, the default, or with `require_approval`) counts per
   partition the documents, the memories it would delete, the documents without an id,
   and the time it takes at the connection's rate. Nothing is deleted.
4. **approve_undo** (with `require_approval`) shows those figures under Required Actions;
   rejecting deletes nothing.
5. **undo_partition** deletes, paced with any backfill sending to the instance,
   checkpointed after each document: a retried partition never deletes twice.
6. **summarize_undo** adds up deleted, already gone, failed and without an id, and fails
   the run when a deletion failed for good. What could not be reached is listed in the
   ledger's `undo_unreached`.

Once a run is undone the instance's inventory no longer holds its rows, so a corrected
backfill sends them again, under new document ids where their memories were deleted.
"""

build_undo_dag("synap_undo", doc_md=DOC_MD, source=SOURCE, dag_ids=BACKFILLS)
