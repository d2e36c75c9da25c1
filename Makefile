# Everything a fresh machine needs: python3, make and the package index.
#   make demo   - sprite videos -> VQ tokenizer -> token shards -> Toto tiny -> pictures (< 10 min on 2 CPU cores)
#   make test   - the whole test suite (8 simulated CPU devices, 2 pytest workers; ~9 min on 2 cores)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
DEMO_DIR ?= runs/demo
# Transparent huge pages for glibc malloc: XLA:CPU allocates its large temporaries afresh every
# step and otherwise spends a noticeable share of the step in page faults (see README).
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: demo test install install-test bench params clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: setup.cfg pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e '.[test,aot]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/python -m launch.demo --workdir $(DEMO_DIR)

test: install-test
	$(BIN)/python -m pytest -q -n 2

params: install
	$(BIN)/python -m launch.params

bench: install
	$(BIN)/python -m launch.bench toto --config configs/toto.py:tiny
	$(BIN)/python -m launch.bench toto --config configs/toto.py:base --seq_len 1024 --batch 1
	$(BIN)/python -m launch.bench tokenizer --which all --resolution 128 --batch 16 --repeats 5

clean:
	rm -rf $(VENV) runs *.egg-info
