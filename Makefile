# The two set-up commands of README.md: `make run` and `make test`.
# Each creates (or reuses) a virtual environment in .venv and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint bench venv clean

# What ruff checks and formats; mypy's file list is in pyproject.toml ([tool.mypy] files).
LINT_PATHS := bbcore fwdgrad lowbit analog beyondbp benchmarks tests examples docs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,docs]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/beyondbp compare --methods all --dataset mnist_small --steps 200 --out runs/compare

# Lint, format check and types first: a finding fails the test command (and so CI) in seconds.
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

# nbmake's default cell limit is 300 s; the compare notebook's one comparison cell took longer
# on a loaded 2-core machine (ci-local, stop 28), so cells get pytest-timeout's 900 s too.
test: lint
	$(PY) -m pytest -n 2 --dist loadgroup --nbmake --nbmake-timeout 900 --timeout 900 --junitxml=.test-results.xml

# The documentation site (mkdocs.yml), strict: a warning or broken reference fails it.
.PHONY: docs
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site  # mkdocs<2 is pinned

bench: $(STAMP)
	@echo "run the scripts in benchmarks/ (see BENCHMARKS.md), e.g. $(PY) benchmarks/foundation_backprop_mnist.py"

clean:
	rm -rf $(VENV) runs .test-results.xml
