"""A secret kept as an Airflow connection's password: the person key, the token key.

Airflow's secrets backends, masking and access control apply to a connection;
a Variable or a param would put the key where a DAG's readers see it.
"""

from __future__ import annotations


def password_of(conn_id: str) -> bytes | None:
    """The connection's password as bytes; None when there is no such connection or no password."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, whatever the Airflow version calls it
        return None
    password = conn.password or ""
    return password.encode("utf-8") if password else None
