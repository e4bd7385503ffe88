"""docker-compose.yaml cannot run here (no Docker engine): validate it and check it matches the repo."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from include.local_airflow import synap_pools

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker", "airflow-init"}


def test_it_validates_against_the_compose_specification():
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec",
                             str(REPO / "docker-compose.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_has_the_official_airflow_3_services_plus_source_db_and_synap_api():
    assert AIRFLOW_SERVICES | {"postgres", "redis", "source-db", "synap-api", "source-init"} == set(SERVICES)
    assert SERVICES["airflow-worker"]["command"] == "celery worker"
    env = SERVICES["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_every_dependency_names_a_service_and_long_running_services_have_healthchecks():
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in SERVICES, f"{name} depends on missing service {dependency}"
            assert dependency != name
        if name not in {"airflow-init", "source-init"}:
            assert "healthcheck" in service, f"{name} has no healthcheck"


@pytest.mark.parametrize("service", sorted(AIRFLOW_SERVICES))
def test_airflow_services_mount_the_dags_and_the_projects_include_folder(service):
    mounts = {v.split(":")[0]: v.split(":")[1] for v in SERVICES[service]["volumes"]}
    assert mounts["./dags"] == "/opt/airflow/dags"
    # The region replay DAG file reads <dags folder>/../include/regions.yaml.
    assert mounts["./include"] == "/opt/airflow/include"
    assert "./plugins" not in mounts  # the engine comes from the image's wheel
    assert "PYTHONPATH" not in SERVICES[service]["environment"]


def test_the_image_installs_the_wheel_with_the_constraints_of_its_python_and_airflow():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip wheel --no-cache-dir --no-deps" in dockerfile
    assert ('-c "/home/airflow/constraints/python${PYTHON_VERSION}-airflow${AIRFLOW_VERSION%.*}.txt"'
            in dockerfile)
    assert "synap_backfill-*.whl" in dockerfile


def test_the_image_builds_any_supported_pair_and_defaults_to_the_newest():
    from include.matrix import AIRFLOWS, COMBOS, PYTHONS

    dockerfile = (REPO / "Dockerfile").read_text()
    defaults = dict(re.findall(r"^ARG (PYTHON_VERSION|AIRFLOW_VERSION)=(\S+)$", dockerfile, re.M))
    assert defaults == {"PYTHON_VERSION": PYTHONS[-1], "AIRFLOW_VERSION": AIRFLOWS[-1]}
    assert "FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}" in dockerfile
    args = COMPOSE["x-airflow-common"]["build"]["args"]
    assert args == {"PYTHON_VERSION": f"${{PYTHON_VERSION:-{PYTHONS[-1]}}}",
                    "AIRFLOW_VERSION": f"${{AIRFLOW_VERSION:-{AIRFLOWS[-1]}}}"}
    for combo in COMBOS:  # the file the image's pip reads, for every pair it may be built for
        assert combo.constraints.exists(), combo.constraints
    assert "COPY --chown=airflow:root plugins " in dockerfile
    assert "COPY --chown=airflow:root include" not in dockerfile  # no local tooling in the image
    assert " -e " not in dockerfile
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (REPO / "requirements.txt").read_text(), re.M))
    assert AIRFLOWS[-1] == pins["apache-airflow"]  # the newest is the one the whole suite runs on
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in dockerfile


@pytest.mark.parametrize("service", ["synap-api", "source-init"])
def test_the_local_tooling_services_run_from_the_mounted_include_folder(service):
    assert SERVICES[service]["working_dir"] == "/opt/airflow"
    mounts = {v.split(":")[0]: v.split(":")[1] for v in SERVICES[service].get("volumes", [])}
    assert mounts["./include"] == "/opt/airflow/include"


def test_the_init_creates_every_pool_and_connection_the_dags_use():
    script = "\n".join(SERVICES["airflow-init"]["command"])
    created = set(re.findall(r"airflow pools set (\S+) ", script))
    assert created == set(synap_pools())
    connections = set(re.findall(r'Connection\(conn_id="(\w+)"', script))
    from synap_backfill.airflow.backfill.regions import load_regions

    assert {"synap_default", "postgres_default",
            *(r.synap_conn_id for r in load_regions(REPO / "include" / "regions.yaml"))} <= connections
    assert "airflow db migrate" in script


def test_the_synap_api_and_demo_data_services_run_this_repos_modules():
    assert SERVICES["synap-api"]["entrypoint"][-1] == "include.synap_local"
    assert "SYNAP_API_KEY" in SERVICES["synap-api"]["environment"]["SYNAP_LOCAL_TENANTS"]
    assert SERVICES["source-init"]["entrypoint"][-1] == "include.demo_data"


SECRETS = {"AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "SYNAP_API_KEY", "SYNAP_EU_API_KEY",
           "SYNAP_LOCAL_CONTROL_TOKEN", "SOURCE_DB_PASSWORD"}
_REFERENCE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""
    def value(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise LookupError(f"required variable {name} is missing a value: {arg}")
        return arg if op == ":-" else ""
    return _REFERENCE.sub(value, text.replace("$$", "\0")).replace("\0", "$")


def test_compose_refuses_to_start_without_each_secret_and_has_no_default_for_any():
    text = (REPO / "docker-compose.yaml").read_text()
    full = {name: f"value-of-{name}" for name in SECRETS}
    resolved = yaml.safe_load(interpolate(text, full))
    assert resolved["x-airflow-common"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] == full[
        "AIRFLOW_JWT_SECRET"]
    for name in sorted(SECRETS):
        with pytest.raises(LookupError, match=f"required variable {name} is missing"):
            interpolate(text, {k: v for k, v in full.items() if k != name})
    defaults = {m.group(1) for m in _REFERENCE.finditer(text) if m.group(2) == ":-"}
    assert not defaults & SECRETS, defaults & SECRETS
    assert "change-me" not in text


def test_ports_are_published_on_loopback_unless_a_bind_address_is_set():
    text = (REPO / "docker-compose.yaml").read_text()
    published = {name: s["ports"] for name, s in SERVICES.items() if s.get("ports")}
    assert set(published) == {"airflow-apiserver", "synap-api"}
    for ports in published.values():
        for port in ports:
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), port
    resolved = yaml.safe_load(interpolate(text, {n: "x" for n in SECRETS}))
    assert resolved["services"]["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]
    opened = yaml.safe_load(interpolate(text, {**{n: "x" for n in SECRETS}, "BIND_ADDRESS": "0.0.0.0"}))
    assert opened["services"]["airflow-apiserver"]["ports"] == ["0.0.0.0:8080:8080"]


def test_no_key_or_password_is_on_a_command_line_and_no_service_runs_as_root():
    for name, service in SERVICES.items():
        argv = json.dumps([service.get("entrypoint"), service.get("command")])
        for secret in SECRETS:  # read from the environment inside the process, never expanded
            assert not re.search(r"\$\$?\{?" + secret, argv), (name, secret)
        assert "local-dev-key" not in argv and "app:app@" not in argv, name
        if name in {"postgres", "redis", "source-db"}:
            continue  # the official images drop to their own user themselves
        user = service.get("user", "")
        assert user and not user.startswith(("0:", "root")), (name, user)
