# The two commands of the README. Both create .venv idempotently and install the project into it.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
SETUP_HASH := $(shell cat setup.py | sha1sum | cut -c1-12)
STAMP_CORE := $(VENV)/.core-$(SETUP_HASH)
STAMP := $(VENV)/.installed-$(SETUP_HASH)
PYTEST_ARGS ?= -m "not slow"

.PHONY: install test test-slow quickstart clean

$(VPY):
	$(PY) -m venv $(VENV)

# torch is pinned first so the CPU build on local disk is taken instead of a multi-GB CUDA download. The quickstart
# needs only the runtime and its logging outputs (TensorBoard events, the reward plot); the test extras (triton,
# transformers, pytest, ...) take about as long again to install and come with `make test`. The runtime is installed
# without byte-compiling (--no-compile: ~20 s less on a fresh machine, the one quickstart process parses a little
# more source); `make test` byte-compiles the venv once, because its tests start many processes.
$(STAMP_CORE): $(VPY) setup.py
	$(VPY) -m pip install -q --no-compile "torch==2.13.0" || $(VPY) -m pip install -q --no-compile "torch>=2.6"
	$(VPY) -m pip install -q --no-compile -e ".[quickstart]"
	rm -f $(VENV)/.core-* && touch $(STAMP_CORE)

$(STAMP): $(STAMP_CORE)
	$(VPY) -m pip install -q -e ".[test]"
	$(VPY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true  # some third-party files need newer Pythons
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

test: install
	TRITON_INTERPRET=1 $(VPY) -m pytest -q $(PYTEST_ARGS) tests

# The slow tests (e.g. converting a 1.5B-shaped model, ~2 minutes and ~13 GB of disk) run on demand.
test-slow: install
	TRITON_INTERPRET=1 $(VPY) -m pytest -q -m slow tests

quickstart: $(STAMP_CORE)
	$(VPY) -m megatron_meml.train examples/quickstart/config.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
