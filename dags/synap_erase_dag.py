"""Airflow DAG: erase one person from every Synap instance the backfills wrote to."""

from __future__ import annotations

from pathlib import Path

from synap_backfill.airflow.erase.dag import build_erase_dag
from synap_backfill.common.source import load_source

SOURCE = load_source(Path(__file__).resolve().parents[1] / "include" / "synap_source.yaml")

DOC_MD = """
### Synap erase

Erases one person (a GDPR article 17 or CCPA deletion request) from every Synap instance
the ledger knows: the memories of every document of theirs that a backfill, a region
replay or an undo's resend made, and never sends their turns again while they remain
in the source.

1. **resolve_erase** checks the params and names the person by keyed hashes (the key:
   connection `person_key_conn_id`). Give `user_id` (and, for a B2B instance,
   `customer_id`), or `person` as the Synap page's "Erase a
   user" form makes it, so no id in clear stays in this run's conf. The id goes to no log,
   XCom or ledger table.
2. **plan_erase** finds them in every instance as that instance names a person (a B2C
   instance by the user id, a B2B one by customer and user): the ledger's record, and their
   rows still in each source. Without `customer_id`, a B2B instance that holds the user id
   is refused (naming under how many customers); a person found nowhere is said loudly.
3. **approve_erase** (with `require_approval`) shows those counts under Required Actions.
4. **suppress_person** records the suppression under every instance's fence, waits for
   every batch already on the wire, and reads the targets again: from then on no backfill
   sends their turns.
5. **erase_target** deletes their documents' memories in one instance, paced,
   checkpointed, forgetting each document once its memories are gone; with
   `include_live_memories`, also everything the instance holds about the user
   (`data.delete`, scope user).
6. **summarize_erase** adds it up, and fails while anything of theirs is left (a document
   still being extracted: erase again later). A dry run (the default) counts and deletes
   nothing. Run again after a complete erasure, it finds nothing and succeeds.
"""

build_erase_dag("synap_erase", doc_md=DOC_MD, source=SOURCE)
