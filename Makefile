# The two entry points of vigil: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv and installs the project into it when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck trace clean

$(STAMP): pyproject.toml nodes/logger/_sealc.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vigil demo --launch launch/demo.yaml --duration 20 --summary run/demo-summary.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	# mypy over every module of the package, each named vigil.* (the root is the package).
	$(BIN)/python .ci/typecheck.py

# Every safety requirement traced to code and tests; the shipped launch files pass the graph check.
trace: $(STAMP)
	mkdir -p run
	$(BIN)/vigil fsc --output run/traceability.md
	$(BIN)/vigil graph check launch/demo.yaml
	$(BIN)/vigil graph check launch/target.yaml

test: lint typecheck trace
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) run build *.egg-info
