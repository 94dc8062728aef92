# forksafety: reproduce, explain and verify the fork-safety deadlock (Celery prefork + ChromaDB).
# `make` alone prints this help. Each target succeeds exactly when its scenario does (0: every
# outcome as expected); on failure make shows the scenario's own code as "Error N" (1 mismatch,
# 2 usage/set-up) and, being GNU make, itself exits 2. `docker compose run --rm <service>`
# exits with the scenario's code unchanged.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=
UV     ?= uv
RUNNERS := multiprocessing gunicorn fastapi rq huey dramatiq uwsgi

# Docker Compose v2 (`docker compose`) when the plugin is there, else v1 (`docker-compose`).
ifeq ($(origin COMPOSE),undefined)
COMPOSE := $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
             elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; \
             else echo "docker compose"; fi)
endif
export COMPOSE_PROJECT_NAME ?= forksafety
RUN := $(COMPOSE) run --rm

.DEFAULT_GOAL := help
.PHONY: help build redis test-all test-prefork test-gevent test-eventlet test-threads test-solo \
        demo-crash demo-gdb demo-strace demo-fixed shell clean down test-docker \
        install check native-test-all native-test-prefork native-test-threads native-test-solo \
        native-test-gevent native-test-eventlet native-demo-crash native-demo-fixed native-demo-gdb \
        native-demo-lldb native-demo-strace native-clean docs check-app lab bench bench-tool lock system-deps versions \
        runners $(addprefix runners-,$(RUNNERS)) docker-runners $(addprefix docker-runners-,$(RUNNERS)) bench-runners

help:
	@echo "Docker (compose.yml; ARGS=... replaces a scenario's default arguments):"
	@awk 'BEGIN {FS = ":.*##D "} /^[a-zA-Z0-9_-]+:.*##D / {printf "  %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Without Docker (.venv from requirements.lock; ARGS=... is appended):"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "Variables: BASE_IMAGE (default python:3.12-slim), EXTRA_APT_PACKAGES, APP_IMAGE, REDIS_IMAGE, REDIS_PORT,"
	@echo "           COMPOSE (now \"$(COMPOSE)\"), COMPOSE_PROJECT_NAME (default forksafety)"

# ---- Docker ------------------------------------------------------------------------------
build: ##D Build the image (BASE_IMAGE=... picks the Python base image)
	$(COMPOSE) build test-all

redis: ##D Start Redis in the background, published on 127.0.0.1 only (port REDIS_PORT, default 6379)
	$(COMPOSE) up -d redis
	@for i in $$(seq 60); do \
	  cid=$$($(COMPOSE) ps -q redis); \
	  [ -n "$$cid" ] && [ "$$(docker inspect -f '{{.State.Health.Status}}' $$cid)" = healthy ] && \
	    { echo "Redis is up: REDIS_URL=redis://127.0.0.1:$${REDIS_PORT:-6379}/0"; exit 0; }; \
	  sleep 1; done; echo "Redis did not become healthy in 60 s: $(COMPOSE) logs redis" >&2; exit 1

test-all: ##D Pool matrix + prefork fix variants (crash_dumps/results.json)
	$(RUN) test-all $(ARGS)

test-prefork: ##D prefork pool only (HANG: the bug)
	$(RUN) test-prefork $(ARGS)

test-gevent: ##D gevent pool only
	$(RUN) test-gevent $(ARGS)

test-eventlet: ##D eventlet pool only
	$(RUN) test-eventlet $(ARGS)

test-threads: ##D threads pool only
	$(RUN) test-threads $(ARGS)

test-solo: ##D solo pool only
	$(RUN) test-solo $(ARGS)

demo-crash: ##D Fork demo without Celery: the child hangs
	$(RUN) demo-crash $(ARGS)

demo-gdb: ##D gdb attached to the stuck child: crash_dumps/gdb_*.log
	$(RUN) demo-gdb $(ARGS)

demo-strace: ##D The demo under strace -f: crash_dumps/strace_*.trace
	$(RUN) demo-strace $(ARGS)

demo-fixed: ##D Fork demo, store created after the fork: the child finishes
	$(RUN) demo-fixed $(ARGS)

shell: ##D A bash shell in the image, with Redis and ptrace
	$(RUN) shell $(ARGS)

clean: ##D Delete everything in crash_dumps/ but its README.md, and all Chroma data (chroma_data/)
	$(RUN) clean

down: ##D Stop and remove the containers and network (Redis included)
	$(COMPOSE) down --remove-orphans

docker-runners: ##D Runner matrix: Gunicorn, uWSGI, FastAPI+Celery, RQ, Huey, Dramatiq, multiprocessing
	$(RUN) runners $(ARGS)

docker-runners-multiprocessing: ##D multiprocessing only
	$(RUN) runners-multiprocessing $(ARGS)

docker-runners-gunicorn: ##D gunicorn only
	$(RUN) runners-gunicorn $(ARGS)

docker-runners-fastapi: ##D fastapi only
	$(RUN) runners-fastapi $(ARGS)

docker-runners-rq: ##D rq only
	$(RUN) runners-rq $(ARGS)

docker-runners-huey: ##D huey only
	$(RUN) runners-huey $(ARGS)

docker-runners-dramatiq: ##D dramatiq only
	$(RUN) runners-dramatiq $(ARGS)

docker-runners-uwsgi: ##D uwsgi only
	$(RUN) runners-uwsgi $(ARGS)

test-docker: ##D Prove the Docker path on a machine without a registry (root; tests/docker/run.sh)
	bash tests/docker/run.sh

# ---- Without Docker ----------------------------------------------------------------------
$(PY): requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "make install: $(PYTHON) is Python `$(PYTHON) -c 'import platform; print(platform.python_version())'`; this project needs 3.11 or newer: make install PYTHON=python3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements.lock
	$(PY) -m pip check
	$(PY) scripts/check_lock.py --installed
	@touch $(PY)

install: $(PY) ## Create .venv and install the locked dependencies (hash-checked)

system-deps: ## Install redis-server, gdb, lldb, strace, lsof, procps when missing (apt-get; root or sudo)
	bash scripts/system_deps.sh

check: $(PY) system-deps ## Run the test suite (real workers, Redis, debuggers); installs what it needs first
	$(PY) -m pytest $(ARGS)

native-test-all: $(PY) ## Pool matrix + prefork fix variants, without Docker
	$(PY) celery_examples/run_test.py --all --json crash_dumps/results.json $(ARGS)

native-test-prefork: $(PY) ## prefork pool only, without Docker (HANG on Linux)
	$(PY) celery_examples/run_test.py --pool prefork $(ARGS)

native-test-threads: $(PY) ## threads pool only, without Docker
	$(PY) celery_examples/run_test.py --pool threads $(ARGS)

native-test-solo: $(PY) ## solo pool only, without Docker
	$(PY) celery_examples/run_test.py --pool solo $(ARGS)

native-test-gevent: $(PY) ## gevent pool only, without Docker
	$(PY) celery_examples/run_test.py --pool gevent $(ARGS)

native-test-eventlet: $(PY) ## eventlet pool only, without Docker
	$(PY) celery_examples/run_test.py --pool eventlet $(ARGS)

native-demo-crash: $(PY) ## Fork demo without Celery: the child hangs
	$(PY) scripts/demo_crash.py $(ARGS)

native-demo-fixed: $(PY) ## Fork demo, store created after the fork: the child finishes
	$(PY) scripts/demo_crash.py --fixed $(ARGS)

native-demo-gdb: $(PY) ## gdb attached to the stuck child: crash_dumps/gdb_*.log
	$(PY) scripts/gdb_attach_child.py $(ARGS)

native-demo-lldb: $(PY) ## lldb attached to the stuck child: crash_dumps/lldb_*.log
	$(PY) scripts/lldb_attach_child.py $(ARGS)

native-demo-strace: $(PY) ## The demo under strace -f: crash_dumps/strace_*.trace
	$(PY) scripts/demo_crash.py --strace $(ARGS)

native-clean: ## Delete everything in crash_dumps/ but its README.md, chroma_data/, chroma_db/, and build/ + forksafety.egg-info/ (left by pip install .)
	find crash_dumps -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf chroma_data chroma_db build forksafety.egg-info

runners: $(PY) ## Runner matrix: each runner with the bug and its fix (crash_dumps/runners.json)
	$(PY) scripts/run_runners.py --all --json crash_dumps/runners.json $(ARGS)

runners-multiprocessing: $(PY) ## multiprocessing only: the bug and its fix
	$(PY) scripts/run_runners.py --runner multiprocessing $(ARGS)

runners-gunicorn: $(PY) ## gunicorn only: the bug and its fix
	$(PY) scripts/run_runners.py --runner gunicorn $(ARGS)

runners-fastapi: $(PY) ## fastapi only: the bug and its fix
	$(PY) scripts/run_runners.py --runner fastapi $(ARGS)

runners-rq: $(PY) ## rq only: the bug and its fix
	$(PY) scripts/run_runners.py --runner rq $(ARGS)

runners-huey: $(PY) ## huey only: the bug and its fix
	$(PY) scripts/run_runners.py --runner huey $(ARGS)

runners-dramatiq: $(PY) ## dramatiq only: the bug and its fix
	$(PY) scripts/run_runners.py --runner dramatiq $(ARGS)

runners-uwsgi: $(PY) ## uwsgi only: the bug and its fix
	$(PY) scripts/run_runners.py --runner uwsgi $(ARGS)

bench-runners: $(PY) ## Benchmark: runner matrix wall time and HANG verdict latency
	$(PY) benchmarks/runners.py $(ARGS)

docs: $(PY) ## Run the captures (demo, gdb, strace, matrix) and regenerate the captured blocks of README.md and docs/
	$(PY) scripts/make_docs.py $(ARGS)

check-app: $(PY) ## What a fork would break in the bug's task module (UNSAFE, as it should be: make says "ignored")
	-$(PY) -m forksafety check celery_examples/tasks_pool_test.py $(ARGS)

lab: $(PY) ## The checker's case corpus: a real fork's outcome against the check's verdict
	$(PY) -m forksafety lab --all $(ARGS)

versions: $(PY) ## Version matrix: the report's env, chromadb 0.6.3 / 1.0.0, Python 3.12 / 3.13 (envs cached in .versions/)
	$(PY) scripts/versions.py $(ARGS)

bench: $(PY) ## Benchmarks: pool matrix wall time (3 runs)
	$(PY) benchmarks/matrix.py $(ARGS)

bench-tool: $(PY) ## Benchmarks of the installable tool: wheel install, inspect latency, plugin and check overhead
	$(PY) benchmarks/tool.py $(ARGS)

lock: ## Regenerate requirements.lock from pyproject.toml (uv), then prove it installs as a closed set
	@command -v $(UV) >/dev/null 2>&1 || [ -x .tools/bin/uv ] || \
	  { $(PYTHON) -m venv .tools && .tools/bin/python -m pip install --quiet uv; }
	$$(command -v $(UV) || echo .tools/bin/uv) lock
	$$(command -v $(UV) || echo .tools/bin/uv) export --format requirements-txt --hashes --no-emit-project \
	  --all-groups --no-header -o requirements.lock > /dev/null
	$(PYTHON) scripts/check_lock.py --lock requirements.lock
