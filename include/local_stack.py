"""``make ui``: a running local Airflow with everything the backfill needs, on loopback.

Starts an embedded PostgreSQL with the demo ``conversations`` table, the local
Synap API with two instances (the primary and the ``eu`` replay region), and
Airflow's api-server, scheduler, dag-processor and triggerer (LocalExecutor,
SQLite metadata DB), with the connections (in the metadata DB, so the
Connections page lists them) and pools in place. Prints the URL
and login, and on Ctrl-C stops every process it started and checks they are
gone. The end-to-end tests start the same stack.

    python -m include.local_stack [--port 8080] [--turns 20000] [--days 90]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .demo_data import load_demo_table
from .local_airflow import REPO_ROOT, airflow_env
from .local_postgres import LocalPostgres
from .synap_local.process import SynapProcess

PRIMARY_TENANT = "local-dev-key:inst_0000000000000001:b2b"
EU_TENANT = "local-eu-key:inst_00000000000000e1:b2b"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStack:
    """Everything ``make ui`` runs; ``start()`` then ``stop()`` (or use ``with``)."""

    def __init__(self, state_dir: Path, *, port: int = 8080, turns: int = 20_000, days: int = 90,
                 seed: int = 7, pool_slots: int = 4, extra_env: dict[str, str] | None = None,
                 synap_extra: dict[str, Any] | None = None, synap_args: tuple[str, ...] = (),
                 demo_person_key: bool = False) -> None:
        self.state = state_dir
        self.demo_person_key = demo_person_key  # make ui: every page's form works out of the box
        self.port = port
        self.turns, self.days, self.seed = turns, days, seed
        self.pool_slots = pool_slots
        self.extra_env = extra_env or {}
        self.synap_extra = synap_extra or {}
        self.url = f"http://127.0.0.1:{port}"
        self.pg = LocalPostgres(state_dir / "postgres")
        self.synap = SynapProcess(state_dir / "synap.sqlite3", "--tenant", PRIMARY_TENANT,
                                  "--tenant", EU_TENANT, *synap_args)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.rows = 0

    # -- lifecycle ----------------------------------------------------------
    def start(self, timeout: float = 180) -> "LocalStack":
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "logs").mkdir(exist_ok=True)
        try:
            self.pg.start()
            with self.pg.connect() as conn:
                self.rows = load_demo_table(conn, turns=self.turns, days=self.days, seed=self.seed)
            self.synap.start()
            self._start_services()
            env = self.env()
            self._run_setup(env)
            for name, args, extra_env in self.components():
                self._spawn(name, args, {**env, **extra_env})
            self.wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process this stack started, by process group, and make sure they are gone."""
        for proc in self.processes.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for name, proc in self.processes.items():
            _signal_group(proc, signal.SIGKILL)  # stragglers: the group's children too
            proc.wait(timeout=10)
            gone_by = time.monotonic() + 10  # a killed group's members take a moment to exit
            while _group_alive(proc.pid):
                if time.monotonic() > gone_by:
                    raise RuntimeError(f"airflow {name} (process group {proc.pid}) did not stop")
                time.sleep(0.2)
        self.processes.clear()
        self.synap.stop()
        self.pg.stop()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- configuration ------------------------------------------------------
    @property
    def password(self) -> str:
        path = self.state / "passwords.json"
        if not path.exists():
            path.write_text(json.dumps({"admin": secrets.token_urlsafe(12)}))
        return json.loads(path.read_text())["admin"]

    def password_of(self, user: str) -> str:
        """Another user's password, as the API server generated it on start."""
        return json.loads((self.state / "passwords.json").read_text())[user]

    def env(self) -> dict[str, str]:
        secret_file = self.state / "jwt-secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(32))
        fernet_file = self.state / "fernet-key"
        if not fernet_file.exists():
            # One key for every process: without it each one that starts before airflow.cfg is
            # written has none, and cannot read a connection the API server saved encrypted.
            from cryptography.fernet import Fernet

            fernet_file.write_text(Fernet.generate_key().decode())
        _ = self.password  # write the passwords file before the api-server reads it
        return {
            **os.environ,
            **airflow_env(self.state / "airflow"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secret_file.read_text(),
            "AIRFLOW__API__SECRET_KEY": secret_file.read_text(),
            "AIRFLOW__CORE__FERNET_KEY": fernet_file.read_text(),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.state / "passwords.json"),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",  # the Test button on the Connections page
            "PYTHONUNBUFFERED": "1",  # each process's log under logs/ is written as it happens
            **self.extra_env,
        }

    def connections(self) -> dict[str, str]:
        """The connections the DAGs use, created in the metadata DB by the setup step."""
        # The port is set as well as in the URL: Airflow 3.3.2's Test button
        # refuses a connection without one (apache/airflow#73298).
        synap = {"conn_type": "synap", "host": self.synap.url,
                 "port": int(self.synap.url.rsplit(":", 1)[1]), "extra": self.synap_extra}
        made = {
            "synap_default": json.dumps({**synap, "password": PRIMARY_TENANT.split(":")[0]}),
            "synap_eu": json.dumps({**synap, "password": EU_TENANT.split(":")[0]}),
            "postgres_default": self.pg.airflow_connection(),
        }
        if self.demo_person_key:
            made["synap_person_key"] = json.dumps({
                "conn_type": "generic", "password": self._secret("demo-person-key"),
                "description": "DEMO person key, made by make ui for this local stack only: a real"
                               " deployment creates its own (docs/operating.md, Erasing a person)"})
        return made

    def _secret(self, name: str) -> str:
        """A random secret kept in the stack's state (the same across restarts), never a default."""
        path = self.state / name
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(32))
        return path.read_text()

    def _run_setup(self, env: dict[str, str]) -> None:
        """Migrate the metadata DB, create the pools and connections, as the compose init service does."""
        log = (self.state / "logs" / "setup.log").open("wb")
        connections = self.state / "connections.json"
        connections.touch(mode=0o600)
        connections.write_text(json.dumps(self.connections()))
        subprocess.run([sys.executable, "-m", "include.local_airflow", "setup",
                        "--pool-slots", str(self.pool_slots), "--connections-file", str(connections)],
                       cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
                       timeout=300)

    def _start_services(self) -> None:
        """Services Airflow needs besides PostgreSQL and the Synap API (none here; a broker in a cluster)."""

    def components(self) -> list[tuple[str, list[str], dict[str, str]]]:
        """Each Airflow process to start: its name, ``airflow`` arguments and own environment."""
        return [(name, [name], {}) for name in COMPONENTS]

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = (self.state / "logs" / f"{name}.log").open("wb")
        airflow = Path(sys.executable).parent / "airflow"
        self.processes[name] = subprocess.Popen(
            [str(airflow), *args], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_until_ready(self, timeout: float) -> None:
        """Until the API answers and the scheduler, dag-processor and triggerer report healthy."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited with {proc.returncode}; "
                                       f"see {self.state / 'logs' / (name + '.log')}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as resp:
                    last = json.load(resp)
                if all((last.get(k) or {}).get("status") == "healthy"
                       for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow not ready after {timeout:.0f}s (last health: {last})")


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies of the group count as gone: only their parent can reap them.
    out = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return any(not line.strip().startswith("Z") for line in out.splitlines() if line.strip())


def stack_arguments(description: str | None) -> argparse.ArgumentParser:
    """The command line ``make ui`` and ``make cluster`` share: port and demo data size."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = stack_arguments(__doc__).parse_args(argv)
    stack = LocalStack(REPO_ROOT / ".local" / "ui", port=args.port, turns=args.turns, days=args.days,
                       demo_person_key=True)
    return serve(stack, "embedded PostgreSQL, the local Synap API and Airflow", lambda: f"""
Airflow is up: {stack.url}
  login:        admin / {stack.password}
  DAGs:         synap_backfill (trigger it: DAG page -> Trigger), synap_replay_eu
  source:       conversations, {stack.rows} turns in the embedded PostgreSQL
  Synap:        {stack.synap.url} (primary: local-dev-key, eu region: local-eu-key)
  person key:   synap_person_key is a DEMO key made for this stack (the Erase form uses it);
                a real deployment creates its own, a long random password, before its first backfill
  logs:         {(stack.state / 'logs').relative_to(REPO_ROOT)}/
Ctrl-C stops everything.""")


def serve(stack: LocalStack, what: str, banner: Any, timeout: float = 180) -> int:
    """Start ``stack``, print ``banner()``, run until Ctrl-C or a process exits, stop everything."""
    # Ctrl-C and SIGTERM both stop everything, even when this process was
    # started with SIGINT ignored (as shells do for background jobs).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"starting {what} ...", flush=True)
    try:
        stack.start(timeout)  # stops what it started if it fails or is interrupted
    except KeyboardInterrupt:
        return 130
    print(banner(), flush=True)
    try:
        while all(p.poll() is None for p in stack.processes.values()):
            time.sleep(1)
        print("a process of the stack exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping...", flush=True)
        stack.stop()
        print(f"stopped: {what}", flush=True)

if __name__ == "__main__":
    sys.exit(main())
