# forksafety: reproduce, explain and verify the fork-safety deadlock (Celery prefork + ChromaDB).
# `make` alone prints this help. Each target's exit code is the scenario's.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install check native-test-all native-test-prefork native-test-threads native-test-solo \
        native-test-gevent native-test-eventlet native-demo-crash native-demo-fixed native-demo-gdb \
        native-demo-lldb native-demo-strace bench lock

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-22s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	@touch $(PY)

install: $(PY) ## Create .venv and install the locked dependencies (hash-checked)

check: $(PY) ## Run the test suite (real workers, Redis, debuggers)
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

bench: $(PY) ## Benchmarks: pool matrix wall time (3 runs)
	$(PY) benchmarks/matrix.py $(ARGS)

lock: ## Regenerate requirements.lock from pyproject.toml (needs uv)
	uv lock
	uv export --format requirements-txt --hashes --no-emit-project --all-groups --no-header -o requirements.lock
