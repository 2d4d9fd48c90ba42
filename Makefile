# The two entry points of vigil: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv and installs the project into it when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed
INSTALL_LOG := $(VENV)/install.log

.PHONY: demo test test-stress lint typecheck trace clean

# pip's output goes to $(INSTALL_LOG); on failure its tail is shown.
define pip_install
	@echo "installing $(2) into $(VENV) (a few minutes the first time; log: $(INSTALL_LOG))"
	@$(PYTHON) -m venv $(VENV)
	@{ $(BIN)/python -m pip install --upgrade pip && $(BIN)/python -m pip install -e '$(1)'; } \
		>$(INSTALL_LOG) 2>&1 || { tail -n 25 $(INSTALL_LOG); \
		echo "error: pip failed; the whole log is $(INSTALL_LOG)" >&2; exit 1; }
endef

# What the demo needs: vigil and its run-time dependencies.
$(RUNTIME): pyproject.toml nodes/logger/_sealc.c nodes/ingest/_acceptguard.c
	$(call pip_install,.,vigil)
	@touch $(RUNTIME)

# What the suite needs besides: test, lint and typing tools, interop and benchmark baselines.
$(STAMP): pyproject.toml nodes/logger/_sealc.c nodes/ingest/_acceptguard.c
	$(call pip_install,.[dev],vigil and its development tools)
	@touch $(RUNTIME) $(STAMP)

demo: $(RUNTIME)
	@$(BIN)/vigil demo --launch launch/demo.yaml --duration 20 --summary run/demo-summary.json

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

# The integration and fault suites beside two CPU-burning processes: host load is no fault.
test-stress: $(STAMP)
	$(BIN)/python .ci/stress.py --burners 2 $(BIN)/python -m pytest -q tests/integration tests/faults

clean:
	rm -rf $(VENV) run build *.egg-info
