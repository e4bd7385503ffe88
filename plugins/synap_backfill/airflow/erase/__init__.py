"""The erase and rekey DAGs, as Airflow runs them: ``dag`` and ``rekey_dag`` wire the tasks
and params; ``tasks`` resolves the person, suppresses, finds (``finder``) and erases them in
every instance the ledger knows, through ``deletion``; ``rekey_tasks`` moves the ledger's
person hashes to a new key.

May import: every concern, and the Airflow side's shared modules (airflow.shared, compat,
approval, lineage, metrics, source_hook); never another DAG's package
"""
