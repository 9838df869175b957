# bertpt — `make help` lists the targets. Every target installs what it needs into .venv first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch on a machine without a GPU (a CUDA build is several GB); your platform's
# default build where nvidia-smi sees a GPU. Override with `make install TORCH_SPEC=...`.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

CORPUS ?= data/corpus.txt
TOKENIZER ?= data/tokenizer
VOCAB_SIZE ?= 8192
EXPERIMENT ?= tiny_long
TRAIN_ARGS ?=
PROBE_ARGS ?=
PYTEST_ARGS ?=

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
ifeq ($(HAS_GPU),)
	@echo "no GPU found: installing the CPU build of torch $(TORCH_VERSION)"
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" \
		|| $(PY) -m pip install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX)
endif
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

.PHONY: help install data tokenizer train train-base sweep export plot probe bench gpu-check test test-fast lint format clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with bertpt and its dev tools (CPU torch without a GPU)

$(CORPUS): | $(STAMP)
	$(PY) -m bertpt.corpus $(CORPUS)

data: $(CORPUS) ## build the offline default corpus (stdlib docstrings) in data/

tokenizer: $(STAMP) data ## train the WordPiece tokenizer on the corpus into data/tokenizer
	$(PY) -m bertpt.tokenizer $(CORPUS) --out $(TOKENIZER) --vocab-size $(VOCAB_SIZE)

# `make train`'s run folder, named once per make call (:=), so the probe finds the run it follows.
TRAIN_RUN := outputs/train/runs/$(shell date +%Y-%m-%d_%H-%M-%S)

train: $(STAMP) ## pretrain a small BERT on the default corpus (tiny, 5,000 steps: CPU minutes), then probe it [EXPERIMENT=mini TRAIN_ARGS="optim.max_steps=2000" PROBE_ARGS="--seeds 3"]
	$(PY) -m bertpt.train +experiment=$(EXPERIMENT) hydra.run.dir=$(TRAIN_RUN) $(TRAIN_ARGS)
	$(PY) -m bertpt.probe $(TRAIN_RUN)/hf $(PROBE_ARGS)
	@echo "plots: $(TRAIN_RUN)/plots/overview.png (and one file per panel); report: $(TRAIN_RUN)/report.md"

train-base: $(STAMP) ## BERT-base phase 1 (seq 128) on every visible GPU
	$(PY) -m bertpt.train +experiment=base

sweep: $(STAMP) ## a small learning-rate sweep (Hydra multirun)
	$(PY) -m bertpt.train -m +experiment=tiny optim.lr=1e-4,3e-4,1e-3

export: $(STAMP) ## export a run to Hugging Face format: make export RUN=outputs/... OUT=hf_model
	$(PY) -m bertpt.export $(RUN) $(OUT)

plot: $(STAMP) ## plot a run, or overlay several: make plot RUN="outputs/... [outputs/...]" [OUT=file.png]
	$(PY) -m bertpt.plot $(RUN) $(if $(OUT),--out $(OUT))

probe: $(STAMP) ## probe an export (linear + fine-tuned) vs random init and TF-IDF: make probe MODEL=outputs/.../hf [TASK=...]
	$(PY) -m bertpt.probe $(MODEL) $(if $(TASK),--task $(TASK))

bench: $(STAMP) ## benchmarks: bertpt vs transformers training steps, then the data pipeline
	$(PY) -m bertpt.bench
	$(PY) -m bertpt.bench_data

gpu-check: $(STAMP) ## on a GPU machine: the GPU tests, then the GPU benchmark (every variant vs transformers, MFU, a 200-step real run)
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)
	$(if $(HAS_GPU),$(PY) -m bertpt.bench --device cuda,@echo "no GPU here: the GPU benchmark needs one (skipped)")

test: $(STAMP) ## run the whole test suite (slow tests included; no test collected is a failure)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## run the tests not marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check bertpt tests
	$(VENV)/bin/ruff format --check bertpt tests

format: $(STAMP) ## ruff format and autofix
	$(VENV)/bin/ruff format bertpt tests
	$(VENV)/bin/ruff check --fix bertpt tests

clean: ## remove generated data, outputs and caches (keeps .venv)
	rm -rf data/corpus.txt data/tokenizer data/tokenizers data/cache outputs multirun wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
