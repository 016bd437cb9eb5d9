"""A database that is down for real: an ODBC DSN pointing at a closed port on 127.0.0.1."""

from __future__ import annotations

import socket

PASSWORD = "Sekr1t-pa55word"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def down_dsn() -> str:
    """A FreeTDS DSN whose login is refused at once; its password is ``PASSWORD``."""
    return (
        f"DRIVER={{FreeTDS}};SERVER=127.0.0.1;PORT={closed_port()};DATABASE=events;"
        f"UID=reader;PWD={PASSWORD};TDS_Version=7.4"
    )
