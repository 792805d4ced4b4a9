# `make demo` and `make test` are the only commands needed on a fresh clone: each creates
# .venv and installs the project (editable, with the dev extra) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sanegraph demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' editable import hook, and the four folders are the
# packages sanegraph.guards/graphs/checkpoints/cli: give it the same layout through links.
typecheck: $(STAMP)
	rm -rf .mypy_src && mkdir -p .mypy_src/sanegraph
	ln -s ../../guards .mypy_src/sanegraph/guards
	ln -s ../../graphs .mypy_src/sanegraph/graphs
	ln -s ../../checkpoints .mypy_src/sanegraph/checkpoints
	ln -s ../../cli .mypy_src/sanegraph/cli
	cd .mypy_src && ../$(BIN)/mypy --config-file ../pyproject.toml -p sanegraph.guards -p sanegraph.graphs -p sanegraph.checkpoints -p sanegraph.cli

pytest: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/budget.py
	$(BIN)/python bench/budget.py --loop
	$(BIN)/python bench/loops.py

clean:
	rm -rf $(VENV) .mypy_src .mypy_cache .ruff_cache
