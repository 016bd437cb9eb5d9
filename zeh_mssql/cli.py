"""The ``zeh-mssql`` command."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="zeh-mssql")
def main() -> None:
    """zeh-mssql: a SQL Server changefeed served with the ZeroEventHub protocol."""
