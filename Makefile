# Surge: `make test` sets up everything the tests need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[gateway,flash,test]'
	touch $@

# Debian packages the tests drive for real: the Mosquitto broker (tests start
# their own on a free port; no running service is needed) and Node.js/npm.
system-deps:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q mosquitto; }
	@command -v npm >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nodejs npm; }

# solc (recompiles the contract), hardhat and Node.js 22 for the JSON-RPC tests.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: $(STAMP) system-deps node_modules/.installed
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) node_modules .pytest_cache .hypothesis
