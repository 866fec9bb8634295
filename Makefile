# The two set-up commands of the README, and a few more.
#   make up     install what is missing, then start the stack on :9999
#   make test   install what is missing, then run the whole test suite
# Both are idempotent: a second run installs nothing.

PYTHON ?= python3
PIP = $(PYTHON) -m pip
# Real processors, if you have them; without them the stack starts emulators.
BRUTO_DEFAULT_URL ?=
BRUTO_FALLBACK_URL ?=

.PHONY: install up down status test bench

install:
	@command -v nginx >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
	@$(PIP) install -q --disable-pip-version-check -e '.[test,bench]'

up: install
	bruto-stack up $(if $(BRUTO_DEFAULT_URL),--default-url $(BRUTO_DEFAULT_URL) --fallback-url $(BRUTO_FALLBACK_URL))

down:
	bruto-stack down

status:
	bruto-stack status

test: install
	$(PYTHON) -m pytest

bench: install
	bruto-bench
