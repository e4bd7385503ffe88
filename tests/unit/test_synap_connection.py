import pytest

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
    behaviour = SynapHook.get_ui_field_behaviour()
    assert behaviour["relabeling"]["password"] == "API key"
