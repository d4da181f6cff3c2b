# Quick start:   make demo   (install + run the whole method on the embedded default)
#                make test   (install + run the test suite)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
EXTRAS ?= dev,rl,ray,serve,data
PYTEST_ARGS ?= -n 2

.PHONY: install test test-fast demo demo-quick bench clean serve browser

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

# `make serve`: index the demo world with the demo's UniME-V2 embedder and serve it with its reranker
# (loopback, no auth; open http://127.0.0.1:$(SERVE_PORT)/ for the search page, /docs for the API).
DEMO       ?= runs/demo
SERVE_PORT ?= 8000
SERVE_EMB  ?= $(firstword $(wildcard $(DEMO)/embedders/soft_s*/merged))
serve: install
	@test -n "$(SERVE_EMB)" -a -f "$(DEMO)/reranker/unime_reranker.json" || \
		{ echo "no trained demo models under $(DEMO): run 'make demo' first"; exit 2; }
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/unime index build --model $(SERVE_EMB) \
		--items $(DEMO)/world/items.jsonl --data-root $(DEMO)/world --out $(DEMO)/index --cache-dir $(DEMO)/cache/index
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/unime serve --model $(SERVE_EMB) --reranker $(DEMO)/reranker \
		--index $(DEMO)/index --host 127.0.0.1 --port $(SERVE_PORT) --no-auth

# headless Chromium for the search page's browser test (Debian packages; the test skips without it)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -q && apt-get install -y -q chromium chromium-driver; } || \
		echo "could not install chromium: the browser test will be skipped"

clean:
	rm -rf $(VENV) runs .pytest_cache
