"""The ``zeh-mssql`` command."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager

import click
import orjson
import pyodbc

from zeh_mssql import db
from zeh_mssql.config import Config, ConfigError


@click.group()
@click.version_option(package_name="zeh-mssql")
def main() -> None:
    """zeh-mssql: a SQL Server changefeed served with the ZeroEventHub protocol."""


# --- shared by the commands that talk to the database ---------------------------

DSN_ENV = "ZEH_MSSQL_DSN"
LOGIN_TIMEOUT_S = 10


def _require_dsn(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    if value is None or not value.strip():
        raise click.ClickException(f"no database given: pass --dsn or set {DSN_ENV}")
    return value


dsn_option = click.option(
    "--dsn",
    envvar=DSN_ENV,
    callback=_require_dsn,
    metavar="ODBC",
    help=f"ODBC connection string (default: ${DSN_ENV}; the variable keeps it out of `ps`).",
)
"""Adds ``--dsn`` (or ``$ZEH_MSSQL_DSN``); fails with one line when neither is given."""


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn a pyodbc error into one line on stderr and exit status 1, without a traceback."""
    try:
        yield
    except pyodbc.Error as exc:
        message = db.server_message(exc)
        if db.is_unavailable(exc):
            raise click.ClickException(f"cannot reach the database: {message}") from None
        number = db.error_number(exc)
        suffix = f" (SQL Server error {number})" if number is not None else ""
        raise click.ClickException(f"{message}{suffix}") from None


# --- feeds ---------------------------------------------------------------------


@main.command("create-feed")
@click.argument("name")
@click.option("--partitions", type=click.IntRange(min=1), required=True, help="Partition count.")
@click.option(
    "--mode",
    type=click.Choice(["outbox", "blocking"]),
    default="outbox",
    show_default=True,
    help="outbox: writers never wait on each other; blocking: writers to a partition serialize.",
)
@dsn_option
def create_feed(name: str, partitions: int, mode: str, dsn: str) -> None:
    """Register feed NAME (again with the same arguments: no change)."""
    with database_errors(), closing(db.connect(dsn, timeout=LOGIN_TIMEOUT_S)) as connection:
        connection.execute(
            "EXEC changefeed.create_feed @name = ?, @partition_count = ?, @mode = ?",
            name,
            partitions,
            mode,
        )
    click.echo(f"feed {name}: {partitions} partitions, {mode} mode")


@main.command()
@click.argument("feed")
@click.argument("data")
@click.option("--partition", type=click.IntRange(min=0), help="Publish to this partition.")
@click.option("--partition-key", help="Publish to the partition this key hashes to.")
@click.option("--type", "event_type", help="The event's type.")
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@dsn_option
def publish(
    feed: str,
    data: str,
    partition: int | None,
    partition_key: str | None,
    event_type: str | None,
    headers: tuple[str, ...],
    dsn: str,
) -> None:
    """Publish one event to FEED; DATA is a JSON document ('-' reads it from stdin)."""
    if (partition is None) == (partition_key is None):
        raise click.ClickException("give exactly one of --partition and --partition-key")
    if data == "-":
        data = sys.stdin.read()
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise click.ClickException(f"DATA is not valid JSON: {exc}") from None
    header_map: dict[str, str] = {}
    for item in headers:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.ClickException(f"--header {item!r}: expected NAME=VALUE")
        header_map[key] = value
    header_json = orjson.dumps(header_map).decode() if header_map else None
    # A writer's own transaction, committed here: how services publish too.
    with (
        database_errors(),
        closing(db.connect(dsn, autocommit=False, timeout=LOGIN_TIMEOUT_S)) as connection,
    ):
        connection.execute(
            "EXEC changefeed.publish @feed = ?, @data = ?, @partition = ?, @partition_key = ?,"
            " @event_type = ?, @headers = ?",
            feed,
            data,
            partition,
            partition_key,
            event_type,
            header_json,
        )
        connection.commit()
    target = f"partition {partition}" if partition is not None else f"key {partition_key!r}"
    click.echo(f"published to {feed}, {target}")


# --- the server ----------------------------------------------------------------


@main.command()
@dsn_option
@click.option(
    "--bind", help="ADDRESS:PORT to listen on (default: $ZEH_MSSQL_BIND or 0.0.0.0:8080)."
)
@click.option("--workers", type=click.IntRange(min=1), help="Processes (default 2).")
@click.option("--threads", type=click.IntRange(min=1), help="Threads per process (default 8).")
def serve(dsn: str, bind: str | None, workers: int | None, threads: int | None) -> None:
    """Serve the feeds over HTTP with gunicorn (configured by ZEH_MSSQL_* variables)."""
    from zeh_mssql.server import serve as run_gunicorn

    try:
        config = Config.from_env({**os.environ, DSN_ENV: dsn})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    overrides: dict[str, object] = {}
    if bind is not None:
        overrides["bind"] = [bind]
    if workers is not None:
        overrides["workers"] = workers
    if threads is not None:
        overrides["threads"] = threads
    run_gunicorn(config, overrides)


# --- migrations ----------------------------------------------------------------


@main.command()
@click.option(
    "--dsn",
    envvar=DSN_ENV,
    metavar="ODBC",
    help=f"ODBC connection string of the target database (default: ${DSN_ENV}).",
)
@click.option(
    "--print",
    "print_only",
    is_flag=True,
    help="Write the migrations as one idempotent sqlcmd script to stdout; needs no database.",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="Seconds to wait for another migration run to finish.",
)
@click.option(
    "--login-timeout",
    type=click.IntRange(min=1),
    default=LOGIN_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the database login.",
)
def migrate(dsn: str | None, print_only: bool, lock_timeout: float, login_timeout: int) -> None:
    """Apply the changefeed schema's pending migrations to the database, each once."""
    from zeh_mssql import migrate as migrations

    try:
        if print_only:
            migrations.print_sql()
            return
        if dsn is None or not dsn.strip():
            raise click.ClickException(
                f"no database given: pass --dsn or set {DSN_ENV} (or --print for the SQL)"
            )
        with database_errors():
            migrations.migrate(
                dsn, echo=click.echo, lock_timeout=lock_timeout, login_timeout=login_timeout
            )
    except migrations.MigrationError as exc:
        raise click.ClickException(str(exc)) from None


# --- reading feeds -------------------------------------------------------------

TOKEN_ENV = "ZEH_MSSQL_TOKEN"


@main.command()
@click.argument("url")
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    required=True,
    help="The feed's partition count (the handshake); every partition is read.",
)
@click.option(
    "--from",
    "start",
    type=click.Choice(["_first", "_last"]),
    default="_first",
    show_default=True,
    help="Start at the beginning of each partition, or at its current end.",
)
@click.option("--follow", is_flag=True, help="Keep polling for new events instead of exiting.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    help="With --follow: seconds the server may hold a request until new events arrive "
    "(long-polling; 0 polls with backoff instead).",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    help=f"Bearer token for the Authorization header (default: ${TOKEN_ENV}).",
)
@click.option(
    "--envelope", is_flag=True, help="Print whole protocol lines (partition, headers, data)."
)
@click.option(
    "--page-size",
    type=click.IntRange(min=0),
    default=0,
    help="Events per request (a hint; 0: the server's default).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the server.",
)
def tail(
    url: str,
    partitions: int,
    start: str,
    follow: bool,
    wait: float,
    token: str | None,
    envelope: bool,
    page_size: int,
    timeout: float,
) -> None:
    """Print the events of the feed at URL as JSON lines (their data, or --envelope lines)."""
    from zeh_mssql.client import Client, FetchError, bearer_token
    from zeh_mssql.tail import tail as print_events

    try:
        client = Client(url, partitions, timeout=timeout)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if token:
        client = client.with_request_processor(bearer_token(token))
    try:
        print_events(
            client,
            sys.stdout.buffer,
            start=start,
            follow=follow,
            wait=wait,
            envelope=envelope,
            page_size_hint=page_size,
            progress=sys.stderr if sys.stderr.isatty() else None,
            warn=lambda message: click.echo(f"warning: {message}", err=True),
        )
    except FetchError as exc:
        raise click.ClickException(f"{url}: {exc}") from None
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's own
        # flush at exit from complaining about the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        raise SystemExit(130) from None
