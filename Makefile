# The two commands of the README. Each one sets up everything it needs.
#   make demo  - virtualenv + install + local Kafka and PostgreSQL + the reference app end to end
#   make test  - virtualenv + install + the whole test suite (it starts and stops its own services)

PYTHON ?= python3
# test processes running at once (pytest-xdist; each starts its own Kafka and PostgreSQL); 0 = one process
PYTEST_WORKERS ?= 2
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test venv services-down clean bench bench-batch

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s)" % sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m agents.demo

test: $(STAMP)
	$(BIN)/ruff check .                                # lint (rules in pyproject.toml)
	$(BIN)/mypy                                        # types of streams/
	$(BIN)/python -m pytest -p no:cacheprovider -q tests/unit   # the fast tier: pure logic, no servers
	bash scripts/ensure-chromium.sh  # Debian's chromium for the dashboard's browser test
	bash scripts/ensure-sshd.sh      # Debian's OpenSSH sshd for the batch-transfer tests' SFTP server
	$(BIN)/python -m pytest -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup --ignore=tests/unit $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'  # Quix Streams, a benchmark peer only
	$(BIN)/python -m bench.consume $(BENCH_ARGS)

bench-batch: $(STAMP)
	$(BIN)/python -m bench.batch $(BENCH_ARGS)

services-down: $(STAMP)
	$(BIN)/streams dev down

clean: services-down
	rm -rf .streams test-artifacts
