"""The create-feed, publish and serve commands: one clear line when they cannot work."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.cli_output import one_error_line
from tests.unreachable import PASSWORD, down_dsn
from zeh_mssql.cli import main


@pytest.fixture
def run(monkeypatch):
    monkeypatch.delenv("ZEH_MSSQL_DSN", raising=False)

    def invoke(*args: str, env: dict[str, str] | None = None, stdin: str | None = None):
        return CliRunner().invoke(main, list(args), env=env, input=stdin)

    return invoke


@pytest.mark.parametrize(
    "args",
    [
        ("create-feed", "orders", "--partitions", "4"),
        ("publish", "orders", "--partition", "0", "{}"),
        ("serve",),
    ],
)
def test_a_missing_dsn_is_one_line(run, args):
    line = one_error_line(run(*args))
    assert line == "Error: no database given: pass --dsn or set ZEH_MSSQL_DSN"


@pytest.mark.parametrize(
    "args",
    [
        ("create-feed", "orders", "--partitions", "4", "--mode", "blocking"),
        ("publish", "orders", "--partition-key", "customer-1", "--type", "Created", '{"a": 1}'),
        ("publish", "orders", "--partition", "2", "--header", "trace=abc", "[1, 2]"),
    ],
)
def test_an_unreachable_database_is_one_line_without_the_password(run, args):
    dsn = down_dsn()
    for result in (run(*args, "--dsn", dsn), run(*args, env={"ZEH_MSSQL_DSN": dsn})):
        line = one_error_line(result)
        assert line.startswith("Error: cannot reach the database: ")
        assert PASSWORD not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("orders", "{}"), "give exactly one of --partition and --partition-key"),
        (
            ("orders", "--partition", "1", "--partition-key", "k", "{}"),
            "give exactly one of --partition and --partition-key",
        ),
        (("orders", "--partition", "1", "{not json"), "DATA is not valid JSON"),
        (("orders", "--partition", "1", "--header", "novalue", "{}"), "expected NAME=VALUE"),
        (("orders", "--partition", "1", "--header", "=v", "{}"), "expected NAME=VALUE"),
    ],
)
def test_publish_checks_its_arguments_before_connecting(run, args, message):
    # The DSN would fail to connect; these errors come first, without a round trip.
    line = one_error_line(run("publish", *args, "--dsn", down_dsn()))
    assert message in line


def test_publish_reads_data_from_stdin(run):
    result = run("publish", "orders", "--partition", "0", "-", "--dsn", down_dsn(), stdin="{x")
    assert "DATA is not valid JSON" in one_error_line(result)


def test_create_feed_validates_partitions_and_mode(run):
    result = run("create-feed", "orders", "--partitions", "0", "--dsn", down_dsn())
    assert result.exit_code == 2
    result = run("create-feed", "orders", "--partitions", "2", "--mode", "eager")
    assert result.exit_code == 2


def test_serve_reports_a_bad_setting_in_one_line(run):
    result = run("serve", env={"ZEH_MSSQL_DSN": down_dsn(), "ZEH_MSSQL_POOL_SIZE": "lots"})
    line = one_error_line(result)
    assert line == "Error: ZEH_MSSQL_POOL_SIZE: expected an integer, got 'lots'"
