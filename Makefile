PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean browser compiled

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tally demo

# Two workers, each with its own broker and PostgreSQL (session fixtures), a test file
# at a time (its module fixtures are built once): most of a test's time is waiting on
# subprocesses, so this halves the suite on two cores. `pytest` alone runs serially.
test: $(STAMP) browser compiled
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The engine's hot modules, compiled beside their sources (setup.py): only what changed
# is rebuilt, so that no test runs a binary older than its source.
compiled: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace -j 2

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
	rm -rf $(VENV) .venv-quix .tally build state/*.c state/*.so state/*.so.source-sha256
