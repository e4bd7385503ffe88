"""The backfill DAG and its region replays, as Airflow runs them: ``dag`` wires the tasks and
params, the other modules are the task bodies (``resolve`` the config and preflight, ``plan``
the windows, ``partition`` one window through the pipeline, ``apply`` the source changes,
``summary`` the totals and the check of the reads; ``regions`` the replay DAGs' routes).
They hand the hooks, connections and XCom to the engine's concerns and nothing else.

May import: every concern, and the Airflow side's shared modules (airflow.shared, compat,
approval, lineage, metrics, source_hook, verify_extraction); never another DAG's package
"""
