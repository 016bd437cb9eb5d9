"""Configuration from ZEH_MSSQL_* variables: defaults, parsing, and errors naming the variable."""

from __future__ import annotations

import logging

import pytest

from zeh_mssql.config import Config, ConfigError

DSN = "DRIVER={FreeTDS};SERVER=db;UID=reader;PWD=hunter2"


def test_defaults_with_only_the_dsn():
    config = Config.from_env({"ZEH_MSSQL_DSN": DSN})
    assert config.dsn == DSN
    assert config.replica_dsn is None
    assert config.feeds is None
    assert config.path_template == "/{feed}/feed/v1"
    assert (config.default_page_size, config.max_page_size) == (1000, 10000)
    assert config.tokens == frozenset()
    assert (config.login_timeout, config.query_timeout, config.pool_size) == (5, 30, 8)
    assert config.log_level_number == logging.INFO
    assert config.feed_path("orders") == "/orders/feed/v1"


def test_every_variable_is_read():
    config = Config.from_env(
        {
            "ZEH_MSSQL_DSN": DSN,
            "ZEH_MSSQL_REPLICA_DSN": DSN + ";ApplicationIntent=ReadOnly",
            "ZEH_MSSQL_FEEDS": " orders, payments ,orders,",
            "ZEH_MSSQL_PATH_TEMPLATE": "/feeds/{feed}/v1",
            "ZEH_MSSQL_DEFAULT_PAGE_SIZE": "100",
            "ZEH_MSSQL_MAX_PAGE_SIZE": "500",
            "ZEH_MSSQL_TOKENS": "alpha, beta",
            "ZEH_MSSQL_LOGIN_TIMEOUT": "2",
            "ZEH_MSSQL_QUERY_TIMEOUT": "9",
            "ZEH_MSSQL_POOL_SIZE": "3",
            "ZEH_MSSQL_LOG_LEVEL": "debug",
        }
    )
    assert config.replica_dsn == DSN + ";ApplicationIntent=ReadOnly"
    assert config.feeds == ("orders", "payments")
    assert config.feed_path("orders") == "/feeds/orders/v1"
    assert (config.default_page_size, config.max_page_size) == (100, 500)
    assert config.tokens == {"alpha", "beta"}
    assert (config.login_timeout, config.query_timeout, config.pool_size) == (2, 9, 3)
    assert config.log_level_number == logging.DEBUG


def test_tokens_from_a_file_skip_blank_lines_and_comments(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# consumers\nalpha\n\n  beta  \n")
    config = Config.from_env({"ZEH_MSSQL_DSN": DSN, "ZEH_MSSQL_TOKENS_FILE": str(path)})
    assert config.tokens == {"alpha", "beta"}


def test_secrets_stay_out_of_repr():
    config = Config.from_env(
        {"ZEH_MSSQL_DSN": DSN, "ZEH_MSSQL_REPLICA_DSN": DSN, "ZEH_MSSQL_TOKENS": "tok-123"}
    )
    text = repr(config)
    assert "hunter2" not in text
    assert "tok-123" not in text
    assert "path_template" in text


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({"ZEH_MSSQL_DSN": ""}, "ZEH_MSSQL_DSN", "not set"),
        ({"ZEH_MSSQL_DSN": "  "}, "ZEH_MSSQL_DSN", "not set"),
        ({"ZEH_MSSQL_POOL_SIZE": "many"}, "ZEH_MSSQL_POOL_SIZE", "integer"),
        ({"ZEH_MSSQL_POOL_SIZE": "0"}, "ZEH_MSSQL_POOL_SIZE", "at least 1"),
        ({"ZEH_MSSQL_LOGIN_TIMEOUT": "-1"}, "ZEH_MSSQL_LOGIN_TIMEOUT", "at least 1"),
        ({"ZEH_MSSQL_QUERY_TIMEOUT": "1.5"}, "ZEH_MSSQL_QUERY_TIMEOUT", "integer"),
        ({"ZEH_MSSQL_MAX_PAGE_SIZE": "10"}, "ZEH_MSSQL_DEFAULT_PAGE_SIZE", "between 1"),
        ({"ZEH_MSSQL_DEFAULT_PAGE_SIZE": "x"}, "ZEH_MSSQL_DEFAULT_PAGE_SIZE", "integer"),
        ({"ZEH_MSSQL_PATH_TEMPLATE": "feed/{feed}"}, "ZEH_MSSQL_PATH_TEMPLATE", "start with"),
        ({"ZEH_MSSQL_PATH_TEMPLATE": "/feed/v1"}, "ZEH_MSSQL_PATH_TEMPLATE", "exactly once"),
        ({"ZEH_MSSQL_PATH_TEMPLATE": "/{feed}/{feed}"}, "ZEH_MSSQL_PATH_TEMPLATE", "exactly"),
        ({"ZEH_MSSQL_PATH_TEMPLATE": "/x{feed}/v1"}, "ZEH_MSSQL_PATH_TEMPLATE", "segment"),
        ({"ZEH_MSSQL_PATH_TEMPLATE": "/<a>/{feed}"}, "ZEH_MSSQL_PATH_TEMPLATE", "only letters"),
        ({"ZEH_MSSQL_PATH_TEMPLATE": "/a//{feed}"}, "ZEH_MSSQL_PATH_TEMPLATE", "only letters"),
        ({"ZEH_MSSQL_FEEDS": " , "}, "ZEH_MSSQL_FEEDS", "no names"),
        ({"ZEH_MSSQL_FEEDS": "ok,not ok"}, "ZEH_MSSQL_FEEDS", "not a servable feed name"),
        ({"ZEH_MSSQL_LOG_LEVEL": "loud"}, "ZEH_MSSQL_LOG_LEVEL", "expected one of"),
        (
            {"ZEH_MSSQL_TOKENS": "a", "ZEH_MSSQL_TOKENS_FILE": "/x"},
            "ZEH_MSSQL_TOKENS_FILE",
            "not both",
        ),
        ({"ZEH_MSSQL_TOKENS_FILE": "/nonexistent/tokens"}, "ZEH_MSSQL_TOKENS_FILE", "cannot read"),
    ],
)
def test_errors_name_the_variable(env, variable, fragment):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"ZEH_MSSQL_DSN": DSN, **env})
    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert fragment in message
    assert "hunter2" not in message


def test_an_empty_tokens_file_is_an_error(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# nobody yet\n\n")
    with pytest.raises(ConfigError, match=r"^ZEH_MSSQL_TOKENS_FILE: .* holds no tokens"):
        Config.from_env({"ZEH_MSSQL_DSN": DSN, "ZEH_MSSQL_TOKENS_FILE": str(path)})


def test_a_missing_dsn_is_an_error():
    with pytest.raises(ConfigError, match=r"^ZEH_MSSQL_DSN: not set"):
        Config.from_env({"ZEH_MSSQL_FEEDS": "orders"})


def test_the_process_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("ZEH_MSSQL_DSN", DSN)
    monkeypatch.setenv("ZEH_MSSQL_FEEDS", "orders")
    assert Config.from_env().feeds == ("orders",)
