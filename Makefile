# Two commands do all the set-up on a fresh machine (Python 3.11, pip, gcc):
#   make demo   -> venv + install + a real 4-client federation on loopback
#   make test   -> venv + install + the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

CLIENTS ?= 4
ROUNDS  ?= 10
DATASET ?= wine

.PHONY: install demo test test-slow test-unit test-compose bench experiments clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU torch wheel first: a looser spec would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"  # test brings simulation and tracking
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/qfl launch --clients $(CLIENTS) --rounds $(ROUNDS) --dataset $(DATASET)

# everything but the long real federations and docker compose; CI runs test-slow and
# test-compose after it
test: install
	cd tests && ../$(PY) -m pytest -m "not docker and not slow"

# the long real federations (each says in its docstring why it is long)
test-slow: install
	cd tests && ../$(PY) -m pytest -m "slow and not docker"

# docker compose on a real engine, attacks on its perimeter included (root: starts dockerd;
# 10-19 minutes here on a fresh engine, base image and build included)
test-compose: install
	cd tests && ../$(PY) -m pytest -m docker

test-unit: install
	cd tests && ../$(PY) -m pytest -m "not integration"

bench: install
	$(PY) bench/client_training.py

# every named experiment over 10 seeds on the simulation engine (docs/experiments.md);
# an interrupted run resumes: finished runs are kept under experiments/<name>/runs
experiments: install
	$(VENV)/bin/qfl experiment all

clean:
	rm -rf $(VENV) runs .pytest_cache tests/.pytest_cache
