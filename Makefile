# gpulab: two commands do all the set-up.
#   make lab    create .venv, install the course, open JupyterLab on the start page
#   make test   create .venv if needed, run every test, notebooks included
# Variables: PYTHON (the interpreter for the venv), TORCH (the torch requirement: the
# default is a CPU build where the local index has it; for a GPU, e.g.
# TORCH=torch==2.11.0 and EXTRAS=dev,cu13), PORT, LAB_ARGS, JOBS, and CH (one chapter:
# `make test CH=06` runs tests/ch06_*/ and chapter 06's lecture and solution).

PYTHON  ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
EXTRAS  ?= dev
PORT    ?= 8888
LAB_ARGS ?=
JOBS    ?= 2
BIN     := $(VENV)/bin
# Jupyter refuses to run as root unless told to (containers and CI often are root)
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)
STAMP   := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup lab test test-fast test-gpu test-browser notebooks-gpu exercises doctor clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

# JupyterLab on the start page; without a GPU the kernels run on numba's CUDA simulator.
lab: $(STAMP)
	$(BIN)/gpulab exercises
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --port=$(PORT) $(ROOT_FLAG) $(LAB_ARGS) \
	    notebooks/00_start_here.ipynb

# Everything: package tests, course tooling, and every lecture and solution notebook
# under nbval. Files are the unit of distribution so a notebook's cells stay together.
# The chapter registry names what belongs to chapter CH (gpulab chapters --paths CH).
TEST_PATHS = $(if $(CH),$(shell $(BIN)/gpulab chapters --paths $(CH) 2>/dev/null || echo no-chapter-$(CH)),tests notebooks solutions)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --nbval-lax -p no:cacheprovider \
	    $(TEST_PATHS)

# The package tests alone (no notebooks).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile -p no:cacheprovider tests

# On a machine with a CUDA GPU: the GPU-only tests, then every notebook at full size.
test-gpu: $(STAMP)
	GPULAB_MODE=gpu $(BIN)/python -m pytest -m gpu -p no:cacheprovider tests
	GPULAB_MODE=gpu $(BIN)/python -m pytest --nbval-lax -p no:cacheprovider notebooks solutions

# End to end in a browser: JupyterLab started by `make lab`, notebooks run in headless Chromium
# (tests/browser). Uses Debian's chromium (CHROMIUM=path for another Chromium or Chrome),
# installed here with apt when missing and we are root, and the playwright package (never
# `playwright install`: no browser download).
CHROMIUM ?= /usr/bin/chromium
test-browser: $(STAMP)
	@if [ ! -x "$(CHROMIUM)" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        export DEBIAN_FRONTEND=noninteractive; \
	        apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
	            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }; \
	    else echo "test-browser: no Chromium at $(CHROMIUM): install Debian's chromium or pass CHROMIUM=..."; exit 1; fi; \
	fi
	@$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[$(EXTRAS),browser]"
	GPULAB_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -m browser -p no:cacheprovider -rs tests/browser

exercises: $(STAMP)
	$(BIN)/gpulab exercises

doctor: $(STAMP)
	$(BIN)/gpulab doctor

clean:
	rm -rf $(VENV) .pytest_cache
