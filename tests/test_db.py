"""Classifying pyodbc errors and keeping secrets out of messages (no database needed)."""

from __future__ import annotations

import pyodbc
import pytest

from zeh_mssql.db import (
    error_number,
    is_deadlock,
    is_unavailable,
    redact_dsn,
    server_message,
    sqlstate,
)


def odbc_error(kind: type[pyodbc.Error], state: str, text: str) -> pyodbc.Error:
    return kind(state, f"[{state}] [FreeTDS][SQL Server]{text}")


def test_error_number_is_the_one_pyodbc_appends():
    exc = odbc_error(
        pyodbc.ProgrammingError,
        "42000",
        'changefeed.publish: unknown feed "x(12345)" (51001) (SQLExecDirectW)',
    )
    assert error_number(exc) == 51001
    assert server_message(exc) == 'changefeed.publish: unknown feed "x(12345)"'
    assert sqlstate(exc) == "42000"


def test_error_number_of_several_records_is_the_first_ones():
    exc = odbc_error(
        pyodbc.ProgrammingError,
        "42000",
        "first (50001) (SQLExecDirectW); [42000] second (50002) (SQLExecDirectW)",
    )
    assert error_number(exc) == 50001


def test_no_error_number():
    assert error_number(ValueError("plain")) is None
    assert error_number(odbc_error(pyodbc.Error, "HY000", "no number here")) is None


def test_deadlock_victim_by_state_or_number():
    victim = odbc_error(
        pyodbc.Error,
        "40001",
        "Transaction (Process ID 57) was deadlocked on lock resources (1205) (SQLExecDirectW)",
    )
    assert is_deadlock(victim)
    assert not is_deadlock(odbc_error(pyodbc.Error, "42000", "other (50000) (SQLExecDirectW)"))


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        (odbc_error(pyodbc.OperationalError, "HYT00", "Login timeout expired"), True),
        (odbc_error(pyodbc.Error, "08S01", "Communication link failure"), True),
        (odbc_error(pyodbc.Error, "08001", "Unable to connect"), True),
        (odbc_error(pyodbc.ProgrammingError, "42000", "bad (51001) (SQLExecDirectW)"), False),
        (ValueError("not odbc"), False),
    ],
)
def test_unavailable_means_the_link_not_the_query(exc, unavailable):
    assert is_unavailable(exc) is unavailable


@pytest.mark.parametrize(
    "dsn",
    [
        "DRIVER={FreeTDS};SERVER=db;UID=sa;PWD=s3cret;",
        "Driver={FreeTDS};Server=db;Uid=sa;Password={s3;c}}ret};Database=x",
        "pwd = s3cret",
    ],
)
def test_redact_dsn_hides_the_password(dsn):
    redacted = redact_dsn(dsn)
    assert "s3" not in redacted
    assert "***" in redacted
