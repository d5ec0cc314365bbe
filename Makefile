# Two commands do all setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv lint types test demo bench clean

# pip compiles the environment's ~16,000 modules one at a time (about 70 s of CPU); compiled
# afterwards on every core instead. Not left to first import: the tests' first trainers would
# pay for it within their start-up timeouts. A few files are meant for newer Pythons (torch has
# py312 examples): pip skips them silently, and so does this ("-").
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e '.[dev,torch,plot]'
	-$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

types: $(STAMP)
	$(BIN)/mypy src

# worksteal: a worker that runs out of tests takes some of the other's queue, so the few
# minute-long end-to-end tests do not leave one core idle at the end.
test: lint types
	$(BIN)/pytest -n 2 --dist worksteal $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python bench/relaunch.py

clean:
	rm -rf $(VENV) .stalwart .demo .mypy_cache .pytest_cache .ruff_cache
