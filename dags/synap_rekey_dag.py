"""Airflow DAG: name every person the ledger holds under the current person key."""

from __future__ import annotations

from pathlib import Path

from synap_backfill.airflow.erase.rekey_dag import build_rekey_dag
from synap_backfill.common.source import load_source

SOURCE = load_source(Path(__file__).resolve().parents[1] / "include" / "synap_source.yaml")

DOC_MD = """
### Synap rekey

Run after a new person key: the new key is the password of the person key connection,
the old ones are listed in its extra `previous_passwords`. Each held turn recorded under
another key (or before ledger version 4, by the user id alone) is looked up in its
source and named anew, as its instance names a person; each suppression of a person a
source still holds is recorded again under the new key. Nothing is sent to Synap.

What cannot be re-derived (the rows left every source) stays under its old key: the
summary says which keys must stay in `previous_passwords`, and retires the others. A dry
run (the default) only counts. The procedure: docs/operating.md, "Rotating the person key".
"""

build_rekey_dag("synap_rekey", doc_md=DOC_MD, source=SOURCE)
