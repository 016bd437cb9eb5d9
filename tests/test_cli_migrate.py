"""``zeh-mssql migrate``: --print without a database, one clear line when it cannot work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.cli_output import one_error_line
from tests.unreachable import PASSWORD, down_dsn
from zeh_mssql.cli import main
from zeh_mssql.migrate import load_migrations, render_script


@pytest.fixture
def run(monkeypatch):
    monkeypatch.delenv("ZEH_MSSQL_DSN", raising=False)

    def invoke(*args: str, env: dict[str, str] | None = None):
        return CliRunner().invoke(main, ["migrate", *args], env=env)

    return invoke


def test_print_writes_the_script_without_a_database(run):
    result = run("--print")
    assert result.exit_code == 0, result.output
    assert result.stdout == render_script(load_migrations())
    assert result.stderr == ""


def test_print_ignores_an_unreachable_dsn(run):
    result = run("--print", "--dsn", down_dsn())
    assert result.exit_code == 0, result.output
    assert result.stdout == render_script()


def test_a_missing_dsn_is_one_line(run):
    line = one_error_line(run())
    assert line == (
        "Error: no database given: pass --dsn or set ZEH_MSSQL_DSN (or --print for the SQL)"
    )


def test_a_blank_dsn_counts_as_missing(run):
    assert "no database given" in one_error_line(run(env={"ZEH_MSSQL_DSN": "  "}))


def test_an_unreachable_database_is_one_line_without_the_password(run):
    dsn = down_dsn()
    for result in (
        run("--dsn", dsn, "--login-timeout", "2"),
        run("--login-timeout", "2", env={"ZEH_MSSQL_DSN": dsn}),
    ):
        line = one_error_line(result)
        assert line.startswith("Error: cannot reach the database: ")
        assert PASSWORD not in result.output


@pytest.mark.parametrize("option", [("--login-timeout", "0"), ("--lock-timeout", "-1")])
def test_timeouts_are_checked(run, option):
    result = run("--dsn", down_dsn(), *option)
    assert result.exit_code == 2
    assert option[0] in result.output


def test_the_installed_command_prints_no_traceback():
    # The real entry point in a real process: exit status and stderr as a user sees them.
    command = Path(sys.executable).with_name("zeh-mssql")
    completed = subprocess.run(
        [str(command), "migrate", "--login-timeout", "2"],
        env={"ZEH_MSSQL_DSN": down_dsn(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    assert completed.stdout == ""
    assert completed.stderr.startswith("Error: cannot reach the database: ")
    assert completed.stderr.count("\n") == 1
    assert PASSWORD not in completed.stderr
