"""What the ``zeh-mssql`` command printed, as its tests check it."""

from __future__ import annotations

from click.testing import Result


def one_error_line(result: Result) -> str:
    """The command failed with exit status 1 and printed exactly one line, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    return lines[0]
