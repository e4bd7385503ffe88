"""``make cluster``: Airflow with the CeleryExecutor and two workers on this machine, no containers.

The topology of ``docker-compose.yaml``, as native processes on loopback: a
Redis broker (Debian's ``redis-server``), PostgreSQL as the metadata DB and the
Celery result backend (the embedded wheel's server, database
``airflow_metadata``, beside the demo ``conversations`` in ``postgres``), the
local Synap API, and Airflow's api-server, scheduler, dag-processor,
triggerer and two Celery workers, each a separate process group, with the
connections (in the metadata DB) and pools in place. Prints the URL, and on
Ctrl-C stops everything it started and checks it is gone.

Each worker reports its own name as its hostname (``worker-1``, ``worker-2``),
so a task instance's ``hostname`` tells which worker ran it.

    python -m include.local_cluster [--port 8080] [--turns 20000] [--days 90] [--workers 2]
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .local_airflow import REPO_ROOT
from .local_stack import COMPONENTS, LocalStack, free_port, serve, stack_arguments

METADATA_DB = "airflow_metadata"
WORKER_ENV = "SYNAP_CLUSTER_WORKER"


def worker_hostname() -> str:
    """``[core] hostname_callable`` of a cluster worker: its name, else the machine's."""
    return os.environ.get(WORKER_ENV) or socket.getfqdn()


class LocalCluster(LocalStack):
    """Everything ``make cluster`` runs; ``start()`` then ``stop()`` (or use ``with``).

    :param workers: Celery workers, each its own process group.
    :param worker_concurrency: task slots per worker.
    :param heartbeat_timeout: seconds without a task heartbeat before the
        scheduler fails the attempt (and retries it elsewhere); Airflow's
        default is 300.
    """

    def __init__(self, state_dir: Path, *, workers: int = 2, worker_concurrency: int = 2,
                 heartbeat_timeout: int = 60, **kwargs: Any) -> None:
        super().__init__(state_dir, **kwargs)
        self.workers = [f"worker-{n}" for n in range(1, workers + 1)]
        self.worker_concurrency = worker_concurrency
        self.heartbeat_timeout = heartbeat_timeout
        self.redis_port = free_port()

    # -- services -----------------------------------------------------------
    def _start_services(self) -> None:
        redis = shutil.which("redis-server")
        if redis is None:
            raise RuntimeError("redis-server is not installed: make cluster needs Debian's "
                               "redis-server (apt-get install redis-server; .ci/run does)")
        data = self.state / "redis"
        data.mkdir(parents=True, exist_ok=True)
        log = (self.state / "logs" / "redis.log").open("wb")
        self.processes["redis"] = subprocess.Popen(
            [redis, "--bind", "127.0.0.1", "--port", str(self.redis_port), "--dir", str(data),
             "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_for_port(self.redis_port, "redis-server", 30)
        with self.pg.connect(autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (METADATA_DB,)).fetchone():
                conn.execute(f'CREATE DATABASE "{METADATA_DB}"')

    def _wait_for_port(self, port: int, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")

    @property
    def metadata_uri(self) -> str:
        return (f"postgresql+psycopg2://postgres@/{METADATA_DB}"
                f"?host={self.pg.socket_dir}&port={self.pg.port}")

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_uri,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.metadata_uri,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "AIRFLOW__CORE__PARALLELISM": str(len(self.workers) * self.worker_concurrency * 2),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        }

    def components(self) -> list[tuple[str, list[str], dict[str, str]]]:
        workers = [(name, ["celery", "worker", "--celery-hostname", f"{name}@%h",
                           "--concurrency", str(self.worker_concurrency), "--skip-serve-logs"],
                    {WORKER_ENV: name,
                     # Local tooling, not in the installed package: the repo root on the path.
                     "PYTHONPATH": str(REPO_ROOT),
                     "AIRFLOW__CORE__HOSTNAME_CALLABLE": "include.local_cluster.worker_hostname"})
                   for name in self.workers]
        return [(name, [name], {}) for name in COMPONENTS] + workers

    def wait_until_ready(self, timeout: float) -> None:
        """Airflow healthy, and every worker connected to the broker."""
        deadline = time.monotonic() + timeout
        super().wait_until_ready(timeout)
        for name in self.workers:
            log = self.state / "logs" / f"{name}.log"
            while b" ready." not in log.read_bytes():
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"celery {name} exited with {self.processes[name].returncode};"
                                       f" see {log}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"celery {name} not ready after {timeout:.0f}s; see {log}")
                time.sleep(1)

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a worker and every process under it at once, as when its machine dies.

        Not just its process group: Airflow starts each task in a group of its
        own, which would outlive a ``killpg`` of the worker and go on sending.
        Returns the PIDs killed.
        """
        import psutil

        proc = self.processes[name]
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for member in tree:
            member.suspend()  # nothing in the tree acts (or forks) between the kills
        for member in tree:
            member.kill()
        proc.wait(timeout=10)
        psutil.wait_procs(tree[1:], timeout=10)
        return [member.pid for member in tree]


def main(argv: list[str] | None = None) -> int:
    parser = stack_arguments(__doc__)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    cluster = LocalCluster(REPO_ROOT / ".local" / "cluster", port=args.port, turns=args.turns,
                           days=args.days, workers=args.workers,
                           pool_slots=args.workers * 2)
    return serve(cluster, f"Redis, embedded PostgreSQL, the local Synap API and Airflow"
                          f" (CeleryExecutor, {args.workers} Celery workers)", lambda: f"""
Airflow is up: {cluster.url}
  login:        admin / {cluster.password}
  executor:     CeleryExecutor; workers {', '.join(cluster.workers)} ({cluster.worker_concurrency} slots each)
  broker:       redis://127.0.0.1:{cluster.redis_port}/0
  metadata DB:  PostgreSQL database {METADATA_DB} (embedded server, {cluster.pg.socket_dir})
  source:       conversations, {cluster.rows} turns
  Synap:        {cluster.synap.url} (primary: local-dev-key, eu region: local-eu-key)
  logs:         {(cluster.state / 'logs').relative_to(REPO_ROOT)}/
Ctrl-C stops everything.""", timeout=300)

if __name__ == "__main__":
    sys.exit(main())
