# Quick start:  make run   (sets up .venv on first use, then opens the live window)
#               make test  (sets up .venv and the Debian test tools on first use, then runs every test)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
APT_PACKAGES := xvfb xdotool ffmpeg imagemagick libgl1 libglib2.0-0 chromium

.PHONY: run demo test lint bench gpu-check system-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/live-attention $(ARGS)

demo: $(STAMP)
	$(BIN)/live-attention --config configs/demo.toml $(ARGS)

# Debian/Ubuntu tools the GUI, video, recording and browser (serve) tests use (installed only when missing).
system-deps:
	@missing=""; for c in Xvfb xdotool ffprobe import chromium; do command -v $$c >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

# The style checker and the type checker (its settings: pyproject.toml's [tool.ruff] and [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check live_attention tests
	$(BIN)/mypy live_attention

bench: $(STAMP)
	$(BIN)/live-attention bench $(ARGS)

# The cuda tests and one table of the GPU figures (tests/gpu_check.py). No setup step: it runs with this
# checkout's .venv when there is one, else with python3 (a GPU machine with torch installed); without a
# GPU it says so in one line and succeeds.
GPU_PY = $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
gpu-check:
	@PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(GPU_PY) -m tests.gpu_check $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
