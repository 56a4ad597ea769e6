# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

# torch is pinned and installed first on its own: the pinned version resolves to the CPU wheel,
# so nothing later pulls a CUDA build. silero-vad ships the voice gate's model (engine/gate.py); its
# Python code (which would pull an unpinned torch) is not used, so it comes without dependencies.
$(STAMP): pyproject.toml sdk_python/pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ./sdk_python -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps silero-vad==6.2.3
	touch $(STAMP)

# The runtime as a user meets it: `serve` plays the bundled sample speech in real time, an SDK
# client prints frames/s and latency and plots what it received; then the same speech baked offline.
demo: setup
	mkdir -p out
	$(BIN)/ksdiff-runtime demo --out out/demo.png
	$(BIN)/ksdiff-runtime bake -o out/sample_speech.csv --plot out/sample_speech.png
	@echo "demo: out/demo.png (live, as received), out/sample_speech.csv (Live Link Face layout), out/sample_speech.png"

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache
