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

TEACHER := $(RUN)/teacher/model.safetensors
STUDENT := $(RUN)/student/model.safetensors
# --resume when a stage was interrupted (checkpoint but no final model).
resume = $$(test -f $(1)/checkpoint.pt && test ! -f $(1)/model.safetensors && echo --resume)

data: $(DATA)/synthcity.json

$(DATA)/synthcity.json: | $(STAMP)
	$(PY) -m training data --out $(DATA)

$(TEACHER): training/configs/synthcity_daformer.yaml $(DATA)/synthcity.json | $(STAMP)
	$(PY) -m training teacher -c $< --out $(RUN)/teacher $(call resume,$(RUN)/teacher)

$(STUDENT): training/configs/synthcity_clda.yaml $(TEACHER) | $(STAMP)
	$(PY) -m training student -c $< --teacher $(TEACHER) --out $(RUN)/student $(call resume,$(RUN)/student)

# make train = data -> DAFormer teacher -> CLDA student; up-to-date stages are not retrained.
train: $(STUDENT)
	@$(PY) -c "import json; s = json.load(open('$(RUN)/student/metrics.json')); t = json.load(open('$(RUN)/student/teacher_metrics.json')); print(f'target-val mIoU: student {s[\"miou\"]:.2f}, teacher (after CLDA) {t[\"miou\"]:.2f}')"

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
