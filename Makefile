# clda-deploy: every target bootstraps .venv itself, so on a fresh clone the two commands are
#   make train export serve     and     make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# NO_VENV=1 runs every target with $(PYTHON) as it is (an image with PyTorch already installed, e.g.
# a GPU machine without network): no .venv, no pip; missing packages then fail at import.
ifdef NO_VENV
PY := $(PYTHON)
STAMP := .no-venv-stamp
endif
DATA ?= data/synthcity
RUN ?= runs/default

# A recipe that fails (e.g. the parity gate) removes its target, so the next make retries it.
.DELETE_ON_ERROR:

.PHONY: help setup data train export serve test bench lint gpu-check clean distclean

help:
	@echo "make train export serve   data -> teacher -> student -> ONNX/TensorRT -> HTTP on 127.0.0.1:8000"
	@echo "make test                 the test suite (what CI runs)"
	@echo "other targets: setup data bench lint gpu-check clean distclean"

ifdef NO_VENV
$(STAMP):
	@$(PY) -c "import torch, timm, safetensors, yaml" || { echo "NO_VENV=1: $(PY) lacks clda-deploy's dependencies (see pyproject.toml)"; exit 1; }
	@echo "NO_VENV=1: using $$($(PY) -c 'import sys; print(sys.executable)') as it is"
.PHONY: $(STAMP)
else
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "clda-deploy needs Python >= 3.10, found " + sys.version.split()[0]'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing clda-deploy[$(EXTRAS)] into $(VENV) (PyTorch is large: the first time takes a few minutes)"
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]" 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import clda_deploy, torch, timm" || { echo "installation into $(VENV) failed (see above)"; exit 1; }
	@touch $@
endif

setup: $(STAMP)

TEACHER := $(RUN)/teacher/model.safetensors
STUDENT := $(RUN)/student/model.safetensors
# --resume when a stage was interrupted (checkpoint but no final model).
resume = $$(test -f $(1)/checkpoint.pt && test ! -f $(1)/model.safetensors && echo --resume)

data: $(DATA)/synthcity.json

# Rechecked when the generator's code changes: the same benchmark is reused untouched (so nothing
# downstream retrains), and a folder written by another generator version is refused with a message
# saying so, rather than silently trained on.
$(DATA)/synthcity.json: $(wildcard clda_deploy/data/synthcity/*.py) clda_deploy/data/labels.py clda_deploy/data/layouts.py | $(STAMP)
	$(PY) -m training data --out $(DATA)

$(TEACHER): training/configs/synthcity_daformer.yaml $(DATA)/synthcity.json | $(STAMP)
	$(PY) -m training teacher -c $< --out $(RUN)/teacher $(call resume,$(RUN)/teacher)

$(STUDENT): training/configs/synthcity_clda.yaml $(TEACHER) | $(STAMP)
	$(PY) -m training student -c $< --teacher $(TEACHER) --out $(RUN)/student $(call resume,$(RUN)/student)

# make train = data -> DAFormer teacher -> CLDA student; up-to-date stages are not retrained.
train: $(STUDENT)
	@$(PY) -c "import json; r = lambda p: json.load(open(p))['miou']; print(f'target-val mIoU: teacher {r(\"$(RUN)/teacher/metrics.json\"):.2f}, student {r(\"$(RUN)/student/metrics.json\"):.2f}, teacher after CLDA {r(\"$(RUN)/student/teacher_metrics.json\"):.2f}')"

EXPORT := $(RUN)/export
# TensorRT engines too where TensorRT and a GPU are there (the export says so if not).
TENSORRT_FLAG = $$($(PY) -c "import tensorrt, torch; assert torch.cuda.is_available()" 2>/dev/null && echo --tensorrt)

# make export = ONNX (fp32, fp16, INT8 Q/DQ) of student and teacher, every variant gated by the parity check.
export: $(EXPORT)/student.onnx $(EXPORT)/teacher.onnx

$(EXPORT)/student.onnx: $(STUDENT) | $(STAMP)
	$(PY) -m export --checkpoint $< --out $(EXPORT) --name student --fp16 --int8 $(TENSORRT_FLAG)

$(EXPORT)/teacher.onnx: $(TEACHER) | $(STAMP)
	$(PY) -m export --checkpoint $< --out $(EXPORT) --name teacher --fp16 --int8 $(TENSORRT_FLAG)

HOST ?= 127.0.0.1
PORT ?= 8000
serve: export
	$(PY) -m serving --models $(EXPORT) --host $(HOST) --port $(PORT)

BENCH := $(RUN)/bench
BENCH_THREADS ?= $(shell nproc)
BENCH_ARGS = --threads $(BENCH_THREADS) --out $(BENCH) --results-doc docs/results.md
# make bench = in-process latency per backend x precision (round-robin), the accuracy-latency frontier
# (latency joined with the parity gate's mIoU, Pareto plot), student vs teacher accuracy, HTTP load (with and
# without micro-batching) and an overload run; each writes JSON/markdown/PNG into runs/default/bench
# and its table into docs/results.md. Run it on an otherwise idle machine.
bench: export
	$(PY) -m serving.bench latency --models $(RUN) $(BENCH_ARGS)
	$(PY) -m serving.bench frontier --latency $(BENCH)/latency.json --parity $(EXPORT)/parity.json $(BENCH_ARGS)
	$(PY) -m serving.bench accuracy --models $(RUN) $(BENCH_ARGS)
	$(PY) -m serving.bench http --spawn --models $(EXPORT) --requests 16 $(BENCH_ARGS)
	$(PY) -m serving.bench http --spawn --overload --models $(EXPORT) $(BENCH_ARGS)

# On a CUDA machine: AMP training steps and inference (training), then ONNX export parity vs torch-CUDA.
gpu-check: $(STAMP)
	$(PY) -m training.gpu_check
	$(PY) -m export.gpu_check

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
