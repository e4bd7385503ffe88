"""The Synap backfill engine: planning, reading, documents, sending, accounting, undo.

Plain Python, importable and testable without a scheduler. What Airflow runs
(the DAG factories, the tasks, the deferrable trigger) is in
``synap_backfill.airflow``; the Synap hook and connection type are in
``synap_provider``, shipped in the same distribution.
"""
