# Two commands for a new user: `make demo` and `make test`. Every target runs `setup` first, so
# each one works on a fresh clone; `setup` is idempotent and cheap when nothing changed.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/pytest
# NO_MKDOCS_2_WARNING: mkdocs-material's banner about MkDocs 2 is printed on every build otherwise.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
MKDOCS_STRICT := $(MKDOCS) build --strict --quiet
KAFKA_LIBS := .stack/kafka/libs
# Stamps: reinstall only when what they were built from changed.
SETUP_STAMP := $(VENV)/.installed
KAFKA_STAMP := $(KAFKA_LIBS)/.resolved
# A literal comma inside $(call ...) arguments.
comma := ,

.PHONY: help setup test-tools redis-server wrk chromium promtool jaeger toxiproxy up down demo test test-unit test-integration test-e2e chaos \
	bench bench-scaling debezium-jars lint docs docs-build

help:
	@echo "make setup            .venv + dev install, Kafka jars, redis-server (idempotent)"
	@echo "make test-tools       what only the tests need: chromium, promtool, jaeger, toxiproxy"
	@echo "make demo             start everything, send orders, show them travel, stop"
	@echo "make test             the whole suite (unit, integration, e2e, chaos) and the docs build"
	@echo "make test-unit | test-integration | test-e2e | chaos | bench | bench-scaling | lint"
	@echo "make up               embedded stack, six service processes and the console (Ctrl-C stops)"
	@echo "make docs             serve the documentation site on http://127.0.0.1:8098"

setup: $(SETUP_STAMP) $(KAFKA_STAMP) redis-server

# Only the suite needs these (browser tests, alert-rule tests, the trace test): `make demo` and
# `make up` never wait for a Chromium install or a Go build.
test-tools: setup chromium promtool jaeger toxiproxy

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt pins every transitive version CI tested; pyproject.toml keeps the ranges.
$(SETUP_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

# Kafka broker jars from Maven Central (stack/pom.xml). Resolved into a fresh directory and
# swapped in, so a broker that is running from the old jars never sees a half-copied set.
$(KAFKA_STAMP): stack/pom.xml
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "setup: installing Maven and a JDK with apt-get (needed for the Kafka broker)"; \
	    apt-get update -qq && apt-get install -y -qq maven default-jdk-headless; \
	  else \
	    echo "setup: Kafka needs java (17+) and mvn; install them, e.g." \
	         "'sudo apt-get install -y maven default-jdk-headless', then rerun make." >&2; \
	    exit 1; \
	  fi; }
	rm -rf $(KAFKA_LIBS).new
	mvn -q -B -f stack/pom.xml dependency:copy-dependencies \
	  -DoutputDirectory=$(abspath $(KAFKA_LIBS)).new
	rm -rf $(KAFKA_LIBS)
	mv $(KAFKA_LIBS).new $(KAFKA_LIBS)
	touch $@

# $(call apt_install,COMMAND,PACKAGE,WHY,IF_IMPOSSIBLE): when COMMAND is not on PATH, install
# Debian's PACKAGE with apt-get (as root, or through sudo); otherwise run IF_IMPOSSIBLE (a message
# to stderr, and `exit 1` when the target cannot do without it).
define apt_install
	@command -v $(1) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "$(3): installing Debian's $(2) with apt-get"; \
	    apt-get update -qq && apt-get install -y -qq $(2); \
	  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
	    sudo apt-get update -qq && sudo apt-get install -y -qq $(2); \
	  else \
	    $(4); \
	  fi; }
endef

redis-server:
	$(call apt_install,redis-server,redis-server,setup,echo "setup: redis-server is missing and cannot be installed here (no apt-get or not root): install Redis 7 so that 'redis-server' is on PATH$(comma) then rerun make." >&2; exit 1)

# Debian's chromium for the console's browser tests (Playwright drives it; no browser download).
chromium:
	$(call apt_install,chromium,chromium,setup,echo "setup: chromium is missing and cannot be installed here (no apt-get or not root): install it so that /usr/bin/chromium exists$(comma) then rerun make." >&2; exit 1)

# promtool from the Go module proxy into .stack/bin (alert-rule tests); stamped with its version,
# so this is a no-op once built (the first build takes minutes: 34 min measured on two cores
# shared with six other builds, most of it compiling Prometheus's dependencies). Jaeger is built the same
# way, by the trace test, the first time it runs.
promtool: $(SETUP_STAMP)
	$(BIN)/python -m stack.gotools promtool

# Jaeger v2 for the trace test and `python -m stack up --with jaeger` (a 120 MB binary, minutes to
# build once, then stamped): needed by the tests, so not by `make demo` or `make up`.
jaeger: $(SETUP_STAMP)
	$(BIN)/python -m stack.gotools jaeger

# Toxiproxy, the fault proxy of the failure-injection suite (about 20 s to build once, then
# stamped): needed by the tests, so not by `make demo` or `make up`.
toxiproxy: $(SETUP_STAMP)
	$(BIN)/python -m stack.gotools toxiproxy-server

up: setup
	$(BIN)/python -m stack up

down: setup
	$(BIN)/python -m stack down

demo: setup
	$(BIN)/python -m stack.demo

# pytest exits 5 when it collected nothing: for us that is a failure (a wrong path or a
# marker filter that matches nothing must not pass CI), and make fails on any non-zero code.
define run_pytest
	$(PYTEST) $(1) --durations=30 || { rc=$$?; [ $$rc -ne 5 ] || echo "make: pytest collected no tests" >&2; exit $$rc; }
endef

# The suite in two halves at once, each pytest on an embedded stack of its own: the e2e tier
# (services as processes, mostly waiting out the faults it injects) beside the unit and
# integration tiers. On two cores that keeps `make test` inside its 20-minute budget. The e2e
# half's report is printed after the other half's; either half failing fails the target (the
# `|| rc=$?` forms keep the shell's -e from leaving before the e2e report is printed). The docs
# site is built strictly first (about 15 s), beside the e2e tier's start; its failure fails the
# target too.
test: test-tools
	@$(PYTEST) tests/e2e --durations=15 > .e2e-tier.log 2>&1 & e2e=$$!; \
	docs=0; $(MKDOCS_STRICT) || docs=$$?; \
	rest=0; $(PYTEST) tests/unit tests/integration --durations=20 || rest=$$?; \
	e2e_rc=0; wait $$e2e || e2e_rc=$$?; \
	echo "=== the e2e tier, run at the same time ==="; cat .e2e-tier.log; \
	for rc in $$rest $$e2e_rc; do [ $$rc -ne 5 ] || echo "make: pytest collected no tests" >&2; done; \
	echo "make test: docs build exit $$docs, unit+integration exit $$rest, e2e exit $$e2e_rc"; \
	[ $$docs -eq 0 ] && [ $$rest -eq 0 ] && [ $$e2e_rc -eq 0 ]

test-unit: test-tools
	$(call run_pytest,tests/unit)

test-integration: test-tools
	$(call run_pytest,tests/integration)

test-e2e: setup toxiproxy
	$(call run_pytest,tests/e2e)

chaos: setup toxiproxy
	$(call run_pytest,-m chaos tests)

# wrk (Debian's package) is the bench's HTTP load generator: only `make bench` needs it, so it is
# installed here and not by `setup`. Without it the bench still runs, says wrk did not run, and
# takes the API's ratio from httpx.
wrk:
	$(call apt_install,wrk,wrk,bench,echo "bench: wrk is missing and cannot be installed here; the API figure will come from httpx only (install wrk 4.x to measure it the issue's way)." >&2)

# Kafka Connect and Debezium's MongoDB connector (stack/debezium/pom.xml) for the bench's
# `debezium` phase only: `make test` and `make demo` never download them. Resolved into a fresh
# directory and swapped in, like the Kafka jars.
DEBEZIUM_LIBS := .stack/debezium/libs
DEBEZIUM_STAMP := $(DEBEZIUM_LIBS)/.resolved
debezium-jars: $(DEBEZIUM_STAMP)
$(DEBEZIUM_STAMP): stack/debezium/pom.xml | $(KAFKA_STAMP)
	rm -rf $(DEBEZIUM_LIBS).new
	mvn -q -B -f stack/debezium/pom.xml dependency:copy-dependencies \
	  -DoutputDirectory=$(abspath $(DEBEZIUM_LIBS)).new
	rm -rf $(DEBEZIUM_LIBS)
	mv $(DEBEZIUM_LIBS).new $(DEBEZIUM_LIBS)
	touch $@

# The default phases, the capacity ramp and Debezium included, in under 40 minutes (the first
# lines print the estimate). The ramp alone: `.venv/bin/python -m bench capacity`. Without
# Debezium's jars the other phases still run; the debezium phase records why it did not.
bench: setup wrk
	$(MAKE) debezium-jars || echo "bench: Debezium's jars could not be resolved (see above)" >&2
	$(BIN)/python -m bench

# Issue 14's phases, left out of `make bench` for time: 1, 2 and 4 relays draining one backlog,
# and our capacity ramp on stacks of 1 and 3 Kafka brokers.
bench-scaling: setup
	$(BIN)/python -m bench --only relays_scaling --only brokers

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# The documentation site (mkdocs.yml, docs/). The settings, HTTP API and CLI reference pages are
# generated from the code at build time (docs/hooks/). Port 8098: 8000-8004 are the services', 8090 the stack's token issuer.

docs: setup
	$(MKDOCS) serve --dev-addr 127.0.0.1:8098

# `make test` runs the same build beside the e2e tier: a broken link, a missing page or a failing
# generator fails the target (after the test tiers have run and reported).
docs-build: setup
	$(MKDOCS_STRICT)
