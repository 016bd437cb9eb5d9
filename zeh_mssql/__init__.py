"""zeh-mssql: a race-safe SQL Server changefeed served with the ZeroEventHub protocol."""

from typing import TYPE_CHECKING, Any

from zeh_mssql.partition import partition_for_key
from zeh_mssql.source import Event, EventSource, Page, SourceError, SourceUnavailable, TypeFilter

if TYPE_CHECKING:
    from zeh_mssql.blueprint import create_blueprint

__all__ = [
    "Event",
    "EventSource",
    "Page",
    "SourceError",
    "SourceUnavailable",
    "TypeFilter",
    "create_blueprint",
    "partition_for_key",
]


def __getattr__(name: str) -> Any:
    # Flask is imported only by who serves: the client, the config and the
    # gunicorn settings import this package without it.
    if name == "create_blueprint":
        from zeh_mssql.blueprint import create_blueprint

        return create_blueprint
    raise AttributeError(f"module 'zeh_mssql' has no attribute {name!r}")
