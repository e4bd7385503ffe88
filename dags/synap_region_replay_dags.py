"""Airflow DAGs: replay the Synap backfill into extra regions, one per entry of regions.yaml.

The file is the project's ``include/regions.yaml`` (``SYNAP_REGIONS_FILE`` overrides
it); without one there are no replay DAGs.
"""

from __future__ import annotations

from pathlib import Path

from synap_backfill.airflow.backfill.dag import PRIMARY_BACKFILL_DONE, build_backfill_dag
from synap_backfill.airflow.backfill.regions import AFTER_PRIMARY, load_regions
from synap_backfill.common.source import load_source

DOC_MD = """
### Synap region replay: `{name}`

The same backfill as `synap_backfill`, into the Synap connection `{conn}`: the same
declared source, columns, redaction and transform, so the same documents with the same
stable ids, and this region ends with exactly the documents of the first.
Schedule: {schedule}. Configured in `include/regions.yaml`.
"""

INCLUDE = Path(__file__).resolve().parents[1] / "include"
SOURCE = load_source(INCLUDE / "synap_source.yaml")  # the primary's: each region inherits it

for region in load_regions(INCLUDE / "regions.yaml"):
    after_primary = region.schedule == AFTER_PRIMARY
    build_backfill_dag(
        region.dag_id,
        doc_md=DOC_MD.format(name=region.name, conn=region.synap_conn_id,
                             schedule="after `synap_backfill` succeeds (asset "
                                      "`synap_backfill_complete`)" if after_primary
                             else f"`{region.schedule}`" if region.schedule else "manual"),
        schedule=[PRIMARY_BACKFILL_DONE] if after_primary else region.schedule,
        params=region.param_defaults(declared=SOURCE is not None),
        source=region.source(SOURCE),
        pool=region.pool_name,
        tags=["replay", region.name],
        parity_with="synap_backfill",
    )
