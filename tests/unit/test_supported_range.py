"""The range the package declares is the range the matrix proves, no wider and no narrower."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from include.matrix import AIRFLOWS, COMBOS, PYTHONS

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _airflow() -> SpecifierSet:
    return next(Requirement(r).specifier for r in PROJECT["dependencies"]
                if Requirement(r).name == "apache-airflow")


def test_every_python_the_matrix_runs_is_declared_and_no_other_minor():
    declared = SpecifierSet(PROJECT["requires-python"])
    assert all(f"{p}.0" in declared for p in PYTHONS)
    assert "3.10.12" not in declared and "3.14.0" not in declared
    classifiers = {c.rsplit(" :: ", 1)[-1] for c in PROJECT.get("classifiers", [])
                   if c.startswith("Programming Language :: Python :: 3.")}
    assert classifiers == set(PYTHONS)


def test_every_airflow_minor_the_matrix_runs_is_declared_and_no_other():
    declared = _airflow()
    assert all(a in declared for a in AIRFLOWS)
    assert "3.0.6" not in declared and "3.4.0" not in declared


def test_each_combination_has_constraints_that_pin_its_airflow():
    for combo in COMBOS:
        pins = dict(re.findall(r"^([a-z0-9_.\-]+)==(\S+)$", combo.constraints.read_text(), re.M))
        assert pins["apache-airflow"] == combo.airflow, combo.name
        assert "synap-backfill" not in pins  # the wheel itself is installed from its build


def test_the_readme_states_the_range_the_metadata_declares():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Supported versions", 1)[1].split("\n## ", 1)[0]
    for version in (*PYTHONS, *AIRFLOWS):
        assert version in section, version
