# Two entry points: `make demo` and `make test`. Both (re)build .venv first.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned: on CPU-only machines this pin is a CPU wheel
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

# demo options (defaults: the embedded simulator)
DATA ?=
CONDITION ?= condition
CELL_TYPE ?= cell_type
HOLDOUT ?=
SOURCE ?=
TARGET ?=
OUT ?= demo_output

.PHONY: demo test venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/python scripts/demo.py --out $(OUT) \
	  $(if $(DATA),--data $(DATA) --condition-key $(CONDITION) --cell-type-key $(CELL_TYPE)) \
	  $(if $(HOLDOUT),--holdout $(HOLDOUT)) $(if $(SOURCE),--source $(SOURCE)) \
	  $(if $(TARGET),--target $(TARGET))

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
