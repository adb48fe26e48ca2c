# FlexLB — every developer and CI entry point. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BUF    := .tools/node_modules/.bin/buf
ZK_JAR := /usr/share/java/zookeeper.jar
export GRPC_VERBOSITY ?= ERROR

.PHONY: venv tools zookeeper promtool systemd-analyze proto lint test test-fast demo demo-ha bench-relay image clean

venv: $(STAMP)
$(STAMP): pyproject.toml setup.py flexlb/balancer/_blockhash.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# buf (proto lint) comes from the npm registry
tools: $(BUF)
$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1

# ZooKeeper for the high-availability tests (Debian's package; the tests start and stop it)
zookeeper:
	@if [ ! -f $(ZK_JAR) ]; then \
	  echo "installing Debian's zookeeper package"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null; \
	fi

# promtool (`promtool check metrics` on the scraped metrics in tests/test_metrics.py): Debian's prometheus package
promtool:
	@if ! command -v promtool >/dev/null 2>&1; then \
	  echo "installing Debian's prometheus package (for promtool)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	fi

# systemd-analyze (`systemd-analyze verify` of deploy/systemd/flexlb.service in tests/test_deploy.py): Debian's systemd
systemd-analyze:
	@if ! command -v systemd-analyze >/dev/null 2>&1; then \
	  echo "installing Debian's systemd package (for systemd-analyze)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; \
	fi

proto: venv
	$(BIN)/python scripts/gen_proto.py

lint: venv tools
	$(BIN)/ruff check flexlb tests bench scripts
	$(BIN)/mypy
	$(BUF) lint

test: venv tools zookeeper promtool systemd-analyze lint
	$(BIN)/pytest -q

test-fast: venv
	$(BIN)/pytest -q -x

demo: venv
	$(BIN)/flexlb demo

demo-ha: venv zookeeper
	$(BIN)/flexlb demo-ha

bench-relay: venv
	$(BIN)/python bench/relay.py --seconds 5 --repeat 3 --out docs/benchmarks.md

# the container image (needs a Docker daemon and the network, so not part of `make test`, whose
# tests/test_deploy.py lints the Dockerfile with hadolint and checks its rules)
IMAGE ?= flexlb:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache *.egg-info
