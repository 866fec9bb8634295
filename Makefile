# The two commands of the README, and a few more.
#   make up     install what is missing, then start the stack on :9999
#               (continuing from the shared directory a `make stop` kept)
#   make stop   stop it, keep the shared directory (/dev/shm/bruto: ledger, unsent payments)
#   make down   stop it and delete the shared directory (not while it holds unsent payments:
#               FORCE=1 drops them)
#   make status what runs; fails if something does not
#   make test   install what is missing (PostgreSQL too), then run the whole test suite
#               (PYTEST_ARGS="..." passes arguments to pytest); needs no Docker
#   make test-compose
#               the compose files with real Docker (tests/compose), Docker set up first
#   make cluster-up
#               a two-host cluster on PostgreSQL in containers (docker-compose.cluster.yml)
#               on :9999, with two local processor emulators; make cluster-down removes it
# Both are idempotent: a second run installs nothing. Python packages go into
# a virtual environment (.venv), never into the system's Python; Debian
# packages (python3-venv, nginx, ...) are installed with apt-get when missing,
# which needs root.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
# Debian packages the tests and the benchmark run: nginx (the benchmark's floor
# and the nginx topology of the stack), prometheus (scrapes a stack's
# GET /metrics in the tests and on `bruto-stack up --prometheus`; brings promtool).
TEST_PACKAGES := nginx prometheus

# PostgreSQL 15 for the tests of bruto.cluster (tests/postgres.py starts a
# throwaway server of its own per test session). Debian's package creates and
# starts a `main` cluster when it is installed: it is stopped and set to start
# only by hand (start.conf: manual), so no idle server takes the CPU the tests
# and the benchmarks use.
PG_BIN := /usr/lib/postgresql/15/bin

.PHONY: install postgres up stop down status test test-compose cluster-up cluster-down bench

# pyproject.toml changes reinstall; the stamp says the last install succeeded.
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null \
		|| { echo "installing python3 and python3-venv (apt)"; apt-get update -qq && $(APT_INSTALL) python3 python3-venv >/dev/null; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

install: $(VENV)/.installed
	@missing=$$(for p in $(TEST_PACKAGES); do command -v $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing $$missing (apt)"; apt-get update -qq && $(APT_INSTALL) $$missing >/dev/null; fi

# Real processors: make up BRUTO_DEFAULT_URL=http://... BRUTO_FALLBACK_URL=http://...
# (both, or neither to start local emulators); make passes them on to bruto-stack.
# --via-make: bruto-stack's messages then name these targets, not its own commands.
up: install
	@$(BIN)/bruto-stack up --via-make

stop:
	@$(BIN)/bruto-stack stop --via-make

# Fails, keeping the shared directory, while it holds accepted payments not sent yet;
# make down FORCE=1 drops them.
down:
	@$(BIN)/bruto-stack down --via-make $(if $(FORCE),--force)

status:
	@$(BIN)/bruto-stack status --via-make

postgres:
	@test -x $(PG_BIN)/initdb || { echo "installing postgresql (apt)"; apt-get update -qq && $(APT_INSTALL) postgresql >/dev/null; }
	@for conf in /etc/postgresql/*/main/start.conf; do [ -e "$$conf" ] && echo manual > "$$conf"; done; true
	@if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q ' main .*online'; then \
		echo "stopping Debian's main PostgreSQL cluster (the tests start their own)"; pg_ctlcluster 15 main stop; fi; true

test: install postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# What the judge starts, started (tests/compose; pyproject.toml keeps them out of `make test`):
# tools/with_docker.sh sets Docker up as docs/CONTAINERS.md does (and stops a dockerd it
# started), tools/build_images.sh --cluster builds the images from this checkout, the
# cluster's too (NO_BUILD=1: use the images there are). The tests use their own project
# names and ports.
test-compose: install
	tools/with_docker.sh sh -c '$(if $(NO_BUILD),,tools/build_images.sh --cluster && )$(BIN)/python -m pytest tests/compose $(PYTEST_ARGS)'

# Two bruto hosts on one PostgreSQL behind one load balancer, in containers (README, "Two
# hosts on one database"): Docker set up as for test-compose (a dockerd this starts keeps
# running: it runs the cluster), the images built (NO_BUILD=1: use the images there are),
# the processors' compose file up (127.0.0.1:8001, :8002), then the cluster's; done when
# :9999 answers a summary (PostgreSQL up, the schema made). Needs root and the ports 9999,
# 9991, 9992, 8001, 8002 (not beside `make up`).
cluster-up: install
	tools/with_docker.sh --keep-engine sh -c '$(if $(NO_BUILD),,tools/build_images.sh --cluster && )docker compose -f docker-compose.processors.yml up -d && docker compose -f docker-compose.cluster.yml up -d'
	@for try in $$(seq 90); do \
		$(BIN)/python -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:9999/payments-summary", timeout=3)' 2>/dev/null \
			&& { echo "cluster up: the balancer on :9999, host a on 127.0.0.1:9991, host b on 127.0.0.1:9992"; exit 0; }; \
		sleep 1; \
	done; echo "the cluster did not answer on :9999 within 90 s: docker compose -f docker-compose.cluster.yml logs"; exit 1

# Removes both projects and their volumes (PostgreSQL's data, the hosts' shared memory).
cluster-down:
	docker compose -f docker-compose.cluster.yml down -v
	docker compose -f docker-compose.processors.yml down -v

bench: install
	$(BIN)/bruto-bench
