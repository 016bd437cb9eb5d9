# Every target sets up what it needs: `make test` works on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint fmt check-odbc sql-parse docker-lint unit run bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# pyodbc cannot import without libodbc.so.2 (unixODBC); FreeTDS's driver lets the
# integration suite talk to SQL Server where Docker is available.
check-odbc:
	@if ldconfig -p | grep -q 'libodbc.so.2' && [ -n "$$(odbcinst -q -d 2>/dev/null)" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing unixODBC and the FreeTDS ODBC driver with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq unixodbc tdsodbc >/dev/null; \
	else \
		echo "unixODBC is missing; run: sudo apt-get install -y unixodbc tdsodbc"; exit 1; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# `sqlfluff parse` takes one path, so each file is parsed on its own. A file fails
# when sqlfluff exits non-zero (it does on an unparsable section) or, in case a
# release stops doing so, when the parse tree holds an unparsable node.
sql-parse: $(STAMP)
	@status=0; for file in sql/*.sql; do \
		tree="$$($(BIN)/sqlfluff parse --dialect tsql "$$file" 2>&1)"; rc=$$?; \
		if [ $$rc -ne 0 ] || grep -qE '\|[[:space:]]+unparsable:' <<<"$$tree"; then \
			echo "$$file: sqlfluff cannot parse it (exit $$rc):"; \
			sed -n '/==== parsing violations ====/,$$p' <<<"$$tree"; status=1; \
		fi; \
	done; exit $$status

unit: $(STAMP) check-odbc
	$(BIN)/pytest

# No container engine runs here, so the Docker files are checked statically:
# hadolint for the Dockerfile, the Compose specification's schema (shipped with
# check-jsonschema) for compose.yaml; tests/test_docker_files.py checks the rest.
docker-lint: $(STAMP)
	$(BIN)/hadolint docker/Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml

# The README's way to run the server: SQL Server, migrations, a demo feed, the server.
run:
	@command -v docker >/dev/null 2>&1 || { echo "make run needs Docker with its compose plugin (docker compose); install Docker first"; exit 1; }
	@docker compose version >/dev/null 2>&1 || { echo "make run needs Docker's compose plugin: 'docker compose version' fails here"; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make run needs a running Docker engine: 'docker info' cannot reach one"; exit 1; }
	docker compose -f docker/compose.yaml up --build

test: check-odbc $(STAMP) lint sql-parse docker-lint unit

# Benchmarks, not tests: each prints a table and writes bench/results/*.json
# (compare two runs with `$(BIN)/python -m bench.compare NAME`). `make test`
# never depends on wall-clock speed.
bench: check-odbc $(STAMP)
	$(BIN)/python -m bench.encoding
	$(BIN)/python -m bench.encoding --default-malloc
	$(BIN)/python -m bench.http_load
	$(BIN)/python -m bench.sql_feed

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
