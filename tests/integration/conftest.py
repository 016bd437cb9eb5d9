"""Integration fixtures: one SQL Server container per session, a fresh database per test.

Every test in this directory gets the ``integration`` marker. Where no Docker engine
answers, every one of them is skipped from a single place, so pytest's summary shows
one line with the count and the reason instead of one line per test.

Fixtures other suites reuse:

- ``sqlserver`` (session): the running server; ``sqlserver.dsn(database, user, password)``
  builds an ODBC connection string with the driver found, ``sqlserver.connect(database)``
  opens an admin (``sa``) connection.
- ``database`` (function): a fresh, empty database, dropped afterwards.
- ``migrated_db`` / ``migrated_dsn`` (function): the same with every migration applied;
  ``migrated_dsn`` is its admin DSN.
- ``create_login`` (function): ``create_login("changefeed_reader")`` makes a login and a
  user of the migrated database in those roles, and returns the login's DSN.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyodbc
import pytest

IMAGE = os.environ.get("ZEH_MSSQL_TEST_IMAGE", "mcr.microsoft.com/mssql/server:2022-latest")
DRIVER_ENV = "ZEH_MSSQL_ODBC_DRIVER"
PREFERRED_DRIVERS = (
    "ODBC Driver 18 for SQL Server",
    "ODBC Driver 17 for SQL Server",
    "FreeTDS",
)
SQLSERVER_PORT = 1433
STARTUP_TIMEOUT_S = 240.0
_HERE = Path(__file__).resolve().parent

# Connections a test closes must really log out: dropping a login or a database
# fails while a pooled connection keeps a session open. Must be set before the
# first connection of the process.
pyodbc.pooling = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test below this directory ``integration`` (``-m "not integration"``)."""
    for item in items:
        if item.path.resolve().is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


def docker_unavailable_reason() -> str | None:
    """Why no Docker engine can be used, or None when one answers a ping."""
    try:
        import docker
    except ImportError as exc:
        return f"the docker package cannot be imported ({exc})"
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        # Whatever the cause (no socket, no permission, engine down), the tests cannot run.
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"no Docker engine answers ({first_line})"
    return None


_SKIP_PREFIX = "Docker is needed to start SQL Server"


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skip (once, cached for the session) when there is no Docker engine."""
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(f"{_SKIP_PREFIX}: {reason}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say once why the integration tests were skipped (``-r`` omits skips, see pyproject)."""
    reasons = [
        report.longrepr[2]
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and _SKIP_PREFIX in str(report.longrepr[2])
    ]
    if reasons:
        reason = reasons[0].removeprefix("Skipped: ")
        terminalreporter.write_line(f"SKIPPED {len(reasons)} integration tests: {reason}")


@pytest.fixture(autouse=True)
def _requires_docker(docker_engine: None) -> None:
    """Every integration test needs the engine, also those that use no other fixture."""


def odbc_driver() -> str:
    """The ODBC driver to use: the env override, else the best one installed."""
    override = os.environ.get(DRIVER_ENV, "").strip()
    if override:
        return override
    installed = pyodbc.drivers()
    for name in PREFERRED_DRIVERS:
        if name in installed:
            return name
    pytest.fail(
        f"no SQL Server ODBC driver installed (found {installed or 'none'}); install "
        f"unixodbc and tdsodbc, or Microsoft's msodbcsql18, or set {DRIVER_ENV}",
        pytrace=False,
    )


def odbc_quote(value: str) -> str:
    """A connection-string value, braced so that ``;``, ``=`` and ``}`` survive."""
    return "{" + value.replace("}", "}}") + "}"


@dataclass(frozen=True)
class SqlServer:
    """A running SQL Server reachable from the tests."""

    host: str
    port: int
    sa_password: str
    driver: str

    @property
    def is_freetds(self) -> bool:
        return "freetds" in self.driver.lower()

    def dsn(self, database: str = "master", user: str = "sa", password: str | None = None) -> str:
        """An ODBC connection string for ``user`` (default ``sa``) in ``database``."""
        parts = [f"DRIVER={odbc_quote(self.driver)}"]
        if self.is_freetds:
            # FreeTDS takes the port separately; TDS 7.4 is SQL Server 2012+, and
            # ClientCharset makes nvarchar text arrive as UTF-8, not as '?'.
            parts += [f"SERVER={self.host}", f"PORT={self.port}", "TDS_Version=7.4"]
            parts.append("ClientCharset=UTF-8")
        else:
            # The container's certificate is self-signed.
            parts += [f"SERVER=tcp:{self.host},{self.port}", "Encrypt=yes"]
            parts.append("TrustServerCertificate=yes")
        parts += [
            f"DATABASE={odbc_quote(database)}",
            f"UID={odbc_quote(user)}",
            f"PWD={odbc_quote(self.sa_password if password is None else password)}",
        ]
        return ";".join(parts)

    def connect(self, database: str = "master", *, autocommit: bool = True) -> pyodbc.Connection:
        """An ``sa`` connection to ``database``."""
        return pyodbc.connect(self.dsn(database), autocommit=autocommit, timeout=10)


def _container_class() -> type:
    try:
        from testcontainers.community.mssql import SqlServerContainer
    except ImportError:  # testcontainers releases before the community split
        from testcontainers.mssql import SqlServerContainer
    return SqlServerContainer


def _start_container(password: str, driver: str) -> tuple[object, SqlServer]:
    """Start the container and wait until ``sa`` can log in through ODBC.

    testcontainers' own readiness check runs sqlcmd inside the image, whose path
    changes between image releases; a real ODBC login from here is what the tests
    need anyway, so ``_connect`` is replaced by that.
    """
    base = _container_class()
    holder: dict[str, SqlServer] = {}

    class Container(base):
        def _connect(self) -> None:
            server = SqlServer(
                host=self.get_container_host_ip(),
                port=int(self.get_exposed_port(SQLSERVER_PORT)),
                sa_password=password,
                driver=driver,
            )
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                try:
                    with contextlib.closing(server.connect()) as conn:
                        conn.execute("select 1").fetchone()
                    holder["server"] = server
                    return
                except pyodbc.Error as exc:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"SQL Server in {IMAGE} did not accept a login within "
                            f"{STARTUP_TIMEOUT_S:.0f} s: {exc}"
                        ) from exc
                time.sleep(1.0)

    container = Container(IMAGE, password=password, port=SQLSERVER_PORT)
    container.with_env("MSSQL_SA_PASSWORD", password)
    container.with_env("MSSQL_PID", "Developer")
    try:
        container.start()
    except BaseException:
        with contextlib.suppress(Exception):
            container.stop()
        raise
    return container, holder["server"]


@contextlib.contextmanager
def running_sqlserver() -> Iterator[SqlServer]:
    """Start a SQL Server container, yield it, stop it; also for scripts (``bench/``)."""
    driver = odbc_driver()
    # Meets SQL Server's password policy: upper, lower, digit and symbol, 8+ characters.
    password = f"Zeh-{secrets.token_hex(12)}-Aa1"
    container, server = _start_container(password, driver)
    try:
        yield server
    finally:
        container.stop()


@pytest.fixture(scope="session")
def sqlserver(docker_engine: None) -> Iterator[SqlServer]:
    """A SQL Server container started once for the whole session."""
    with running_sqlserver() as server:
        yield server


@dataclass(frozen=True)
class Database:
    """A database created for one test; ``dsn`` logs in as ``sa``."""

    name: str
    dsn: str


def create_database(server: SqlServer) -> Database:
    """Create an empty database with a unique name."""
    name = f"zeh_{secrets.token_hex(8)}"
    with contextlib.closing(server.connect()) as conn:
        conn.execute(f"create database [{name}]")
    return Database(name=name, dsn=server.dsn(name))


def drop_database(server: SqlServer, name: str) -> None:
    """Drop a test database, disconnecting whatever a failed test left connected."""
    with contextlib.closing(server.connect()) as conn:
        conn.execute(f"alter database [{name}] set single_user with rollback immediate")
        conn.execute(f"drop database [{name}]")


def kill_sessions(server: SqlServer, login: str) -> None:
    """End every session of ``login`` (KILL takes a literal session id)."""
    with contextlib.closing(server.connect()) as conn:
        rows = conn.execute(
            "select session_id from sys.dm_exec_sessions"
            " where login_name = ? and session_id <> @@spid",
            login,
        ).fetchall()
        for (session_id,) in rows:
            with contextlib.suppress(pyodbc.Error):  # it may have logged out meanwhile
                conn.execute(f"kill {int(session_id)}")


@pytest.fixture
def database(sqlserver: SqlServer) -> Iterator[Database]:
    """A fresh, empty database (no migrations), dropped after the test."""
    db = create_database(sqlserver)
    try:
        yield db
    finally:
        drop_database(sqlserver, db.name)


@pytest.fixture
def migrated_db(database: Database) -> Database:
    """The test's fresh database with every migration of the package applied."""
    from zeh_mssql.migrate import migrate

    migrate(database.dsn, echo=lambda _line: None)
    return database


@pytest.fixture
def migrated_dsn(migrated_db: Database) -> str:
    """The admin DSN of a fresh, fully migrated database."""
    return migrated_db.dsn


CreateLogin = Callable[..., str]


@pytest.fixture
def create_login(sqlserver: SqlServer, migrated_db: Database) -> Iterator[CreateLogin]:
    """Factory: ``create_login(*roles)`` -> DSN of a new login whose user has those roles.

    The user lives in the test's migrated database; the logins are dropped afterwards.
    """
    created: list[str] = []

    def create(*roles: str) -> str:
        name = f"zeh_login_{secrets.token_hex(6)}"
        password = f"Zeh-{secrets.token_hex(12)}-Aa1"
        # CREATE LOGIN takes its password only as a literal; both values are ours.
        with contextlib.closing(sqlserver.connect()) as conn:
            conn.execute(f"create login [{name}] with password = N'{password}'")
        created.append(name)
        with contextlib.closing(sqlserver.connect(migrated_db.name)) as conn:
            conn.execute(f"create user [{name}] for login [{name}]")
            for role in roles:
                conn.execute(f"alter role [{role}] add member [{name}]")
        return sqlserver.dsn(migrated_db.name, name, password)

    yield create
    for name in created:
        kill_sessions(sqlserver, name)
        with contextlib.closing(sqlserver.connect()) as conn:
            conn.execute(f"drop login [{name}]")
