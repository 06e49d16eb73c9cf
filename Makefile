# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/demo

.PHONY: demo test install utkface clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision both from PyPI (torch>=2.14): torchvision's ops need PyPI's own torch.
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/agejobs demo --workdir $(WORKDIR)

# The slowest tests are listed at the end: the suite must stay under 25 minutes on 2 cores.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q --durations=25

# The real-data benchmark (~41 min on 2 cores, budgets in epochs); needs ../shared beside the checkout.
utkface: $(BIN)/.installed
	$(BIN)/agejobs experiment -c configs/utkface.yaml --workdir runs/utkface

clean:
	rm -rf runs .pytest_cache
