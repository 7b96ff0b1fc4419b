# Two commands on a fresh machine: `make run` (the demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test bench check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	@echo "interlook demo: API on http://127.0.0.1:8080/services"
	@echo "edit deploy/demo/services.yml to add or remove services;"
	@echo "in another terminal: $(BIN)/interlook status -c deploy/demo/interlook.yml"
	$(BIN)/interlook up -c deploy/demo/interlook.yml

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_bus.py

check: $(STAMP)
	$(BIN)/interlook check -c deploy/demo/interlook.yml

clean:
	rm -rf $(VENV) deploy/demo/var
