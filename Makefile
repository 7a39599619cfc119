# gpulab: two commands do all the set-up.
#   make lab    create .venv, install the course, open JupyterLab on the start page
#   make test   create .venv if needed, run every test, notebooks included
# Variables: PYTHON (the interpreter for the venv), TORCH (the torch requirement: the
# default is a CPU build where the local index has it; for a GPU, e.g.
# TORCH=torch==2.11.0 and EXTRAS=dev,cu13), PORT, LAB_ARGS, JOBS.

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

.PHONY: setup lab test test-fast test-gpu notebooks-gpu exercises doctor clean

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
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --nbval-lax -p no:cacheprovider \
	    tests notebooks solutions

# The package tests alone (no notebooks).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile -p no:cacheprovider tests

# On a machine with a CUDA GPU: the GPU-only tests, then every notebook at full size.
test-gpu: $(STAMP)
	GPULAB_MODE=gpu $(BIN)/python -m pytest -m gpu -p no:cacheprovider tests
	GPULAB_MODE=gpu $(BIN)/python -m pytest --nbval-lax -p no:cacheprovider notebooks solutions

exercises: $(STAMP)
	$(BIN)/gpulab exercises

doctor: $(STAMP)
	$(BIN)/gpulab doctor

clean:
	rm -rf $(VENV) .pytest_cache
