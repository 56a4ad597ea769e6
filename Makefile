# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean gpu-check gpu-wheels

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

# On a CUDA machine (issue 14): the GPU tests, then benchmarks/gpu_check.py (recogniser and model batched
# up to 512 live streams, one stream end to end), written to GPU_OUT: bench-gpu.json, bench-gpu.png,
# gpu-tests.log. It runs on that machine's own python3 with CUDA torch; the runtime's other dependencies
# come from .whl/, which `make gpu-wheels` fills beforehand wherever PyPI is reachable (for GPU_PY).
GPU_OUT ?= benchmarks
gpu-check:
	benchmarks/gpu_check.sh $(GPU_OUT)

GPU_PY ?= 3.12
GPU_WHEELS := pyzmq==27.3.0 soxr==1.1.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 librosa==0.11.0 \
	audioread==3.1.0 pooch==1.9.0 decorator==5.3.1 platformdirs==4.14.8 hama==1.7.0 num2words==0.5.14 \
	python-osc==1.10.2 \
	websockets==17.4 sounddevice==0.5.6 silero-vad==6.2.3
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
		--platform manylinux_2_5_x86_64 --platform any -d .whl $(GPU_WHEELS)
