"""The supported Python × Airflow matrix: its constraints files, and a fresh venv per combination.

Airflow publishes a constraints file per Python and Airflow version; these machines cannot
download them, so ``make lock`` resolves our own (``constraints/``), one per combination,
for what a user's deployment installs: the wheel with its extras and the Celery provider
(the Dockerfile's image). ``constraints.txt`` stays the development set (3.11, newest Airflow,
with the test tools).

    python -m include.matrix lock          # write constraints/python<P>-airflow<A>.txt
    python -m include.matrix table FILE    # print a matrix run's results (JSON lines) as a table

The matrix test (``tests/e2e/test_matrix.py``) installs the wheel into a fresh venv of each
combination with ``uv`` and runs ``include/matrix_probe.py`` there. Interpreters come from the
machine: ``python3.X`` on the PATH, or pyenv's versions; a combination whose Python is not
here is reported skipped, with the reason.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints"
PYTHONS = ("3.11", "3.12", "3.13")
# Every supported Airflow minor, at its latest patch: what a new deployment of that minor gets.
AIRFLOWS = ("3.1.8", "3.2.2", "3.3.2")
# The development set's combination: the whole suite runs on it (``make test``).
PRIMARY = ("3.11", "3.3.2")
# Besides the wheel's own dependencies: the providers the Dockerfile's image adds.
ALSO = ("apache-airflow-providers-celery==3.26.0",)
# Libraries a minor needs older than the newest its requirements admit, with why. Airflow's
# published constraints would hold them back; ours must say so.
HELD_BACK = {
    # svcs 26 (after 3.2.2's release): the execution API's services are not found at request
    # time ('State' object has no attribute 'svcs_registry'): every task fails. 3.3 runs on 26.
    "3.2": ("svcs==25.1.0",),
}


@dataclass(frozen=True)
class Combo:
    python: str
    airflow: str

    @property
    def name(self) -> str:
        return f"python{self.python}-airflow{self.airflow.rsplit('.', 1)[0]}"

    @property
    def constraints(self) -> Path:
        return CONSTRAINTS / f"{self.name}.txt"

    @property
    def held_back(self) -> tuple[str, ...]:
        return HELD_BACK.get(self.airflow.rsplit(".", 1)[0], ())

    @property
    def note(self) -> str:
        return ", ".join(self.held_back) + " (held back)" if self.held_back else ""

    @property
    def primary(self) -> bool:
        return (self.python, self.airflow) == PRIMARY


COMBOS = tuple(Combo(p, a) for a in AIRFLOWS for p in PYTHONS)


def uv() -> str:
    """The pinned ``uv`` of the development venv (requirements.txt)."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        raise RuntimeError("uv is not installed: run make install (requirements.txt pins it)")
    return found


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` on this machine that runs: on the PATH, else one pyenv
    installed (pyenv's shim for a version it has not selected is on the PATH and fails)."""
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates = [shutil.which(f"python{version}"),
                  *sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"), reverse=True)]
    for candidate in filter(None, candidates):
        try:
            said = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if said.returncode == 0 and said.stdout.strip() == version:
            return candidate
    return None


def requirements(combo: Combo) -> list[str]:
    """What a deployment of ``combo`` installs: Airflow, this package's dependencies and extras
    as pyproject.toml declares them, and the image's providers."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for reqs in project["optional-dependencies"].values() for r in reqs]
    return [f"apache-airflow=={combo.airflow}", *project["dependencies"], *extras, *ALSO,
            *combo.held_back]


def lock(combos: tuple[Combo, ...] = COMBOS) -> None:
    """Resolve each combination's constraints (for Linux x86_64, as CI and the image run)."""
    CONSTRAINTS.mkdir(exist_ok=True)
    for combo in combos:
        request = CONSTRAINTS / f".{combo.name}.in"
        request.write_text("\n".join(requirements(combo)) + "\n")
        if not combo.constraints.exists():
            # uv keeps the versions an output file already pins, where they fit: start from the
            # development set's, so that a minor whose Airflow sets no ceiling on a library
            # (Airflow 3.2 and cadwyn, say) gets the one the suite runs with, not the newest.
            combo.constraints.write_text("".join(
                line for line in (REPO / "constraints.txt").read_text().splitlines(keepends=True)
                if not line.startswith(("#", "apache-airflow"))))
        try:
            subprocess.run([uv(), "pip", "compile", "--quiet", "--no-header", "--no-annotate",
                            "--python-version", combo.python, "--python-platform",
                            "x86_64-manylinux_2_28", str(request), "-o", str(combo.constraints)],
                           check=True, timeout=600)
        finally:
            request.unlink()
        body = combo.constraints.read_text()
        combo.constraints.write_text(
            f"# The resolved set for Python {combo.python} and Airflow {combo.airflow}: the wheel,\n"
            "# its extras and the Celery provider. Regenerate with: make lock\n" + body)
        print(f"{combo.constraints.relative_to(REPO)}: {body.count(chr(10))} packages")


def make_venv(combo: Combo, python: str, wheel: Path, venv: Path, extras: str = "openlineage,metrics"
              ) -> Path:
    """A fresh venv of ``combo`` with the wheel installed under its constraints; its Python."""
    subprocess.run([uv(), "venv", "--quiet", "--python", python, str(venv)], check=True, timeout=300)
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    result = subprocess.run([uv(), "pip", "install", "--quiet", "-c", str(combo.constraints),
                             f"{wheel}[{extras}]"], env=env, capture_output=True, text=True,
                            timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{combo.name}: the wheel did not install: {result.stderr[-2000:]}")
    return venv / "bin" / "python"


COLUMNS = ("combination", "installed", "provider registered", "DAGs parsed",
           "backfill rows in = rows in Synap", "seconds", "note")


def table(results: list[dict]) -> str:
    """The matrix as a Markdown table, one row per combination, in ``COMBOS`` order."""
    order = {c.name: i for i, c in enumerate(COMBOS)}
    rows = [COLUMNS, tuple("---" for _ in COLUMNS)]
    for r in sorted(results, key=lambda r: order.get(r["combination"].split()[0], len(order))):
        rows.append(tuple(str(r.get(k, "")) for k in (
            "combination", "installed", "provider", "parsed", "backfill", "seconds", "note")))
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.matrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lock", help="write constraints/ for every supported combination")
    show = sub.add_parser("table", help="a matrix run's results (JSON lines) as a table")
    show.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.command == "lock":
        lock()
    else:
        print(table([json.loads(line) for line in args.results.read_text().splitlines() if line]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
