"""What importing the package costs, and what it exports."""

from __future__ import annotations

import subprocess
import sys

import pytest

import zeh_mssql


def imports_flask(module: str) -> bool:
    code = f"import sys, {module}; print('flask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


@pytest.mark.parametrize("module", ["zeh_mssql.client", "zeh_mssql.consumer", "zeh_mssql.config"])
def test_consumers_and_settings_do_not_load_flask(module):
    assert not imports_flask(module)


def test_exports():
    from zeh_mssql.blueprint import create_blueprint

    assert zeh_mssql.create_blueprint is create_blueprint
    assert callable(zeh_mssql.partition_for_key)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = zeh_mssql.nope  # type: ignore[attr-defined]
