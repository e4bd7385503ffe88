import pytest

from synap_backfill.common.config import BackfillConfig, ParamError, config_from_params


def test_defaults_follow_the_vendor_recipe_but_fill_each_call():
    config = config_from_params({})
    assert config.source_table == "conversations"
    assert config.columns.created_at == "created_at"
    assert (config.batch_size, config.mode, config.window_size) == (100, "long-range", "P1D")
    assert config.source_timezone == "UTC"


@pytest.mark.parametrize("params, param", [
    ({"batch_size": 500}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"mode": "turbo"}, "mode"),
    ({"start": "2024-03-02T00:00:00Z", "end": "2024-03-01T00:00:00Z"}, "end"),
    ({"start": "2024-03-01T00:00:00Z"}, "end"),
    ({"start": "yesterday", "end": "2024-03-01T00:00:00Z"}, "start"),
    ({"source_table": "conversations; DROP TABLE users"}, "source_table"),
    ({"source_table": "a.b.c"}, "source_table"),
    ({"user_text_column": 'user_text" --'}, "user_text_column"),
    ({"source_timezone": "Mars/Olympus"}, "source_timezone"),
    ({"window_size": "1 day"}, "window_size"),
    ({"window_size": "PT10S"}, "window_size"),
    ({"synap_conn_id": ""}, "synap_conn_id"),
])
def test_a_bad_param_is_refused_with_its_name(params, param):
    with pytest.raises(ParamError) as info:
        config_from_params(params)
    assert info.value.param == param
    assert repr(param) in str(info.value)


def test_a_schema_qualified_table_is_accepted():
    assert config_from_params({"source_table": "app.conversations"}).source_table == "app.conversations"


def test_the_config_survives_the_round_trip_through_xcom():
    config = config_from_params({"start": "2024-03-01", "end": "2024-03-05T12:00:00+02:00",
                                 "batch_size": 100, "user_id_column": "uid"})
    assert BackfillConfig.from_dict(config.to_dict()) == config
