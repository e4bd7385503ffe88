from pathlib import Path

import pytest

from synap_backfill.airflow.backfill.regions import RegionConfigError, load_regions

SHIPPED = Path(__file__).resolve().parents[2] / "include" / "regions.yaml"


def write(tmp_path, text):
    path = tmp_path / "regions.yaml"
    path.write_text(text)
    return path


def test_the_shipped_config_declares_a_replay_after_the_primary():
    (eu,) = load_regions(SHIPPED)
    assert (eu.dag_id, eu.synap_conn_id, eu.schedule, eu.pool_name) == (
        "synap_replay_eu", "synap_eu", "after_primary", "synap_eu")


def test_a_region_changes_only_its_connection_and_range_in_the_form(tmp_path):
    (r,) = load_regions(write(tmp_path, """
regions:
  - {name: apac, synap_conn_id: synap_apac, schedule: "0 3 * * *",
     start: "2024-01-01", end: "2024-02-01T00:00:00Z", pool: apac_pool}
"""))
    assert r.param_defaults() == {"synap_conn_id": "synap_apac",
                                  "start": "2024-01-01T00:00:00+00:00",
                                  "end": "2024-02-01T00:00:00+00:00"}
    assert r.pool_name == "apac_pool"


@pytest.mark.parametrize("entry, problem", [
    ("{name: EU, synap_conn_id: x}", "'name'"),
    ("{name: eu}", "'synap_conn_id' is required"),
    ("{name: eu, synap_conn_id: x, start: '2024-01-01'}", "give both start and end"),
    ("{name: eu, synap_conn_id: x, start: soon, end: later}", "param 'start'"),
    ("{name: eu, synap_conn_id: x, schedul: '@daily'}", "unknown field(s) ['schedul']"),
    ("{name: eu, synap_conn_id: x, schedule: ''}", "'schedule' must be"),
])
def test_a_malformed_region_is_refused_naming_the_field(tmp_path, entry, problem):
    with pytest.raises(RegionConfigError) as info:
        load_regions(write(tmp_path, f"regions:\n  - {entry}\n"))
    assert problem in str(info.value)


def test_duplicate_region_names_are_refused(tmp_path):
    with pytest.raises(RegionConfigError, match="unique"):
        load_regions(write(tmp_path, "regions:\n  - {name: eu, synap_conn_id: a}\n"
                                     "  - {name: eu, synap_conn_id: b}\n"))


def test_no_regions_file_means_no_replay_dags(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNAP_REGIONS_FILE", raising=False)
    assert load_regions() == []
    assert load_regions(tmp_path / "missing.yaml") == []


def test_the_environment_names_the_file_over_the_dag_files_choice(tmp_path, monkeypatch):
    chosen = write(tmp_path, "regions:\n  - {name: us, synap_conn_id: synap_us}\n")
    monkeypatch.setenv("SYNAP_REGIONS_FILE", str(chosen))
    assert [r.name for r in load_regions(SHIPPED)] == ["us"]
