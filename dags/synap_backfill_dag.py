"""Airflow DAG: backfill historical chatbot conversations from PostgreSQL into Synap."""

from __future__ import annotations

from pathlib import Path

from synap_backfill.airflow.backfill.dag import PRIMARY_BACKFILL_DONE, build_backfill_dag
from synap_backfill.common.source import load_source

# What it reads and what each turn becomes: the deployment's declaration (SYNAP_SOURCE_FILE
# names another file). Everything in it is fixed for every run: the form varies the rest.
SOURCE = load_source(Path(__file__).resolve().parents[1] / "include" / "synap_source.yaml")

DOC_MD = """
### Synap backfill

Replays a PostgreSQL conversation table into Synap so an agent starts day one
knowing what its users already told it.

1. **resolve_config** validates the params (a bad one fails here, named, and nothing runs).
2. **plan_partitions** splits `[start, end)` (default: the table's whole range) into
   half-open UTC windows of `window_size`, splits busy ones at row quantiles, joins
   quiet ones up to `min_rows_per_partition`, skips empty ones and keeps the count
   under `max_partitions`. Rows with no timestamp get a partition that rejects them
   with a reason. Turns the source holds more than once are listed, so only the
   earliest copy is sent. `sample_partitions` keeps only that many, spread over the range.
3. **backfill_partition** (one per window, labelled with it) reads its rows in a stable
   order and sends them with `batch_create` in `long-range` mode, with the original
   timestamps and the stable id `backfill:{conversation_id}:{message_index}`, in the
   `synap_api` pool, several batches in flight, paced to the connection's
   `requests_per_minute` together with every other partition sending there. On a B2C
   instance no customer id is sent; on B2B a user without a customer is rejected.
   Re-running is safe: rows already in Synap come back as duplicate skips; documents
   this run had sent before (a lost answer, a killed attempt) count as its own.
4. **summarize** adds up every partition, states the run's turns/s (and, for a sample,
   the estimated time for the whole table), and fails the run if one failed, if
   `read != ingested + duplicates + rejected` anywhere, or if more than
   `max_rejected_share` of the rows were rejected.
5. **verify_extraction** waits, deferred in the triggerer (no worker slot), for Synap's
   extraction of `verify_sample` accepted documents per partition, paced with the
   partitions, and fails the run when more than `max_extraction_failed_share` failed.
6. **announce_complete** emits the `synap_backfill_complete` asset, which region
   replays can be scheduled on; skipped after a dry run or a sample.

**Retry one window:** clear just that mapped `backfill_partition` instance together with
`summarize` (downstream). Only that window runs again, resuming after its last checkpoint
(batches already applied are not sent again); the summary adds everything up anew.
"""

build_backfill_dag("synap_backfill", doc_md=DOC_MD, outlets=[PRIMARY_BACKFILL_DONE],
                   tags=["backfill"], source=SOURCE)
