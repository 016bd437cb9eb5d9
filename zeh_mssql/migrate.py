"""Apply the package's ``sql/`` migrations to a database, each exactly once.

Migrations are the files ``NNNN_name.sql`` shipped with the package, applied in
version order. Each is recorded in ``changefeed.migration_log`` (version, name,
SHA-256 checksum, time; the table is created by the first migration, so no table
means nothing applied). A run refuses to start when an applied file was edited or
is missing, because the database would no longer match what the files describe.

Concurrent runs are serialized by a session-owned application lock in the target
database: the second run waits, then finds everything applied. Each file runs in
one transaction together with its log row, so a failing batch leaves nothing of
that file behind. A file whose first lines hold the comment
``-- zeh-mssql: no-transaction`` runs batch by batch outside a transaction instead,
for the few statements T-SQL refuses inside one (``ALTER DATABASE`` and the like).

Batches are split on ``GO`` lines the way sqlcmd does (see ``split_batches``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import itertools
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TextIO

import pyodbc

from zeh_mssql import db

LOG_TABLE = "changefeed.migration_log"
LOCK_RESOURCE = "zeh_mssql.migrate"
"""The application lock (in the target database) that serializes migration runs."""
NO_TRANSACTION = "-- zeh-mssql: no-transaction"
DEFAULT_LOCK_TIMEOUT_S = 600.0

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<label>[A-Za-z0-9_]+)\.sql$")
# GO, optionally a repeat count, then nothing but whitespace or comments on its line.
_GO = re.compile(r"[ \t]*go(?:[ \t]+(?P<count>\d+))?(?=[ \t\r]*(?:--|/\*|\n|$))", re.IGNORECASE)
_QUOTES = {"'": "'", '"': '"', "[": "]"}
_QUOTE_NAMES = {"'": "string literal", '"': "quoted identifier", "[": "bracketed identifier"}

Echo = Callable[[str], None]


class MigrationError(Exception):
    """Migrations cannot be applied; the message says which file and why."""


class SplitError(MigrationError):
    """A migration's text cannot be split into batches."""


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch of a migration, sent to the server as a whole ``repeat`` times."""

    sql: str
    line: int
    """The line of the file that ``sql`` starts on (1-based)."""
    repeat: int = 1


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its text and the identity recorded when it is applied."""

    version: int
    name: str
    """The file name, e.g. ``0001_changefeed.sql``."""
    sql: str
    """The file's text with ``\\n`` line endings."""
    checksum: bytes = field(repr=False)
    """SHA-256 of ``sql`` as UTF-8."""

    @classmethod
    def from_text(cls, name: str, text: str) -> Migration:
        """A migration from a file name (``NNNN_name.sql``) and its text."""
        match = _FILE_NAME.match(name)
        if match is None:
            raise MigrationError(f"{name}: migration file names look like 0001_name.sql")
        version = int(match["version"])
        if version < 1:
            raise MigrationError(f"{name}: migration versions start at 0001")
        # Normalized so that a checkout with CRLF line endings (or a BOM) is not
        # mistaken for an edited file: the checksum covers what the SQL says.
        sql = text.removeprefix("\ufeff").replace("\r\n", "\n")
        checksum = hashlib.sha256(sql.encode("utf-8")).digest()
        return cls(version=version, name=name, sql=sql, checksum=checksum)

    @property
    def batches(self) -> list[Batch]:
        """The file's batches, split on ``GO`` lines."""
        try:
            return split_batches(self.sql)
        except SplitError as exc:
            raise SplitError(f"{self.name}: {exc}") from None

    @property
    def transactional(self) -> bool:
        """False when the file's header comment opts out of the one-transaction rule."""
        for line in self.sql.splitlines():
            stripped = line.strip()
            if not stripped:
                continue
            if not stripped.startswith("--"):
                return True
            if stripped.lower() == NO_TRANSACTION:
                return False
        return True


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """A row of ``changefeed.migration_log``."""

    version: int
    name: str
    checksum: bytes


def split_batches(sql: str) -> list[Batch]:
    """Split T-SQL into batches on ``GO`` lines, as sqlcmd does.

    A separator is a line holding only ``GO`` (any case), optionally a positive
    repeat count (``GO 3`` runs the batch three times) and comments, with any
    whitespace around them. ``GO`` inside a string literal, a quoted identifier
    (``[..]`` or ``".."``), a ``--`` comment or a (nested) ``/* */`` comment is not
    a separator. Batches holding nothing but whitespace and comments are dropped.
    Raises ``SplitError`` for an unterminated literal or comment, or ``GO 0``.
    """
    text = sql.replace("\r\n", "\n")
    batches: list[Batch] = []
    length = len(text)
    pos = 0
    line = 1
    start, start_line = 0, 1
    has_code = False
    at_line_start = True

    def finish(end: int, repeat: int) -> None:
        if has_code:
            batches.append(Batch(sql=text[start:end].rstrip(), line=start_line, repeat=repeat))

    while pos < length:
        if at_line_start:
            at_line_start = False
            separator = _match_go(text, pos)
            if separator is not None:
                line_end, count = separator
                if count < 1:
                    raise SplitError(f"line {line}: GO needs a positive repeat count, not {count}")
                finish(pos, count)
                pos = line_end + 1 if line_end < length else length
                line += 1
                start, start_line, has_code = pos, line, False
                at_line_start = True
                continue
        char = text[pos]
        if char == "\n":
            line += 1
            pos += 1
            at_line_start = True
        elif char.isspace():
            pos += 1
        elif text.startswith("--", pos):
            newline = text.find("\n", pos)
            pos = length if newline < 0 else newline
        elif text.startswith("/*", pos):
            end = _block_comment_end(text, pos)
            if end is None:
                raise SplitError(f"line {line}: comment /* is never closed")
            line += text.count("\n", pos, end)
            pos = end
        elif char in _QUOTES:
            has_code = True
            end = _quoted_end(text, pos, _QUOTES[char])
            if end is None:
                raise SplitError(f"line {line}: {_QUOTE_NAMES[char]} is never closed")
            line += text.count("\n", pos, end)
            pos = end
        else:
            has_code = True
            pos += 1
    finish(length, 1)
    return batches


def _match_go(text: str, pos: int) -> tuple[int, int] | None:
    """(end of line, repeat count) when the line at ``pos`` is a GO separator."""
    match = _GO.match(text, pos)
    if match is None:
        return None
    rest = match.end()
    line_end = text.find("\n", rest)
    if line_end < 0:
        line_end = len(text)
    # Only comments may follow; a block comment must close on the same line.
    while rest < line_end:
        if text[rest] in " \t\r":
            rest += 1
        elif text.startswith("--", rest):
            break
        elif text.startswith("/*", rest):
            end = _block_comment_end(text, rest)
            if end is None or end > line_end:
                return None
            rest = end
        else:
            return None
    count = match["count"]
    return line_end, int(count) if count is not None else 1


def _block_comment_end(text: str, pos: int) -> int | None:
    """The index after the ``*/`` closing the comment opened at ``pos`` (comments nest)."""
    depth = 0
    while pos < len(text):
        if text.startswith("/*", pos):
            depth += 1
            pos += 2
        elif text.startswith("*/", pos):
            depth -= 1
            pos += 2
            if depth == 0:
                return pos
        else:
            pos += 1
    return None


def _quoted_end(text: str, pos: int, close: str) -> int | None:
    """The index after the quote closing the one at ``pos``; a doubled quote escapes."""
    pos += 1
    while True:
        found = text.find(close, pos)
        if found < 0:
            return None
        if text.startswith(close * 2, found):
            pos = found + 2
            continue
        return found + 1


def sql_directory() -> Traversable:
    """Where the package's migrations are: inside the wheel, or the source tree's ``sql/``."""
    packaged = importlib.resources.files("zeh_mssql") / "sql"
    if packaged.is_dir():
        return packaged
    # An editable install maps zeh_mssql.sql onto ./sql without making it importable.
    return Path(__file__).resolve().parents[1] / "sql"


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Every ``*.sql`` file of ``directory`` (default: the package's) in version order."""
    folder = sql_directory() if directory is None else directory
    if not folder.is_dir():
        raise MigrationError(f"the migrations directory {folder} does not exist")
    migrations = [
        Migration.from_text(entry.name, entry.read_bytes().decode("utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql") and entry.is_file()
    ]
    migrations.sort(key=lambda m: m.version)
    for before, after in itertools.pairwise(migrations):
        if before.version == after.version:
            raise MigrationError(
                f"{before.name} and {after.name} have the same version {after.version:04d}"
            )
    return migrations


def pending_migrations(
    available: Sequence[Migration], applied: Iterable[AppliedMigration]
) -> list[Migration]:
    """The migrations still to apply, in order, after checking the applied ones.

    Raises ``MigrationError`` when an applied migration's file is missing, renamed
    or edited, or when a new file sorts before the last applied one.
    """
    by_version = {m.version: m for m in available}
    applied_versions: set[int] = set()
    for row in applied:
        applied_versions.add(row.version)
        migration = by_version.get(row.version)
        if migration is None:
            raise MigrationError(
                f"migration {row.version:04d} ({row.name}) is applied to the database but "
                "missing from this zeh-mssql's files; use the release that applied it, or newer"
            )
        if migration.name != row.name:
            raise MigrationError(
                f"migration {row.version:04d} was applied as {row.name} but the file is now "
                f"{migration.name}; applied migrations must not be renamed"
            )
        if migration.checksum != row.checksum:
            raise MigrationError(
                f"{migration.name} was changed after it was applied (checksum "
                f"{row.checksum.hex()[:16]} in the database, {migration.checksum.hex()[:16]} "
                "in the file); put changes in a new migration instead"
            )
    latest = max(applied_versions, default=0)
    pending = [m for m in available if m.version not in applied_versions]
    for migration in pending:
        if migration.version < latest:
            raise MigrationError(
                f"{migration.name} is not applied but sorts before the last applied migration "
                f"{latest:04d}; give it a version above {latest:04d}"
            )
    return pending


def _stdout(line: str) -> None:
    print(line, flush=True)


def migrate(
    dsn: str,
    *,
    migrations: Sequence[Migration] | None = None,
    echo: Echo = _stdout,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    login_timeout: int = 5,
) -> list[Migration]:
    """Connect to ``dsn`` and apply the pending migrations; returns those applied.

    ``echo`` receives one line per step. Raises ``MigrationError`` when the files
    and the database disagree, a batch fails or the lock is not granted within
    ``lock_timeout`` seconds, and ``pyodbc.Error`` when the database is unreachable.
    """
    todo = load_migrations() if migrations is None else list(migrations)
    connection = db.connect(dsn, autocommit=True, timeout=login_timeout)
    try:
        return apply_migrations(connection, todo, echo=echo, lock_timeout=lock_timeout)
    finally:
        connection.close()


def apply_migrations(
    connection: Any,
    migrations: Sequence[Migration],
    *,
    echo: Echo = _stdout,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> list[Migration]:
    """Apply the pending ``migrations`` over an open autocommit pyodbc connection."""
    cursor = connection.cursor()
    # XACT_ABORT: a run-time error rolls the file's transaction back at once
    # instead of letting later statements run on.
    cursor.execute("set xact_abort on; set nocount on;")
    _acquire_lock(cursor, echo, lock_timeout)
    try:
        pending = pending_migrations(migrations, _read_applied(cursor))
        if not pending:
            latest = max((m.version for m in migrations), default=0)
            echo(f"nothing to apply: the database is at migration {latest:04d}")
            return []
        for migration in pending:
            echo(f"applying {migration.name}")
            _apply(connection, migration)
        echo(
            f"applied {len(pending)} migration{'s' if len(pending) != 1 else ''}; "
            f"the database is at migration {pending[-1].version:04d}"
        )
        return pending
    finally:
        _release_lock(cursor)


def _acquire_lock(cursor: Any, echo: Echo, timeout: float) -> None:
    status = _getapplock(cursor, 0)
    if status == -1:
        echo(f"waiting up to {timeout:g} s for another migration run to finish")
        status = _getapplock(cursor, max(0, round(timeout * 1000)))
    if status < 0:
        reasons = {-1: "timed out", -2: "was cancelled", -3: "was chosen as a deadlock victim"}
        raise MigrationError(
            f"the migration lock {LOCK_RESOURCE!r} {reasons.get(status, f'failed ({status})')}; "
            "is another migration run stuck?"
        )


def _getapplock(cursor: Any, timeout_ms: int) -> int:
    # A session-owned lock outlives the per-file transactions and is released when
    # this session ends, even if the process dies.
    cursor.execute(
        "declare @status int;"
        " exec @status = sys.sp_getapplock @Resource = ?, @LockMode = 'Exclusive',"
        " @LockOwner = 'Session', @LockTimeout = ?;"
        " select @status;",
        LOCK_RESOURCE,
        timeout_ms,
    )
    row = cursor.fetchone()
    return int(row[0])


def _release_lock(cursor: Any) -> None:
    # When this fails the session is gone, and its lock with it.
    with contextlib.suppress(pyodbc.Error):
        cursor.execute(
            "exec sys.sp_releaseapplock @Resource = ?, @LockOwner = 'Session';", LOCK_RESOURCE
        )


def _read_applied(cursor: Any) -> list[AppliedMigration]:
    exists = cursor.execute("select object_id(?, 'U');", LOG_TABLE).fetchone()[0]
    if exists is None:
        return []
    rows = cursor.execute(f"select version, name, checksum from {LOG_TABLE} order by version;")
    return [AppliedMigration(int(v), str(n), bytes(c)) for v, n, c in rows.fetchall()]


def _apply(connection: Any, migration: Migration) -> None:
    transactional = migration.transactional
    cursor = connection.cursor()
    # An explicit transaction, not the driver's manual-commit mode: that one only
    # starts a transaction at certain statements (not EXEC, not ALTER DATABASE),
    # so whatever ran before the first of them would escape the rollback.
    if transactional:
        cursor.execute("begin transaction;")
    try:
        for number, batch in enumerate(migration.batches, start=1):
            for _ in range(batch.repeat):
                try:
                    _run(cursor, batch.sql)
                except pyodbc.Error as exc:
                    where = f"{migration.name}, batch {number} (line {batch.line})"
                    note = (
                        "nothing of it was applied"
                        if transactional or number == 1
                        else f"it has no transaction: batches 1 to {number - 1} stay applied"
                    )
                    raise MigrationError(f"{where} failed: {_describe(exc)}; {note}") from exc
        if transactional and cursor.execute("select @@trancount;").fetchone()[0] != 1:
            raise MigrationError(
                f"{migration.name} ended or opened a transaction of its own; "
                "migrations must leave transactions to the runner"
            )
        cursor.execute(
            f"insert into {LOG_TABLE} (version, name, checksum, applied_at)"
            " values (?, ?, ?, sysutcdatetime());",
            migration.version,
            migration.name,
            migration.checksum,
        )
        if transactional:
            cursor.execute("commit transaction;")
    except BaseException:
        if transactional:
            # XACT_ABORT may have rolled back already; a broken link rolls back on
            # the server by itself.
            with contextlib.suppress(pyodbc.Error):
                cursor.execute("if @@trancount > 0 rollback transaction;")
        raise


def _run(cursor: Any, sql: str) -> None:
    cursor.execute(sql)
    # An error in a later statement of the batch surfaces only when its result is reached.
    while cursor.nextset():
        pass


def _describe(exc: pyodbc.Error) -> str:
    number = db.error_number(exc)
    message = " ".join(db.server_message(exc).split())
    return f"{message} (error {number})" if number else message


def _literal(text: str) -> str:
    return "N'" + text.replace("'", "''") + "'"


def render_script(migrations: Sequence[Migration] | None = None) -> str:
    """The sqlcmd script that ``zeh-mssql migrate --print`` writes (see ``print_sql``)."""
    todo = load_migrations() if migrations is None else list(migrations)
    out: list[str] = [
        "-- zeh-mssql migrations, written by `zeh-mssql migrate --print`.",
        "-- Run it with sqlcmd against the target database (SSMS: in SQLCMD mode):",
        "--     sqlcmd -b -S <server> -d <database> -i <this file>",
        "-- Each migration runs once, in one transaction with its changefeed.migration_log",
        "-- row; migrations the log already records are skipped, edited ones refused.",
        ":on error exit",
        ':setvar zeh_sqlcmd_mode "on"',
        "GO",
        "-- Outside sqlcmd the lines above fail and the variable stays unexpanded: run nothing.",
        "IF N'$(zeh_sqlcmd_mode)' <> N'on'",
        "BEGIN",
        "    RAISERROR (N'Run this script with sqlcmd (or SSMS in SQLCMD mode).', 16, 1);",
        "    SET NOEXEC ON;",
        "END;",
        "GO",
        "SET XACT_ABORT ON;",
        "SET NOCOUNT ON;",
        "GO",
    ]
    for migration in todo:
        if "$(" in migration.sql:
            # sqlcmd would expand it as a scripting variable and change the SQL.
            raise MigrationError(f"{migration.name}: '$(' cannot be written for sqlcmd")
        version = str(migration.version)
        checksum = "0x" + migration.checksum.hex().upper()
        out += [
            "",
            f"-- {migration.name} (sha256 {migration.checksum.hex()})",
            f"IF OBJECT_ID(N'{LOG_TABLE}', N'U') IS NOT NULL",
            "BEGIN",
            f"    IF EXISTS (SELECT 1 FROM {LOG_TABLE} WHERE version = {version}"
            f" AND (checksum <> {checksum} OR name <> {_literal(migration.name)}))",
            "        THROW 50000, "
            + _literal(f"{migration.name} differs from the migration applied as {version}.")
            + ", 1;",
            f"    IF EXISTS (SELECT 1 FROM {LOG_TABLE} WHERE version = {version})",
            "        SET NOEXEC ON;",
            "END;",
            "GO",
        ]
        if migration.transactional:
            out += ["BEGIN TRANSACTION;", "GO"]
        for batch in migration.batches:
            out.append(batch.sql)
            out.append("GO" if batch.repeat == 1 else f"GO {batch.repeat}")
        out += [
            f"INSERT INTO {LOG_TABLE} (version, name, checksum, applied_at)",
            f"VALUES ({version}, {_literal(migration.name)}, {checksum}, SYSUTCDATETIME());",
        ]
        if migration.transactional:
            out.append("COMMIT TRANSACTION;")
        out += ["GO", "SET NOEXEC OFF;", "GO"]
    return "\n".join(out) + "\n"


def print_sql(out: TextIO | None = None, migrations: Sequence[Migration] | None = None) -> None:
    """Write every migration as one idempotent sqlcmd script, without a database.

    For teams whose DBAs apply migrations themselves: the script records each file
    in ``changefeed.migration_log`` exactly as ``migrate`` does, so the two ways
    can be mixed.
    """
    (sys.stdout if out is None else out).write(render_script(migrations))
