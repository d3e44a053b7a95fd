# tollgate: one command each. `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-cluster fuzz lint docs bench bench-scaling bench-soak clean

install: $(STAMP)

# Re-install only when the dependency pins change; otherwise this is a no-op.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install -qq --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

run: install
	$(BIN)/tollgate serve

# Two workers: the machine has two cores, and most of the suite waits on servers and databases.
# loadgroup: tests marked with one xdist_group (the browser tests) run on one worker.
test: install
	$(BIN)/pytest -n 2 --dist loadgroup

# The nightly cluster test: three gateways behind nginx, 20 seeds per scenario (make test runs 2).
CLUSTER_TEST_RUNS ?= 20
test-cluster: install
	CLUSTER_TEST_RUNS=$(CLUSTER_TEST_RUNS) $(BIN)/pytest tests/deploy/test_cluster.py

# The nightly fuzz: tests/fuzz with more generated requests per operation than `make test`'s
# 200, on SQLite and on PostgreSQL. FUZZ_EXAMPLES=n sets the count; the per-test timeout is
# off, since one operation's run can outlast it.
FUZZ_EXAMPLES ?= 1000
FUZZ := TOLLGATE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -n 2 --timeout 0 tests/fuzz
fuzz: install
	$(FUZZ)
	TOLLGATE_FUZZ_DATABASE=postgresql $(FUZZ)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Regenerate the parts of docs/ that are generated (the configuration reference's key table).
docs: install
	$(BIN)/python -m tollgate.settings_reference

bench: install
	bash bench/run.sh

# The scaling curve: 1, 2, 4 workers x 1, 10, 1,000 accounts (bench/scaling.py; not in `bench`).
bench-scaling: install
	BENCH_ONLY=scaling bash bench/run.sh

# The memory soak: 10 minutes at half the peak load (bench/soak.py; not in `bench`).
bench-soak: install
	BENCH_ONLY=soak bash bench/run.sh

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
