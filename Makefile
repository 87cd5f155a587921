# localai-admin: `make run` starts the dashboard and worker, `make test` runs every test.
PYTHON ?= python3.12
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/localai_admin

.PHONY: run test test-sqlite test-postgres lint format bench screenshots system-deps clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

run: $(BIN)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py ensure_admin
	$(BIN)/python manage.py probe_hardware
	$(BIN)/python manage.py sync_galleries --background
	@echo "localai-admin: http://$(HOST):$(PORT)/  (admin: http://$(HOST):$(PORT)/admin/)"
	@trap 'kill 0' INT TERM EXIT; \
	$(BIN)/python manage.py run_huey & \
	$(BIN)/python manage.py runserver --noreload $(HOST):$(PORT)

# Debian packages the tests drive for real: the OCI registry and the browser.
system-deps:
	@missing=""; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Once on SQLite (everything but distributed mode, which needs PostgreSQL), then on
# PostgreSQL + Redis (everything but the single-node browser tests).
test: lint system-deps
	$(BIN)/pytest
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest -m "not browser or distributed"

test-sqlite: $(BIN)/.installed system-deps
	$(BIN)/pytest

test-postgres: $(BIN)/.installed system-deps
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest -m "not browser or distributed"

# A PNG of every page, with data from the fixture gallery, into docs/screenshots/.
screenshots: $(BIN)/.installed system-deps
	SCREENSHOTS=1 $(BIN)/pytest tests/browser/test_screenshots.py -q

# Style, types and the import contracts of docs/architecture.md (pyproject.toml).
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo --no-cache

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(BIN)/.installed system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
