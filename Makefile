# Quick start:   make demo   (install + run the whole method on the embedded default)
#                make test   (install + run the test suite)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
EXTRAS ?= dev,rl,ray
PYTEST_ARGS ?= -n 2

.PHONY: install test test-fast demo demo-quick bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# both tiers (a plain `pytest` deselects the slow one, see pyproject.toml); `make test-fast`: the fast tier only
test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS) -m "not slow or slow" tests

test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS) -m "not slow" tests

demo: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/unime demo --out runs/demo

demo-quick: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/unime demo --quick --out runs/demo-quick

clean:
	rm -rf $(VENV) runs .pytest_cache
