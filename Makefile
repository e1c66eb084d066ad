# The two commands: `make demo` (the embedded end-to-end run) and `make test` (the fast test suite).
# Both create/refresh the virtual environment first; nothing else needs installing by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel; users with a GPU set TORCH to their CUDA build (e.g. make TORCH=torch==2.13.0 ...).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench wordnet chromium clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[all,test]"
	touch $@

# WordNet 3.0 from Debian, for the synonym paraphraser and neighbours (tests that need it skip without it).
wordnet:
	@if [ ! -f /usr/share/wordnet/data.noun ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq wordnet-base wordnet-sense-index) >/dev/null 2>&1 \
	      || echo "note: could not install WordNet; its tests will be skipped"; \
	  else echo "note: WordNet missing (sudo apt-get install wordnet-base wordnet-sense-index); its tests will be skipped"; fi; \
	fi

# Headless Chromium from Debian, for the test that opens report.html in a real browser (skipped without it).
chromium:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	      || echo "note: could not install Chromium; the browser check of report.html will be skipped"; \
	  else echo "note: Chromium missing (sudo apt-get install chromium); the browser check of report.html will be skipped"; fi; \
	fi

demo: setup
	$(VENV)/bin/tuneguard demo

test: setup wordnet chromium
	$(PY) -m pytest -q

test-slow: setup wordnet chromium
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) bench/bench_finetune.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
