# The two commands a newcomer needs: `make run` and `make test`.
# Each one builds .venv from the committed, hash-pinned requirements.lock with nothing but python3.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export UV_PYTHON_DOWNLOADS := never

.PHONY: run test lint bench lock clean migration

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mdm serve

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(VENV)/bin/python -m bench

migration: $(STAMP)
	$(VENV)/bin/python -m mdm.migrate "$(MESSAGE)"

# Re-resolves requirements.lock after a change to pyproject.toml (needs uv, bootstrapped from PyPI).
lock:
	$(PYTHON) -m venv .uv-tool && .uv-tool/bin/pip install --quiet uv==0.13.8
	.uv-tool/bin/uv pip compile pyproject.toml --group dev --generate-hashes --universal \
		--python-version 3.11 --no-header -o requirements.lock

clean:
	rm -rf $(VENV) .uv-tool .pytest_cache .import_linter_cache
