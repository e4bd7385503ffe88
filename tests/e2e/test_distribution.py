"""The distribution as a user gets it: the wheel, installed into a fresh venv, in their own project.

The project is laid out as Astronomer's template lays it out, with its own
``include/`` package on the path. The wheel must not shadow it, must hold none
of this repository's local tooling, and the DAG files must parse from the
installed package alone: the repository is not on the path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.distribution

# Local tooling that stays in this repository's include/ and never ships.
TOOLING = ("include", "synap_local", "bench", "demo", "demo_data", "local_airflow", "local_stack",
           "local_cluster", "local_postgres", "tests")

# Run by the fresh venv's Python in the user's project folder.
_INSPECT = r"""
import importlib, json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.providers_manager import ProvidersManager

bag = DagBag(dag_folder=sys.argv[1])
hook = ProvidersManager().hooks.get("synap")
import include.helpers  # the project's own include package, not shadowed
import synap_backfill
# What the triggerer does with a serialized trigger: import its class path.
trigger = importlib.import_module("synap_backfill.airflow.verify_extraction").ExtractionTrigger
providers = ProvidersManager()
import statsd  # the metrics extra: what [metrics] statsd_on needs
print(json.dumps({
    "openlineage": providers.providers.get("apache-airflow-providers-openlineage") is not None,
    "synap_scheme": {
        "uri_handler": "synap" in providers.asset_uri_handlers,
        "factory": "synap" in providers.asset_factories,
        "to_openlineage": getattr(providers.asset_to_openlineage_converters.get("synap"),
                                  "__module__", None)},
    "errors": {k: str(v)[-500:] for k, v in bag.import_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
    "synap_hook": hook.hook_class_name if hook else None,
    "own_include": include.helpers.WHO,
    "engine_from": synap_backfill.__file__,
    "trigger_path": trigger(config={}, dag_id="d", run_id="r", deadline=0.0).serialize()[0],
}))
"""

THREE_LINES = '''from synap_backfill.airflow import build_backfill_dag

build_backfill_dag("my_backfill")
'''
# A DAG file written against the layout before this release: its module path still works.
OLD_LAYOUT = '''from synap_backfill.airflow.dag_factory import build_backfill_dag

build_backfill_dag("my_old_backfill")
'''


def test_the_wheel_holds_the_engine_and_the_provider_and_no_local_tooling(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"synap_backfill", "synap_provider"}
    modules = {Path(name).stem for name in names} | {part for name in names for part in name.split("/")[:-1]}
    assert not modules & set(TOOLING), sorted(modules & set(TOOLING))
    assert "synap_backfill/airflow/backfill/dag.py" in names
    assert "synap_backfill/airflow/verify_extraction.py" in names  # the trigger's class path
    for concern in ("common", "store", "extract", "privacy", "delivery", "holdings", "identity",
                    "deletion", "pipeline"):
        assert f"synap_backfill/{concern}/__init__.py" in names
    for page in ("run.html", "targets.html", "common.js", "common.css"):
        assert f"synap_provider/ui_static/{page}" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "[apache_airflow_provider]" in entry_points and "synap_provider.get_provider_info" in entry_points


def test_installed_with_its_extras_and_the_constraints_it_parses_the_dags_in_a_project_with_its_own_include(
        wheel, tmp_path):
    from include.matrix import PRIMARY, Combo, make_venv

    venv = tmp_path / "venv"
    # As a user installs it: the extras, under the constraints of the development combination.
    python = make_venv(Combo(*PRIMARY), sys.executable, wheel, venv)

    project = tmp_path / "project"  # an Astronomer-style project: dags/, include/, plugins/
    (project / "dags").mkdir(parents=True)
    (project / "include").mkdir()
    (project / "plugins").mkdir()
    (project / "include" / "__init__.py").write_text("")
    (project / "include" / "helpers.py").write_text('WHO = "the project\'s own include"\n')
    shutil.copy(REPO / "include" / "regions.yaml", project / "include" / "regions.yaml")
    for dag_file in (REPO / "dags").glob("*.py"):
        shutil.copy(dag_file, project / "dags" / dag_file.name)
    (project / "dags" / "three_lines.py").write_text(THREE_LINES)
    (project / "dags" / "old_layout.py").write_text(OLD_LAYOUT)

    home = tmp_path / "airflow-home"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIRFLOW", "PYTHON", "SYNAP_", "VIRTUAL_ENV"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(project / "dags"),
               AIRFLOW__CORE__PLUGINS_FOLDER=str(project / "plugins"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}")
    result = subprocess.run([str(python), "-c", _INSPECT, str(project / "dags")], cwd=project,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["errors"] == {}
    assert set(report["dag_ids"]) == {"synap_backfill", "synap_undo", "synap_erase", "synap_rekey",
                                     "synap_replay_eu", "my_backfill", "my_old_backfill"}
    assert report["synap_hook"] == "synap_provider.hooks.SynapHook"
    assert report["own_include"] == "the project's own include"
    assert Path(report["engine_from"]).is_relative_to(venv)  # the wheel, not this checkout
    assert report["trigger_path"] == "synap_backfill.airflow.verify_extraction.ExtractionTrigger"
    # The extras: Airflow's OpenLineage provider loads, and turns synap:// assets into datasets.
    assert report["openlineage"] is True
    assert report["synap_scheme"] == {"uri_handler": True, "factory": True,
                                      "to_openlineage": "synap_provider.assets"}


def test_without_a_regions_file_the_project_has_no_replay_dags_and_no_import_error(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(REPO / "dags" / "synap_region_replay_dags.py", dags)
    script = ("import sys, json; from airflow.dag_processing.dagbag import DagBag; "
              "b = DagBag(dag_folder=sys.argv[1]); "
              "print(json.dumps([sorted(b.dag_ids), list(b.import_errors)]))")
    env = {key: value for key, value in os.environ.items() if key != "SYNAP_REGIONS_FILE"}
    result = subprocess.run([sys.executable, "-c", script, str(dags)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [[], []]
