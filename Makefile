PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean browser

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tally demo

test: $(STAMP) browser
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The report test renders in a real headless Chromium, from Debian's packages.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver >/dev/null; }

# bench/quix.py's peer (quixstreams) in a venv of its own: see pyproject.toml's bench extra
$(VENV)/.bench: $(STAMP) bench/quix-requirements.txt
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.quix --setup
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .venv-quix .tally
