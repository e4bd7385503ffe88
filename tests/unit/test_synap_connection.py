import json

import pytest

from synap_provider.connection_check import refusal
from synap_provider.connection_fields import InvalidExtra, parse_extras
from synap_provider.hooks import SynapHook, base_url


@pytest.mark.parametrize("host, port, scheme, expected", [
    ("http://127.0.0.1:8765", None, None, "http://127.0.0.1:8765"),
    ("http://127.0.0.1", 8765, None, "http://127.0.0.1:8765"),
    ("synap.example.com", None, None, "https://synap.example.com"),
    ("synap.example.com", 8443, "http", "http://synap.example.com:8443"),
    ("https://synap.example.com/", None, None, "https://synap.example.com"),
    ("", None, None, None),
    (None, None, None, None),
])
def test_the_base_url_comes_from_host_port_and_scheme(host, port, scheme, expected):
    assert base_url(host, port, scheme) == expected


def test_the_hook_follows_the_provider_hook_conventions():
    assert SynapHook.conn_name_attr == "synap_conn_id"
    assert SynapHook.default_conn_name == "synap_default"
    assert SynapHook.conn_type == "synap"
    assert SynapHook.hook_name == "Synap"



def test_the_installed_provider_registers_the_synap_connection_type_with_its_hook_and_fields():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "synap-backfill" in manager.providers
    hook = manager.hooks["synap"]
    assert hook.hook_class_name == "synap_provider.hooks.SynapHook"
    assert hook.connection_id_attribute_name == "synap_conn_id"
    assert hook.connection_testable
    widgets = manager._connection_form_widgets_from_metadata
    for name in ("requests_per_minute", "max_in_flight", "timeout_seconds", "max_attempts",
                 "backoff_max", "max_wait", "duplicate_pattern"):
        assert f"extra__synap__{name}" in widgets
    schema = widgets["extra__synap__requests_per_minute"].field["schema"]
    assert schema == {"type": ["number", "null"], "default": 600, "minimum": 0,
                      "title": "Requests per minute"}
    assert manager.field_behaviours["synap"]["relabeling"]["password"] == "API key"


def test_the_connection_check_plugin_is_registered_through_its_entry_point():
    from airflow import plugins_manager

    _, middlewares = plugins_manager.get_fastapi_plugins()
    from synap_provider.connection_check import SynapConnectionCheck

    assert SynapConnectionCheck in [m["middleware"] for m in middlewares]


@pytest.mark.parametrize("extra, expected", [
    ({}, {"requests_per_minute": 600, "max_in_flight": 4, "duplicate_pattern": None}),
    ({"requests_per_minute": "60", "max_in_flight": 2}, {"requests_per_minute": 60.0, "max_in_flight": 2}),
    ({"extra__synap__max_wait": 30}, {"max_wait": 30.0}),
    ({"requests_per_minute": 0}, {"requests_per_minute": 0.0}),
    ({"requests_per_minute": 1}, {"requests_per_minute": 1.0}),
    ({"duplicate_pattern": "already exists"}, {"duplicate_pattern": "already exists"}),
])
def test_extras_are_typed_with_defaults(extra, expected):
    values = parse_extras("synap_default", extra)
    assert {k: values[k] for k in expected} == expected


@pytest.mark.parametrize("extra, problem", [
    ({"requests_per_minute": "fast"}, "extra 'requests_per_minute' (Requests per minute) must be a number"),
    ({"requests_per_minute": -5},
     "extra 'requests_per_minute' (Requests per minute) must be at least 1, or 0 for off"),
    # 0.01 a minute would space batches 100 minutes apart: a run that never ends, not a pace.
    ({"requests_per_minute": 0.5},
     "extra 'requests_per_minute' (Requests per minute) must be at least 1, or 0 for off"),
    ({"max_in_flight": 0}, "extra 'max_in_flight' (Batches in flight) must be at least 1"),
    ({"max_in_flight": 2.5}, "extra 'max_in_flight' (Batches in flight) must be a whole number"),
    ({"max_attempts": True}, "extra 'max_attempts' (Attempts per batch) must be a whole number"),
    ({"timeout_seconds": "nan"}, "extra 'timeout_seconds' (Request timeout (s)) must be a number"),
    ({"duplicate_pattern": "(unclosed"},
     "extra 'duplicate_pattern' (Duplicate pattern (regex)) is not a valid"),
])
def test_a_bad_extra_is_refused_naming_the_connection_and_the_extra_but_not_the_value(extra, problem):
    with pytest.raises(InvalidExtra) as caught:
        parse_extras("synap_eu", extra)
    assert str(caught.value).startswith(f"Synap connection 'synap_eu': {problem}")
    assert "fast" not in str(caught.value) and "unclosed" not in str(caught.value)


@pytest.mark.parametrize("body, refused", [
    ({"connection_id": "s", "conn_type": "synap", "extra": '{"requests_per_minute": "fast"}'},
     "Synap connection 's': extra 'requests_per_minute'"),
    ({"connection_id": "s", "conn_type": "synap", "extra": '{"requests_per_minute": 60}'}, None),
    ({"connection_id": "s", "conn_type": "synap", "extra": '{"requests_per_minute": 0.2}'},
     "Synap connection 's': extra 'requests_per_minute' (Requests per minute) must be at least 1,"
     " or 0 for off"),
    ({"connection_id": "s", "conn_type": "synap", "extra": "not json"}, "the extra is not valid JSON"),
    ({"connection_id": "p", "conn_type": "postgres", "extra": '{"requests_per_minute": "fast"}'}, None),
    ({"actions": [{"action": "create", "entities": [
        {"connection_id": "ok", "conn_type": "synap", "extra": "{}"},
        {"connection_id": "bad", "conn_type": "synap", "extra": '{"max_in_flight": 0}'}]}]},
     "Synap connection 'bad': extra 'max_in_flight'"),
])
def test_the_api_refuses_saving_a_synap_connection_whose_extra_the_hook_would_refuse(body, refused):
    problem = refusal(json.dumps(body).encode())
    assert (problem is None) if refused is None else problem.startswith(refused) or refused in problem


def test_the_hook_refuses_a_bad_extra_before_building_a_client(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_BAD", json.dumps(
        {"conn_type": "synap", "host": "http://127.0.0.1:1", "password": "k",
         "extra": {"max_attempts": "many"}}))
    ok, message = SynapHook(synap_conn_id="synap_bad").test_connection()
    assert not ok
    assert "Synap connection 'synap_bad': extra 'max_attempts'" in message


def test_the_test_buttons_message_is_scrubbed_of_quoted_values_and_cut_to_one_line():
    from synap_provider.hooks import describe_failure

    echoed = ValueError('invalid input syntax for type integer: "Marker-Lark 12 Main St"\n'
                        "DETAIL: the whole row 'Marker-Lark 12 Main St' follows")
    message = describe_failure(echoed)
    assert message == "ValueError: invalid input syntax for type integer: '…'"
    assert "Marker" not in message
