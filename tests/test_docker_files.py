"""docker/: what the compose demo and the image rely on, checked without a container engine.

`make docker-lint` runs hadolint and the Compose schema; these tests check the
wiring between the files: services, health checks, start order, the commands
the demo runs, and what the image copies.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from zeh_mssql.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, Any]:
    return compose["services"]


def test_sql_server_has_a_health_check_that_logs_in(services):
    mssql = services["mssql"]
    assert mssql["image"].split(":")[0].endswith("mssql/server")
    test = " ".join(mssql["healthcheck"]["test"])
    assert "sqlcmd" in test
    assert "select 1" in test
    assert mssql["environment"]["ACCEPT_EULA"] == "Y"


def test_the_init_service_runs_once_the_database_is_healthy(services):
    init = services["init"]
    assert init["depends_on"]["mssql"]["condition"] == "service_healthy"
    assert init["restart"] == "no"
    assert init["entrypoint"] == ["/bin/sh", "/demo-init.sh"]
    assert "./demo-init.sh:/demo-init.sh:ro" in init["volumes"]


def test_the_server_starts_after_a_successful_init_and_publishes_8080(services):
    server = services["server"]
    assert server["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert server["depends_on"]["mssql"]["condition"] == "service_healthy"
    assert "8080:8080" in server["ports"]
    assert server["environment"]["ZEH_MSSQL_BIND"].endswith(":8080")


def test_both_services_use_the_image_built_from_the_dockerfile(services):
    for name in ("init", "server"):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
        assert services[name]["image"] == "zeh-mssql:local"


def dsn_parts(dsn: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in dsn.split(";") if part)


def test_the_dsns_use_freetds_and_the_server_logs_in_as_the_reader(services):
    server = dsn_parts(services["server"]["environment"]["ZEH_MSSQL_DSN"])
    init = dsn_parts(services["init"]["environment"]["ZEH_MSSQL_DSN"])
    for parts in (server, init):
        assert parts["DRIVER"] == "{FreeTDS}"
        assert parts["TDS_Version"] == "7.4"
        assert parts["SERVER"] == "mssql"
        assert parts["DATABASE"] == "zeh_demo"
    assert server["UID"] == "zeh_reader"
    assert init["UID"] == "sa"


def test_the_demo_script_parses_and_runs_only_existing_commands():
    script = DOCKER / "demo-init.sh"
    subprocess.run(["sh", "-n", str(script)], check=True)
    text = script.read_text()
    used = set(re.findall(r"^\s*zeh-mssql ([a-z-]+)", text, flags=re.MULTILINE))
    assert used == {"migrate", "create-feed", "publish"}
    assert used <= set(main.commands)
    assert "create-feed demo --partitions 4" in text


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_runs_as_a_non_root_user_and_serves_with_a_health_check():
    instructions = dockerfile_instructions()
    users = [arg for op, arg in instructions if op == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    healthcheck = next(arg for op, arg in instructions if op == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    cmd = [arg for op, arg in instructions if op == "CMD"][-1]
    assert cmd == '["zeh-mssql", "serve"]'
    runs = " ".join(arg for op, arg in instructions if op == "RUN")
    assert "tdsodbc" in runs
    assert "unixodbc" in runs


def test_what_the_image_copies_exists_and_is_not_ignored():
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for op, arg in dockerfile_instructions():
        if op != "COPY" or arg.startswith("--from"):
            continue
        *sources, _target = shlex.split(arg)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, source
