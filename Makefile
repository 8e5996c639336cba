PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# Set up everything and run the demo on the embedded defaults (SQLite, ORM broker, sandbox provider).
demo: venv
	$(BIN)/python manage.py demo

# The test-suite: SQLite by default; DATABASE_URL / REDIS_URL switch to PostgreSQL and Redis.
test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The benchmarks (see README, Performance); monitoring_api.py wants DATABASE_URL on PostgreSQL.
bench: venv
	$(BIN)/python bench/results.py
	$(BIN)/python bench/query.py
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var
