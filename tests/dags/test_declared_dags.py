"""A source declared once by the deployment: every DAG built from it reads it, the form hides
it, and a run's conf cannot change it. Parsed from the repo's DAG files, as Airflow does."""

from __future__ import annotations

import warnings

import pytest

from include.local_airflow import REPO_ROOT, load_dag


def bag():
    from airflow.dag_processing.dagbag import DagBag

    parsed = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert parsed.import_errors == {}
    return parsed


def test_what_the_source_declares_is_not_on_a_backfills_form_only_what_a_run_varies_is(declare):
    from synap_backfill.common.source import DECLARED

    declare(source_table="chats", user_text_column="question", redact_pii=True,
            document_transform="tests.integration.transforms.clean_turn", ledger_schema="ops_ledger")
    params = load_dag("synap_backfill").params
    assert not set(DECLARED) & set(params.keys())  # a conf giving one is refused by resolve_config
    for run_level in ("start", "end", "window_size", "dry_run", "sample_partitions",
                      "require_approval", "apply_source_changes", "verify_sample", "resend_unchanged"):
        assert run_level in params


def test_a_replay_inherits_the_primary_declaration_and_changes_only_its_connection(declare, tmp_path,
                                                                                    monkeypatch):
    from synap_backfill.airflow.backfill.regions import load_regions
    from synap_backfill.common.source import load_source

    declare(source_table="chats", user_text_column="question", redact_pii=True)
    regions = tmp_path / "regions.yaml"
    regions.write_text("regions:\n  - {name: eu, synap_conn_id: synap_eu, schedule: after_primary}\n"
                       "  - {name: dr, synap_conn_id: synap_dr, source_table: chats_replica}\n")
    monkeypatch.setenv("SYNAP_REGIONS_FILE", str(regions))
    primary = load_source()
    eu, dr = (region.source(primary) for region in load_regions())
    changed = {k for k in primary.values if eu.values[k] != primary.values[k]}
    assert changed == {"synap_conn_id"} and eu.values["synap_conn_id"] == "synap_eu"
    # An entry that names another relation says so explicitly; the rest is still inherited.
    assert {k for k in primary.values if dr.values[k] != primary.values[k]} == {
        "synap_conn_id", "source_table"}
    dags = bag().dags
    assert "synap_conn_id" not in dags["synap_replay_eu"].params
    # The undo takes runs of the DAGs built from the declaration, and of no other.
    assert dags["synap_undo"].params.get_param("dag_id").schema["enum"] == [
        "synap_backfill", "synap_replay_eu", "synap_replay_dr"]


def test_a_deployment_can_make_approval_mandatory_for_every_delete(declare):
    declare(approve_deletes=True, ledger_schema="ops_ledger", person_key_conn_id="ops_person_key")
    dags = bag().dags
    for dag_id in ("synap_undo", "synap_erase"):
        params = dags[dag_id].params
        assert params.get_param("require_approval").schema["const"] is True
        assert params.get_param("ledger_schema").schema["const"] == "ops_ledger"
        with pytest.raises(Exception):
            params.get_param("require_approval").resolve(False)
    assert dags["synap_erase"].params.get_param("person_key_conn_id").schema["const"] == "ops_person_key"
    assert dags["synap_rekey"].params.get_param("ledger_conn_id").schema["const"] == "postgres_default"
    # The backfill's plan approval stays a run's choice.
    assert "const" not in dags["synap_backfill"].params.get_param("require_approval").schema


@pytest.mark.parametrize("declared, named", [
    ({"souce_table": "chats"}, "unknown key 'souce_table' (did you mean 'source_table'?)"),
    ({"user_id_column": "user id"}, "param 'user_id_column'"),
    ({"source_timezone": "Europe/Atlantis"}, "param 'source_timezone'"),
    ({"approve_deletes": "yes"}, "'approve_deletes' must be true or false"),
])
def test_a_malformed_declaration_is_an_import_error_naming_the_key(declare, declared, named):
    from airflow.dag_processing.dagbag import DagBag

    declare(**declared)
    errors = DagBag(dag_folder=str(REPO_ROOT / "dags")).import_errors
    assert errors and all(named in error for error in errors.values())


def test_a_dag_built_without_a_declaration_warns_at_parse_time_naming_the_risk_and_the_release():
    from synap_backfill.airflow.backfill.dag import build_backfill_dag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_backfill_dag("legacy_backfill")
    (warning,) = [w for w in caught if issubclass(w.category, FutureWarning)]
    assert "anyone who may trigger it can point it at any table" in str(warning.message)
    assert "0.3.0" in str(warning.message)


def test_a_factory_default_that_is_no_param_or_is_declared_is_refused_when_the_dag_is_built():
    from synap_backfill.airflow.backfill.dag import build_backfill_dag
    from synap_backfill.common.checks import ParamError
    from synap_backfill.common.source import SourceDeclaration

    with pytest.raises(ParamError, match="param 'batch_sise': not a param"):
        build_backfill_dag("typo", params={"batch_sise": 50}, source=SourceDeclaration.of())
    with pytest.raises(ParamError, match="param 'source_table': declared by the deployment"):
        build_backfill_dag("declared", params={"source_table": "x"}, source=SourceDeclaration.of())


def test_a_named_declaration_file_that_is_missing_is_an_error_not_the_form(monkeypatch, tmp_path):
    from synap_backfill.common.source import SourceDeclarationError, load_source

    monkeypatch.setenv("SYNAP_SOURCE_FILE", str(tmp_path / "synap_sorce.yaml"))
    with pytest.raises(SourceDeclarationError, match="does not exist"):
        load_source(REPO_ROOT / "include" / "synap_source.yaml")


@pytest.mark.parametrize("query, named", [
    ("DELETE FROM chats", "must be one SELECT statement"),
    ("SELECT 1; DROP TABLE chats", "must be one SELECT statement"),
    ("SELECT * FROM chats WHERE question LIKE 'a%'", "must not contain '%'"),
])
def test_a_source_query_that_is_not_one_plain_select_is_refused_when_parsed(query, named):
    from synap_backfill.common.source import SourceDeclaration, SourceDeclarationError

    with pytest.raises(SourceDeclarationError, match=f"param 'source_query': {named}"):
        SourceDeclaration.of(source_query=query)
    assert SourceDeclaration.of(source_query="WITH x AS (SELECT 1) SELECT * FROM x;").values[
        "source_query"] == "WITH x AS (SELECT 1) SELECT * FROM x"


def test_the_shipped_dag_files_declare_their_source_and_make_every_delete_wait_for_approval(
        monkeypatch):
    monkeypatch.delenv("SYNAP_SOURCE_FILE")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no DAG falls back to the form's source
        dags = bag().dags
    from synap_backfill.common.source import DECLARED

    for dag_id in ("synap_backfill", "synap_replay_eu"):
        assert not set(DECLARED) & set(dags[dag_id].params.keys())
    for dag_id in ("synap_undo", "synap_erase"):
        assert dags[dag_id].params.get_param("require_approval").schema["const"] is True
