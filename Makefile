# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test lint bench soak fuzz-soak clean

$(BIN)/ackgate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(BIN)/ackgate
	$(BIN)/ackgate demo

test: $(BIN)/ackgate lint
	$(BIN)/pytest

lint: $(BIN)/ackgate
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BIN)/ackgate
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The reliability suite at full size (kills, SIGTERM, replicas on PostgreSQL); prints the figures.
# SOAK_ARGS="--scenario crash --scale 0.4" runs a part of it.
soak: $(BIN)/ackgate
	$(BIN)/python -m tests.reliability.soak $(SOAK_ARGS)

# The fuzz suites at soak size (100,000 examples in all), every failure counted instead of stopping
# at the first; the figures go to fuzz-report.json. FUZZ_EXAMPLES=10000 for a shorter survey.
FUZZ_EXAMPLES ?= 100000
fuzz-soak: $(BIN)/ackgate
	rm -f fuzz-report.json
	ACKGATE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ACKGATE_FUZZ_PROFILE=soak ACKGATE_FUZZ_SURVEY=1 ACKGATE_FUZZ_REPORT=fuzz-report.json \
		$(BIN)/pytest tests/reliability/test_fuzz_*.py -p no:logging --show-capture=no; \
		status=$$?; $(BIN)/python -m tests.reliability.fuzz_report fuzz-report.json; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
