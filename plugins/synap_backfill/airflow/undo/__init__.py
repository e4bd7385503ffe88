"""The undo DAG, as Airflow runs it: ``dag`` wires the tasks, the approval and the params;
``tasks`` resolves which run is undone, plans its partitions, surveys or deletes each through
``deletion``, and adds them up.

May import: every concern, and the Airflow side's shared modules (airflow.shared, compat,
approval, lineage, metrics, source_hook); never another DAG's package
"""
