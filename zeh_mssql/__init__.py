"""zeh-mssql: a race-safe SQL Server changefeed served with the ZeroEventHub protocol."""

from zeh_mssql.blueprint import create_blueprint
from zeh_mssql.partition import partition_for_key
from zeh_mssql.source import Event, EventSource, Page, SourceError, SourceUnavailable, TypeFilter

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
