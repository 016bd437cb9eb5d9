"""The migration runner against SQL Server: once each, refusals, atomicity, concurrency."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyodbc
import pytest

from tests.integration.feedsql import connect, wait_until
from zeh_mssql.migrate import (
    LOCK_RESOURCE,
    Migration,
    MigrationError,
    load_migrations,
    migrate,
    render_script,
    split_batches,
)

PROCEDURES = ("create_feed", "list_feeds", "publish", "publish_batch", "read_feed", "head")


def log_rows(dsn: str) -> list[tuple[int, str, bytes]]:
    with contextlib.closing(connect(dsn)) as conn:
        rows = conn.execute(
            "select version, name, checksum from changefeed.migration_log order by version"
        ).fetchall()
    return [(r.version, r.name, bytes(r.checksum)) for r in rows]


def expected_log(migrations: list[Migration]) -> list[tuple[int, str, bytes]]:
    return [(m.version, m.name, m.checksum) for m in migrations]


def scalar(dsn: str, sql: str, *params: object) -> object:
    with contextlib.closing(connect(dsn)) as conn:
        return conn.execute(sql, *params).fetchone()[0]


def test_applies_every_file_in_order_and_records_it(database):
    lines: list[str] = []
    applied = migrate(database.dsn, echo=lines.append)
    files = load_migrations()
    assert [m.name for m in applied] == [m.name for m in files]
    assert log_rows(database.dsn) == expected_log(files)
    assert [line for line in lines if line.startswith("applying ")] == [
        f"applying {m.name}" for m in files
    ]
    assert lines[-1].startswith(f"applied {len(files)} migration")
    assert (
        scalar(
            database.dsn, "select count(*) from changefeed.migration_log where applied_at is null"
        )
        == 0
    )
    for name in PROCEDURES:
        assert scalar(database.dsn, "select object_id(?, 'P')", f"changefeed.{name}"), name


def test_second_run_is_a_no_op(migrated_db):
    before = scalar(migrated_db.dsn, "select max(applied_at) from changefeed.migration_log")
    lines: list[str] = []
    assert migrate(migrated_db.dsn, echo=lines.append) == []
    assert lines == [
        f"nothing to apply: the database is at migration {load_migrations()[-1].version:04d}"
    ]
    assert log_rows(migrated_db.dsn) == expected_log(load_migrations())
    assert scalar(migrated_db.dsn, "select max(applied_at) from changefeed.migration_log") == before


def test_an_edited_applied_file_is_refused(migrated_db):
    files = load_migrations()
    edited = Migration.from_text(files[0].name, files[0].sql + "\n-- an innocent comment\n")
    with pytest.raises(MigrationError, match=f"{files[0].name} was changed after it was applied"):
        migrate(migrated_db.dsn, migrations=[edited, *files[1:]], echo=lambda _: None)
    assert log_rows(migrated_db.dsn) == expected_log(files)


def test_an_applied_file_missing_is_refused(migrated_db):
    files = load_migrations()
    with pytest.raises(MigrationError, match="missing from this zeh-mssql's files"):
        migrate(migrated_db.dsn, migrations=files[:-1], echo=lambda _: None)


def test_a_new_migration_is_applied_alone(migrated_db):
    files = load_migrations()
    extra = Migration.from_text("9000_extra.sql", "create table dbo.extra (a int);\nGO\n")
    lines: list[str] = []
    assert migrate(migrated_db.dsn, migrations=[*files, extra], echo=lines.append) == [extra]
    assert lines[0] == "applying 9000_extra.sql"
    assert log_rows(migrated_db.dsn) == expected_log([*files, extra])
    assert scalar(migrated_db.dsn, "select object_id('dbo.extra', 'U')") is not None


def test_a_repeat_count_runs_the_batch_that_often(migrated_db):
    extra = Migration.from_text(
        "9000_repeat.sql",
        "create table dbo.counter (n int not null);\nGO\n"
        "insert into dbo.counter (n) values (1);\ngo 3\n",
    )
    migrate(migrated_db.dsn, migrations=[*load_migrations(), extra], echo=lambda _: None)
    assert scalar(migrated_db.dsn, "select count(*) from dbo.counter") == 3


@pytest.mark.parametrize(
    ("second_batch", "error"),
    [
        # Invalid object name: a compile error, which XACT_ABORT does not roll back.
        ("select * from dbo.no_such_table;", 208),
        # Divide by zero in the batch's second statement: it surfaces only when the
        # runner moves past the first statement's result set.
        ("select 1 as one;\nselect 1 / 0 as boom;", 8134),
    ],
)
def test_a_failing_batch_leaves_nothing_of_its_file(migrated_db, second_batch, error):
    files = load_migrations()
    bad = Migration.from_text(
        "9000_bad.sql",
        f"create table dbo.half_done (a int);\ninsert into dbo.half_done values (1);\n"
        f"GO\n{second_batch}\nGO\n",
    )
    with pytest.raises(MigrationError) as caught:
        migrate(migrated_db.dsn, migrations=[*files, bad], echo=lambda _: None)
    message = str(caught.value)
    assert message.startswith("9000_bad.sql, batch 2 (line 4) failed: ")
    assert f"(error {error})" in message
    assert "nothing of it was applied" in message
    assert scalar(migrated_db.dsn, "select object_id('dbo.half_done', 'U')") is None
    assert log_rows(migrated_db.dsn) == expected_log(files)
    # The lock went with the failed run: the next one is not kept waiting.
    assert migrate(migrated_db.dsn, migrations=files, echo=lambda _: None) == []


def test_statements_refused_in_a_transaction_need_the_no_transaction_header(migrated_db):
    files = load_migrations()
    sql = "alter database current set allow_snapshot_isolation on;\nGO\n"
    with pytest.raises(MigrationError, match=r"\(error 226\)"):
        migrate(
            migrated_db.dsn,
            migrations=[*files, Migration.from_text("9000_snapshot.sql", sql)],
            echo=lambda _: None,
        )
    header = Migration.from_text("9000_snapshot.sql", "-- zeh-mssql: no-transaction\n" + sql)
    assert migrate(migrated_db.dsn, migrations=[*files, header], echo=lambda _: None) == [header]
    state = "select snapshot_isolation_state from sys.databases where name = db_name()"
    assert scalar(migrated_db.dsn, state) == 1
    assert log_rows(migrated_db.dsn)[-1] == (9000, "9000_snapshot.sql", header.checksum)


def hold_migration_lock(dsn: str):
    """A session holding the runner's lock, as a run in progress would."""
    conn = connect(dsn)
    status = conn.execute(
        "declare @s int; exec @s = sys.sp_getapplock @Resource = ?, @LockMode = 'Exclusive',"
        " @LockOwner = 'Session', @LockTimeout = 0; select @s;",
        LOCK_RESOURCE,
    ).fetchone()[0]
    assert status == 0
    return conn


def test_a_run_waits_for_the_lock_and_gives_up_after_its_timeout(database):
    holder = hold_migration_lock(database.dsn)
    try:
        lines: list[str] = []
        with pytest.raises(MigrationError, match="timed out"):
            migrate(database.dsn, echo=lines.append, lock_timeout=1)
        assert lines == ["waiting up to 1 s for another migration run to finish"]
    finally:
        holder.close()
    assert scalar(database.dsn, "select object_id('changefeed.migration_log', 'U')") is None


def test_two_concurrent_runs_apply_each_file_once(database):
    files = load_migrations()
    results: dict[str, list[Migration]] = {}
    errors: list[BaseException] = []
    waiting = {name: threading.Event() for name in ("a", "b")}

    def run(name: str) -> None:
        def echo(line: str) -> None:
            if line.startswith("waiting"):
                waiting[name].set()

        try:
            results[name] = migrate(database.dsn, echo=echo)
        except BaseException as exc:
            errors.append(exc)

    # Both runs start while the lock is taken, so both must wait, then go one by one.
    holder = hold_migration_lock(database.dsn)
    threads = [threading.Thread(target=run, args=(name,)) for name in waiting]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: all(e.is_set() for e in waiting.values()), "both runs to wait")
    finally:
        holder.close()
    for thread in threads:
        thread.join(timeout=300)
        assert not thread.is_alive()
    assert errors == []
    assert sorted(len(applied) for applied in results.values()) == [0, len(files)]
    assert log_rows(database.dsn) == expected_log(files)


def test_two_migrate_processes_at_once(database):
    """The command line, twice at the same moment: one applies, the other finds it done."""
    command = Path(sys.executable).with_name("zeh-mssql")
    env = {**os.environ, "ZEH_MSSQL_DSN": database.dsn}
    holder = hold_migration_lock(database.dsn)
    try:
        processes = [
            subprocess.Popen(
                [str(command), "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]

        def both_waiting() -> bool:
            rows = scalar(
                database.dsn,
                "select count(*) from sys.dm_tran_locks"
                " where resource_type = 'APPLICATION' and request_status = 'WAIT'"
                " and resource_database_id = db_id()",
            )
            return rows == 2

        wait_until(both_waiting, "both processes to wait for the lock")
    finally:
        holder.close()
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    last_lines = sorted(out.splitlines()[-1] for out, _ in outputs)
    assert last_lines[0].startswith(f"applied {len(load_migrations())} migration")
    assert last_lines[1].startswith("nothing to apply")
    assert log_rows(database.dsn) == expected_log(load_migrations())


def run_like_sqlcmd(dsn: str, script: str) -> None:
    """Run a --print script as sqlcmd -b would: its commands, variables, GO, stop at errors."""
    variables: dict[str, str] = {}
    lines = []
    for line in script.splitlines():
        command = line.strip().lower()
        if command.startswith(":setvar"):
            _, name, value = line.split(maxsplit=2)
            variables[name] = value.strip('"')
        elif command.startswith(":on error exit"):
            pass  # the loop below stops at the first error anyway
        else:
            lines.append(line)
    text = "\n".join(lines)
    for name, value in variables.items():
        text = text.replace(f"$({name})", value)
    with contextlib.closing(connect(dsn)) as conn:
        cursor = conn.cursor()
        for batch in split_batches(text):
            for _ in range(batch.repeat):
                cursor.execute(batch.sql)
                while cursor.nextset():
                    pass


def test_the_printed_script_migrates_and_then_does_nothing(database):
    script = render_script()
    run_like_sqlcmd(database.dsn, script)
    assert log_rows(database.dsn) == expected_log(load_migrations())
    first = scalar(database.dsn, "select max(applied_at) from changefeed.migration_log")
    run_like_sqlcmd(database.dsn, script)  # skipped file by file: NOEXEC
    assert scalar(database.dsn, "select max(applied_at) from changefeed.migration_log") == first
    # The runner accepts what the script recorded.
    assert migrate(database.dsn, echo=lambda _: None) == []


def test_the_printed_script_continues_after_the_runner(migrated_db):
    files = load_migrations()
    extra = Migration.from_text("9000_extra.sql", "create table dbo.extra (a int);\n")
    run_like_sqlcmd(migrated_db.dsn, render_script([*files, extra]))
    assert log_rows(migrated_db.dsn) == expected_log([*files, extra])


def test_the_printed_script_refuses_an_edited_file(migrated_db):
    files = load_migrations()
    edited = Migration.from_text(files[-1].name, files[-1].sql + "\n-- edited\n")
    with pytest.raises(pyodbc.Error, match=r"differs from the migration applied"):
        run_like_sqlcmd(migrated_db.dsn, render_script([*files[:-1], edited]))
    assert log_rows(migrated_db.dsn) == expected_log(files)
