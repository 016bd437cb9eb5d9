"""Run the app under gunicorn with the shipped configuration (``zeh-mssql serve``)."""

from __future__ import annotations

import runpy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from zeh_mssql.app import create_app
from zeh_mssql.config import Config

GUNICORN_CONF = Path(__file__).with_name("gunicorn.conf.py")
"""The shipped gunicorn configuration: ``gunicorn -c`` takes this path."""


class Server(BaseApplication):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn with ``GUNICORN_CONF``, then ``overrides``, serving ``create_app(config)``.

    The app is created in each worker after it is forked, so no database
    connection is shared between processes.
    """

    def __init__(self, config: Config, overrides: Mapping[str, Any] | None = None) -> None:
        self._config = config
        self._overrides = dict(overrides or {})
        super().__init__(prog="zeh-mssql serve")

    def load_config(self) -> None:
        settings = runpy.run_path(str(GUNICORN_CONF))
        settings.update(self._overrides)
        for key, value in settings.items():
            # Names gunicorn does not know (helpers, older versions' missing settings) are skipped.
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self._config)


def serve(config: Config, overrides: Mapping[str, Any] | None = None) -> None:
    """Run gunicorn in the foreground until it is stopped."""
    Server(config, overrides).run()
