"""Run the local Synap API as a child process: for the demo, `make ui` and test fixtures."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .server import CONTROL_HEADER

REPO_ROOT = Path(__file__).resolve().parents[2]


class SynapProcess:
    """A ``python -m include.synap_local serve`` child; ``url`` once started."""

    def __init__(self, db_path: str | Path, *args: str, port: int = 0) -> None:
        self.db_path = Path(db_path)
        self.args = list(args)
        self.port = port
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        # /_local/*'s token, for this process's owner only (never a tenant key).
        self.control_token = secrets.token_urlsafe(24)

    def start(self) -> "SynapProcess":
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "include.synap_local", "serve", "--port", str(self.port),
             "--db", str(self.db_path), *self.args],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "SYNAP_LOCAL_CONTROL_TOKEN": self.control_token})
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if "listening on " not in line:
            self.stop()
            raise RuntimeError(f"local Synap API did not start (first line: {line.strip()!r})")
        self.url = line.rsplit("listening on ", 1)[1].strip()
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def get(self, path: str) -> Any:
        req = urllib.request.Request(self.url + path, headers={CONTROL_HEADER: self.control_token})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)

    @property
    def instance_id(self) -> str:
        """The instance the default key opens (the store's own id unless ``--tenant`` names one)."""
        return str(self.get("/_local/stats")["instances"][0])

    def controls(self, **changes: Any) -> Any:
        """Change rate limit, latency or faults of the running server."""
        req = urllib.request.Request(self.url + "/_local/controls", method="POST",
                                     data=json.dumps(changes).encode(),
                                     headers={"Content-Type": "application/json",
                                              CONTROL_HEADER: self.control_token})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)


@contextmanager
def running_synap(db_path: str | Path, *args: str, port: int = 0) -> Iterator[SynapProcess]:
    proc = SynapProcess(db_path, *args, port=port).start()
    try:
        yield proc
    finally:
        proc.stop()
