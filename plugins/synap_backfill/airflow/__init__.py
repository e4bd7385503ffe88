"""The Airflow-facing side of the backfill: DAG factories, tasks, approval and the trigger.

A DAG file needs only ``build_backfill_dag`` / ``build_undo_dag`` from here;
everything heavy is imported inside the tasks.
"""
