# Quick start:
#   make run    install missing apt packages (as root), build Release, load
#               Fashion-MNIST into ./data, search it, print recall and latency,
#               then serve ./data with cairnd on 127.0.0.1:7600 (Ctrl-C stops)
#   make test   the same setup, then the default test suite
#   make cluster       the same setup, then a local 3-node cairnd --cluster on
#                      loopback (gRPC 127.0.0.1:7600, :7610, :7620), left running;
#                      scripts/local-cluster.sh status | kill I | restart I | stop
#
# Variables: BUILD (build directory, default build), SANITIZE (e.g.
# address,undefined: builds into build-<name> and runs the unit, crash and
# simulation tests).

SANITIZE ?=
ifeq ($(SANITIZE),)
BUILD ?= build
BUILD_TYPE ?= Release
TEST_LABELS ?=
else
BUILD ?= build-$(subst $(comma),-,$(SANITIZE))
BUILD_TYPE ?= RelWithDebInfo
TEST_LABELS ?= -L 'unit|crash|simulation'
endif
comma := ,
JOBS ?= $(shell nproc)

SETUP = scripts/install-deps.sh && \
  cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DCAIRN_SANITIZE=$(SANITIZE) >/dev/null && \
  cmake --build $(BUILD) -j $(JOBS)

.PHONY: run test cluster cluster-stop
run:
	@$(SETUP)
	$(BUILD)/bin/cairn_quickstart --data ./data
	@echo "cairnd: serving ./data on 127.0.0.1:7600 (gRPC) and 127.0.0.1:7601 (/metrics); Ctrl-C stops it"
	$(BUILD)/bin/cairnd --data-dir ./data --insecure-no-auth

test:
	@$(SETUP)
	ctest --test-dir $(BUILD) -LE slow $(TEST_LABELS) --output-on-failure -j $(JOBS) --timeout 900

cluster:
	@$(SETUP)
	CAIRN_BUILD=$(BUILD) scripts/local-cluster.sh start 3

cluster-stop:
	CAIRN_BUILD=$(BUILD) scripts/local-cluster.sh stop
