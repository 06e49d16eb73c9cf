# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/demo

.PHONY: demo test test-fast lint install utkface clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision both from PyPI (torch>=2.14): torchvision's ops need PyPI's own torch.
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

# A real Prometheus and promtool for the metrics and alert tests: the two binaries of Debian's
# `prometheus` package (static Go programs), unpacked into the venv: nothing is installed system-wide
# and no service starts. Without apt (or without root for `apt-get update` on a machine whose
# package lists are empty) this says so, and those tests skip, naming what is missing.
$(BIN)/.prometheus: $(BIN)/.installed
	@rm -rf $(VENV)/prometheus-deb && mkdir -p $(VENV)/prometheus-deb
	@cd $(VENV)/prometheus-deb && { apt-get download -qq prometheus 2>/dev/null \
	  || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download -qq prometheus 2>/dev/null; }; } \
	  && dpkg-deb -x prometheus_*.deb root \
	  && ln -sf ../prometheus-deb/root/usr/bin/prometheus ../bin/prometheus \
	  && ln -sf ../prometheus-deb/root/usr/bin/promtool ../bin/promtool \
	  && ../bin/promtool --version | head -1 \
	  || echo "no Debian prometheus package here: the Prometheus and alert-rule tests will skip"
	touch $@

install: $(BIN)/.installed $(BIN)/.prometheus

demo: $(BIN)/.installed
	$(BIN)/agejobs demo --workdir $(WORKDIR)

# The slowest tests are listed at the end: the suite must stay under 25 minutes on 2 cores.
test: $(BIN)/.installed $(BIN)/.prometheus
	$(BIN)/python -m pytest -q --durations=25

# The edit-test loop: everything that starts no Ray and spawns no gloo ranks (< 2 min on 2 cores).
# A test that starts Ray without the `ray` marker fails here, naming the marker (tests/conftest.py).
test-fast: $(BIN)/.installed
	AGEJOBS_TEST_FAST=1 $(BIN)/python -m pytest -q -m "not ray and not slow" --durations=5

# ruff: lint and format check, as CI runs them before the tests (`ruff format .` fixes the layout).
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The real-data benchmark (~41 min on 2 cores, budgets in epochs); needs ../shared beside the checkout.
utkface: $(BIN)/.installed
	$(BIN)/agejobs experiment -c configs/utkface.yaml --workdir runs/utkface

clean:
	rm -rf runs .pytest_cache
