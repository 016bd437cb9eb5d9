"""gunicorn settings for zeh-mssql, shipped with the package.

``zeh-mssql serve`` runs gunicorn with this file; ``gunicorn -c <this file>``
does the same (``zeh_mssql.server.GUNICORN_CONF`` is its path). Thread workers
(gthread) keep a long-poll from pinning a process; the timeouts leave room for
long-polls of up to 30 s. gunicorn's command line overrides any value here.
"""

import os

from zeh_mssql.config import ConfigError, env_int


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    try:
        return env_int(os.environ, name, default, minimum=minimum)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


wsgi_app = "zeh_mssql.app:create_app()"
bind = [os.environ.get("ZEH_MSSQL_BIND", "").strip() or "0.0.0.0:8080"]
worker_class = "gthread"
workers = _env_int("ZEH_MSSQL_WORKERS", 2)
# A waiting long-poll holds a thread but no database connection, so threads are
# sized for concurrent consumers, not for the database.
threads = _env_int("ZEH_MSSQL_THREADS", 32)

# gthread workers heartbeat from their main loop, so `timeout` only catches a
# stuck process; requests themselves may run as long as a long-poll needs (30 s).
timeout = 60
# On shutdown, requests in flight (a long-poll of up to ZEH_MSSQL_MAX_WAIT) may finish.
graceful_timeout = _env_int("ZEH_MSSQL_MAX_WAIT", 30, minimum=0) + 10
keepalive = 5

# The app writes one JSON line per request to stdout; gunicorn's own messages
# (start, worker boot and exit) go there too, in the same format, and there is
# no access log to repeat the request lines.
loglevel = os.environ.get("ZEH_MSSQL_LOG_LEVEL", "").strip().lower() or "info"
accesslog = None
errorlog = "-"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "WARNING", "handlers": []},
    "loggers": {
        "gunicorn.error": {
            "level": loglevel.upper(),
            "handlers": ["stdout"],
            "propagate": False,
            "qualname": "gunicorn.error",
        },
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stdout",
        }
    },
    "formatters": {"json": {"()": "zeh_mssql.logs.JsonLineFormatter"}},
}


def post_fork(server: object, worker: object) -> None:
    """Keep each worker's heap between responses (see zeh_mssql/malloc.py)."""
    if os.environ.get("ZEH_MSSQL_KEEP_HEAP", "").strip() != "0":
        from zeh_mssql.malloc import keep_heap

        keep_heap()


# Each process connects after it is forked, never before.
preload_app = False
# Several servers may run side by side (tests, one container per feed set);
# the runtime control socket would make them compete for one path.
control_socket_disable = True
