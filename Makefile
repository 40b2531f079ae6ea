# The two commands of the README. Each one sets up everything it needs.
#   make demo  - virtualenv + install + local Kafka and PostgreSQL + the reference app end to end
#   make test  - virtualenv + install + the whole test suite (it starts and stops its own services)
#   make docs  - the documentation site into site/ (serve it with: .venv/bin/mkdocs serve)

PYTHON ?= python3
# test processes running at once (pytest-xdist; each starts its own Kafka and PostgreSQL); 0 = one process
PYTEST_WORKERS ?= 2
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
E2E    := $(BIN)/python -m pytest -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup --ignore=tests/unit

.PHONY: demo demo-mariadb test docs venv services-down clean bench bench-batch bench-brokers image k8s-check k8s-manifests asyncapi

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found %s)" % sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

venv: $(STAMP)

# DEMO_ARGS=--tracing: every process sends its spans to a local Jaeger (built once from its Go module), and
# the summary prints one order's trace (docs/tracing.md)
demo: $(STAMP)
	$(BIN)/python -m agents.demo $(DEMO_ARGS)

# the same reference app with everything it keeps in a database on the project's own MariaDB (Debian's
# mariadb-server, installed when missing); a mysql:// STREAMS_DATABASE_URL runs `make demo` on any MySQL 8 / MariaDB
demo-mariadb: $(STAMP)
	bash scripts/ensure-deb.sh $${STREAMS_MARIADBD:-/usr/sbin/mariadbd} mariadb-server
	$(BIN)/python -m agents.demo --database mariadb $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m streams.dev.prebuild start   # kube-apiserver, Jaeger, etcd, helm: built in the background, once (cached)
	$(BIN)/ruff check .                                # lint (rules in pyproject.toml)
	$(BIN)/mypy                                        # types of streams/
	$(BIN)/streams schema check --app agents.main:app   # message schemas: committed in schemas/, compatible versions
	bash scripts/asyncapi-validate.sh docs/asyncapi/reference-app.json   # the official AsyncAPI parser (npm, cached)
	$(BIN)/python -m pytest -p no:cacheprovider -q tests/unit   # the fast tier: pure logic, no servers
	mkdir -p .streams && NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir .streams/site 2>.streams/docs-build.log \
	  || { cat .streams/docs-build.log; exit 1; }   # the docs site: a broken link or a stale reference fails (log shown then)
	bash scripts/ensure-deb.sh $${STREAMS_CHROMIUM:-/usr/bin/chromium} chromium fonts-dejavu-core  # the dashboard's browser test
	bash scripts/ensure-deb.sh $${STREAMS_SSHD:-/usr/sbin/sshd} openssh-server openssh-sftp-server   # the SFTP server of batch tests
	bash scripts/ensure-deb.sh /usr/bin/sftp openssh-client   # OpenSSH's sftp client: partners' uploads in batch tests
	bash scripts/ensure-deb.sh $${STREAMS_MARIADBD:-/usr/sbin/mariadbd} mariadb-server   # MariaDB: the MySQL dialect's tests
	bash scripts/ensure-deb.sh $${STREAMS_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}/rabbitmq-server rabbitmq-server  # RabbitMQ of the broker tests
	bash scripts/ensure-deb.sh $${STREAMS_REDIS_SERVER:-/usr/bin/redis-server} redis-server  # Redis of the broker tests
	@# the end-to-end tier; on a first run, the tests needing a tool still being built run last, once it is ready
	if $(BIN)/python -m streams.dev.prebuild ready; then $(E2E) $(PYTEST_ARGS); else \
	  { $(E2E) -m "not built_tools" $(PYTEST_ARGS) || [ $$? = 5 ]; } && $(BIN)/python -m streams.dev.prebuild wait \
	  && { $(E2E) -m built_tools $(PYTEST_ARGS) || [ $$? = 5 ]; }; fi

# the documentation site (mkdocs.yml): site/index.html; `.venv/bin/mkdocs serve` serves it on
# http://127.0.0.1:8000 and rebuilds on every change
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'  # py-spy for --profile
	test -x $(VENV)-quix/bin/python || $(PYTHON) -m venv $(VENV)-quix   # Quix Streams, the peer, in its own environment
	$(VENV)-quix/bin/python -m pip install --quiet -e '.[quix]'
	$(BIN)/python -m bench.consume $(BENCH_ARGS)

bench-batch: $(STAMP)
	$(BIN)/python -m bench.batch $(BENCH_ARGS)

# Kafka, RabbitMQ, Redis Streams and Redis pub/sub, the same envelopes and handler (docs/brokers.md)
bench-brokers: $(STAMP)
	bash scripts/ensure-deb.sh $${STREAMS_RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}/rabbitmq-server rabbitmq-server
	bash scripts/ensure-deb.sh $${STREAMS_REDIS_SERVER:-/usr/bin/redis-server} redis-server
	$(BIN)/python -m bench.brokers $(BENCH_ARGS)

# the container image (buildah, no Docker): dist/streams-image.oci.tar, localhost/streams:<version>
image: $(STAMP)
	bash scripts/build-image.sh

# helm lint --strict, offline schemas (Kubernetes 1.35 + KEDA and ServiceMonitor CRDs, strict) and a server-side
# dry run against a real kube-apiserver + etcd (tools fetched or built once under ~/.cache/streams)
k8s-check: $(STAMP)
	$(BIN)/python -m streams.dev.kube check

# k8s/manifests/streams.yaml: the chart rendered with its default values (for kubectl apply -f), but with no
# generated web token (a token in a committed file would be everyone's): the Secret is filled before applying
k8s-manifests: $(STAMP)
	{ echo "# Rendered from k8s/charts/streams (default values, web.generateToken=false) by make k8s-manifests; do not edit."; \
	  echo "# Fill the Secret streams-secrets first (STREAMS_WEB_TOKEN: the workers do not start without it), then kubectl apply -n streams -f k8s/manifests/streams.yaml"; \
	  $(BIN)/python -m streams.dev.kube manifests; } > k8s/manifests/streams.yaml

services-down: $(STAMP)
	$(BIN)/streams dev down

clean: services-down
	rm -rf .streams test-artifacts site

# docs/asyncapi/reference-app.json: the reference app's services in one AsyncAPI 3.0 document (checked in sync by
# tests/unit/test_asyncapi.py, validated by the official parser in make test)
REFERENCE_APPS := agents.main:app agents.points:app agents.search_index:app agents.sms:app
asyncapi: $(STAMP)
	$(BIN)/streams asyncapi $(addprefix --app ,$(REFERENCE_APPS)) --title reference-app -o docs/asyncapi/reference-app.json
