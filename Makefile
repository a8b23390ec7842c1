# Deep Learning for Remote Sensing: the two commands are `make course` and `make test`.
# Everything runs inside .venv, which `make setup` creates on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.course-installed
# The oldest Python every pinned package accepts (soupsieve 4.1.2, through nbconvert, needs 3.11.5);
# tests/test_environment_files.py checks it against the installed packages' Requires-Python.
MIN_PYTHON := 3.11.5
# `make test` runs the notebooks in smoke mode; `COURSE_MODE=full make test` is the GPU-kernel run.
TEST_MODE ?= $(or $(COURSE_MODE),smoke)
# pytest-xdist workers: notebooks are spread over workers, a notebook's cells stay on one (loadscope).
WORKERS ?= 2
# torch build for `make setup`: auto, cpu or cuda (see tools/install.py)
TORCH ?= auto

.PHONY: help setup data course test unit nbtest lint strip lab clean bench wheels student figures html

help:
	@echo "make course   set up, generate the data, run every notebook (default mode), print the results table"
	@echo "make test     set up, lint, unit tests + every notebook under nbval in smoke mode"
	@echo "make data     generate the course data for the current mode (done by make course too)"
	@echo "make lab      open the notebooks in JupyterLab"
	@echo "make strip    strip outputs from the notebooks before a commit"
	@echo "make lint     ruff over code and notebooks"
	@echo "make student  regenerate notebooks/student/ (exercises without solutions) from the notebooks"
	@echo "make figures  redraw the diagrams in figures/ (deterministic)"
	@echo "make html     render every notebook to build/html/ (from build/executed/ when make course ran)"
	@echo "make book     the course as a website readable offline, into build/book/ (from build/executed/)"
	@echo "make bench    training throughput (course loop vs naive loop) and data-wait share -> benchmarks/results/"
	@echo "make wheels   download the wheels for an offline GPU machine (Python 3.12, torch installed) into wheels/"
	@echo "make clean    remove executed notebooks and results (keeps .venv and the data cache)"

setup: $(STAMP)

# torch and torchvision are pinned as a pair in constraints.txt and installed as a pair by tools/install.py:
# TORCH=auto (default) takes PyTorch's CPU build on Linux without an NVIDIA driver (a tenth of the size),
# PyPI's build otherwise; TORCH=cpu / TORCH=cuda force one. A stray local CPU wheel of torch must not be
# mixed with PyPI's torchvision ("operator torchvision::nms does not exist"): the pair comes from one index.
$(STAMP): pyproject.toml constraints.txt tools/check_env.py tools/install.py
	@$(PYTHON) -c 'import sys; need = tuple(map(int, "$(MIN_PYTHON)".split("."))); sys.version_info[:3] >= need or sys.exit( \
		f"Python {sys.version.split()[0]} is too old: the tested pins (constraints.txt) need Python $(MIN_PYTHON) or newer. " \
		"Install Python 3.12 (python.org, pyenv, uv python install 3.12, or your system packages) and run make setup PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(PY) tools/install.py --torch $(TORCH)
	$(PY) tools/check_env.py
	@touch $(STAMP)

data: setup
	$(PY) -m course_utils.data

course: data
	$(PY) tools/run_course.py

test: setup lint
	COURSE_MODE=$(TEST_MODE) OMP_NUM_THREADS=1 $(PY) -m pytest -n $(WORKERS) --dist loadscope \
		--nbval-lax --nbval-current-env tests notebooks

unit: setup
	$(PY) -m pytest tests

nbtest: setup
	COURSE_MODE=$(TEST_MODE) $(PY) -m pytest --nbval-lax --nbval-current-env notebooks

lint: setup
	$(BIN)/ruff check .
	$(PY) tools/notebooks.py check

strip: setup
	$(PY) tools/notebooks.py strip

lab: setup
	$(BIN)/jupyter lab notebooks

student: setup
	$(PY) tools/notebooks.py student

figures: setup
	$(PY) -m course_utils.figures

html: setup
	$(PY) tools/notebooks.py html

# An index (agenda, results, claims, links) and a page per notebook, MathJax copied in: nothing is
# loaded from the web. MathJax 3 is fetched once with npm into build/mathjax/ (or set MATHJAX_DIR).
.PHONY: book
book: setup
	$(PY) tools/book.py

BENCH_ARGS ?= --epochs 3 --samples-per-epoch 48

bench: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) benchmarks/bench_training.py $(BENCH_ARGS)
	$(PY) benchmarks/summary.py

wheels: setup
	$(PY) tools/collect_wheels.py --dest wheels

clean:
	rm -rf build results
