"""Airflow DAG: erase one person from every Synap instance the backfills wrote to."""

from __future__ import annotations

from synap_backfill.airflow.erase_dag import build_erase_dag

DOC_MD = """
### Synap erase

Erases one person (a GDPR article 17 or CCPA deletion request) from every Synap instance
the ledger knows: the memories of every document of theirs that a backfill, a region
replay or an undo's resend made, and never sends their turns again while they remain
in the source.

1. **resolve_erase** checks the params and names the person by a keyed hash of their
   user id (the key: connection `person_key_conn_id`). The id itself goes to no log,
   XCom or ledger table.
2. **plan_erase** counts their documents per instance (the ledger's record, and their
   rows still in each source).
3. **approve_erase** (with `require_approval`) shows those counts under Required Actions.
4. **suppress_person** records the suppression under every instance's fence and waits
   for batches already on the wire: from then on no backfill sends their turns.
5. **erase_target** deletes their documents' memories in one instance, paced,
   checkpointed, and forgets them; with `include_live_memories`, also everything the
   instance holds about the user (`data.delete`, scope user).
6. **summarize_erase** adds it up. A dry run (the default) counts and deletes nothing.
   Run it again: it finds nothing, deletes nothing, and succeeds.
"""

build_erase_dag("synap_erase", doc_md=DOC_MD)
