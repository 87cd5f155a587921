# localai-admin: `make run` starts the dashboard and worker, `make test` runs every test.
PYTHON ?= python3.12
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/localai_admin
# make serve: the production stack (deploy/serve, docs/deployment.md).
WORKER_COMMAND ?= manage.py run_worker
LOCALAI_ADMIN_DATA_DIR ?= $(CURDIR)/var
SERVE_HOST ?= localhost
SERVE_ADDRESS ?= 127.0.0.1
SERVE_HTTPS_PORT ?= 8443
SERVE_HTTP_PORT ?= 8080
SERVE_APP_PORT ?= 8001
SERVE_MAX_BODY ?= 1m
SERVE_KIT_MAX_BODY ?= 200g
SERVE_CLIENT_TIMEOUT ?= 10
TLS_CERT ?=
TLS_KEY ?=
GUNICORN_ARGS ?= -w 2 -k gthread --threads 4 --worker-connections 50
GUNICORN_NICE ?= 10
STATUS_LANE ?= on
SERVE_STATUS_PORT ?= 8002
STATUS_GUNICORN_ARGS ?= -w 1 -k gthread --threads 4
NGINX_BIN ?= $(or $(shell command -v nginx),/usr/sbin/nginx)

.PHONY: run serve serve-deps test test-sqlite test-postgres lint format bench screenshots system-deps clean

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
	$(BIN)/python $(WORKER_COMMAND) & \
	$(BIN)/python manage.py runserver --noreload $(HOST):$(PORT)

# nginx in front of gunicorn's two lanes with TLS, the worker beside them; Ctrl-C stops all.
serve: $(BIN)/.installed serve-deps
	BIN="$(abspath $(BIN))" WORKER_COMMAND="$(WORKER_COMMAND)" \
	LOCALAI_ADMIN_DATA_DIR="$(LOCALAI_ADMIN_DATA_DIR)" SERVE_HOST="$(SERVE_HOST)" \
	SERVE_ADDRESS="$(SERVE_ADDRESS)" SERVE_HTTPS_PORT="$(SERVE_HTTPS_PORT)" \
	SERVE_HTTP_PORT="$(SERVE_HTTP_PORT)" SERVE_APP_PORT="$(SERVE_APP_PORT)" \
	SERVE_MAX_BODY="$(SERVE_MAX_BODY)" SERVE_KIT_MAX_BODY="$(SERVE_KIT_MAX_BODY)" \
	SERVE_CLIENT_TIMEOUT="$(SERVE_CLIENT_TIMEOUT)" \
	TLS_CERT="$(TLS_CERT)" TLS_KEY="$(TLS_KEY)" GUNICORN_ARGS="$(GUNICORN_ARGS)" \
	GUNICORN_NICE="$(GUNICORN_NICE)" STATUS_LANE="$(STATUS_LANE)" \
	SERVE_STATUS_PORT="$(SERVE_STATUS_PORT)" STATUS_GUNICORN_ARGS="$(STATUS_GUNICORN_ARGS)" \
	NGINX_BIN="$(NGINX_BIN)" deploy/serve

# Debian packages make serve runs: the proxy and the certificate tool.
serve-deps:
	@missing=""; \
	test -x "$(NGINX_BIN)" || missing="$$missing nginx"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make serve needs$$missing: apt-get install$$missing (as root)" >&2; exit 1; \
		fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Debian packages the tests drive for real: the OCI registry, the browser, the proxy.
system-deps: serve-deps
	@missing=""; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Once on SQLite (everything but distributed mode, which needs PostgreSQL), then on
# PostgreSQL + Redis (everything but the single-node browser tests and the deploy tests,
# which bring their own SQLite).
test: lint system-deps
	$(BIN)/pytest
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest -m "not browser and not deploy or distributed"

test-sqlite: $(BIN)/.installed system-deps
	$(BIN)/pytest

test-postgres: $(BIN)/.installed system-deps
	DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest -m "not browser and not deploy or distributed"

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
