# Two commands set up everything on a fresh machine:
#   make run    the main job (creates .venv on first use)
#   make test   the test suite (creates .venv on first use)
# CPU machines get the pinned CPU build of torch; GPU users: make TORCH=torch (or your CUDA wheel).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: venv run test bench bench-vision bench-ssl bench-gpu clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,ray]"
	# lightly: the reference of the SSL loss tests; --no-deps, as its torchvision would
	# replace the CPU torch (the tests import its loss modules alone)
	$(BIN)/pip install --quiet --no-deps "lightly==1.6.0"
	touch $@

run: venv
	$(BIN)/mlscale run

test: venv
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/bench_finetune.py
	$(BIN)/python benchmarks/bench_tokenize.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_dedup.py

# timm and lightly import torchvision, which does not load beside the CPU torch wheel: their
# own venv with the CUDA torch/torchvision pair (it runs on the CPU too)
TIMM_VENV = .bench/venv-timm
$(TIMM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/pip install --quiet --upgrade pip
	$(TIMM_VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(TIMM_VENV)/bin/pip install --quiet timm "lightly==1.6.0" -e .
	touch $@

bench-vision: $(TIMM_VENV)/.installed
	$(TIMM_VENV)/bin/python benchmarks/bench_vision.py

bench-ssl: $(TIMM_VENV)/.installed
	$(TIMM_VENV)/bin/python benchmarks/bench_ssl.py

bench-gpu: venv  # on a CUDA machine (install its torch with `make TORCH=torch venv`)
	$(BIN)/python benchmarks/bench_train.py --gpu
	$(BIN)/python benchmarks/bench_gpu_scale.py

clean:
	rm -rf $(VENV) out .pytest_cache
