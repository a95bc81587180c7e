# clda-deploy: every target bootstraps .venv itself, so on a fresh clone the two commands are
#   make train export serve     and     make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
DATA ?= data/synthcity
RUN ?= runs/default

.PHONY: help setup data train export serve test bench lint gpu-check clean distclean

help:
	@echo "make train export serve   data -> teacher -> student -> ONNX/TensorRT -> HTTP on 127.0.0.1:8000"
	@echo "make test                 the test suite (what CI runs)"
	@echo "other targets: setup data bench lint gpu-check clean distclean"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "clda-deploy needs Python >= 3.10, found " + sys.version.split()[0]'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing clda-deploy[$(EXTRAS)] into $(VENV) (PyTorch is large: the first time takes a few minutes)"
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import clda_deploy, torch, timm" || { echo "installation into $(VENV) failed (see above)"; exit 1; }
	@touch $@

setup: $(STAMP)

data: $(STAMP)
	$(PY) -m training data --out $(DATA)

# make train = data -> DAFormer teacher (-> CLDA student in the CLDA release).
train: data
	$(PY) -m training teacher -c training/configs/synthcity_daformer.yaml --out $(RUN)/teacher
	@echo "make train: teacher written to $(RUN)/teacher. CLDA student training is not in this release yet;"
	@echo "available now: 'python -m training {data,teacher,eval}'." ; exit 2

# Export (export release) and serving (serving release) are not in this release: say so precisely.
export: $(STAMP)
	@echo "make export: ONNX/TensorRT export with the parity gate is not in this release yet." ; exit 2

serve: $(STAMP)
	@echo "make serve: the FastAPI segmentation service is not in this release yet." ; exit 2

bench: $(STAMP)
	@echo "make bench: the latency/accuracy benchmarks are not in this release yet." ; exit 2

gpu-check: $(STAMP)
	$(PY) -m training.gpu_check

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) runs
