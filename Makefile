# Two entry points: `make demo` and `make test`; `make docs` builds the documentation, `make dist`
# the release artefacts.
# All (re)build .venv first.
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned: on CPU-only machines this pin is a CPU wheel
TORCH ?= torch==2.13.0
# where pip finds it (e.g. https://download.pytorch.org/whl/cpu on a machine whose default is CUDA)
TORCH_INDEX ?=
BIN := $(VENV)/bin

# demo options (defaults: the embedded simulator)
DATA ?=
CONDITION ?= condition
CELL_TYPE ?= cell_type
HOLDOUT ?=
SOURCE ?=
TARGET ?=
OUT ?= demo_output

.PHONY: demo test docs dist venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

$(VENV)/.installed-dist: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet build twine
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test,docs]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/python scripts/demo.py --out $(OUT) \
	  $(if $(DATA),--data $(DATA) --condition-key $(CONDITION) --cell-type-key $(CELL_TYPE)) \
	  $(if $(HOLDOUT),--holdout $(HOLDOUT)) $(if $(SOURCE),--source $(SOURCE)) \
	  $(if $(TARGET),--target $(TARGET))

test: venv
	$(BIN)/python -m pytest

# warnings are errors; the tutorials/ notebooks (linked as docs/tutorials) are executed again (on
# the Kang file when it is present), so an API change that breaks them fails the build
docs: $(VENV)/.installed-docs
	rm -rf docs/generated
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

# release artefacts: sdist and wheel in dist/ (version from the git tag), their metadata checked,
# the wheel's contents checked (the package only) and the wheel installed into a fresh virtual
# environment, the pinned torch first, where it must import
dist: $(VENV)/.installed-dist
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/python -m twine check --strict dist/*
	$(BIN)/python scripts/check_dist.py dist --install --torch "$(TORCH)" \
	  $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache docs/_build docs/generated dist
