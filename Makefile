# Aliases for commands that also work typed out by hand (see README.md).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
VENV_LATEST := .venv-latest
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
WORKDIR ?= workdirs/default

.PHONY: setup data test test-latest demo bench accuracy figures paper_scale

setup: $(VENV)/.installed data

# requirements.txt pins everything, so `pip install -e .` (import ntk_time from
# anywhere) installs nothing new.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package.
data:
	@if [ ! -f $(FMNIST) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2; \
	  fi; \
	fi

# The torchvision converter's test needs torch (large, so not in requirements.txt).
$(VENV)/.installed-torch: $(VENV)/.installed requirements-torch.txt
	$(VENV)/bin/pip install --quiet -r requirements-torch.txt
	touch $@

test: setup $(VENV)/.installed-torch
	$(PY) -m pytest -q tests

# The same suite on current jax (requirements-latest.txt), in a second venv without
# neural-tangents or torch: their tests skip.
$(VENV_LATEST)/.installed: requirements-latest.txt pyproject.toml
	$(PYTHON) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/pip install --quiet -r requirements-latest.txt
	$(VENV_LATEST)/bin/pip install --quiet --no-deps -e .
	touch $@

test-latest: data $(VENV_LATEST)/.installed
	$(VENV_LATEST)/bin/python -m pytest -q tests

demo: setup
	$(PY) -m experiments.compare --config ntk_time/configs/default.py --workdir $(WORKDIR)

# Part 6 reruns the paper-scale study's predictions on $(PAPER)'s cached real runs and
# kernels (skipped where `make paper_scale` has not run).
bench: setup
	$(PY) -m experiments.bench --paper_workdir=$(PAPER)
	$(PY) -m experiments.bench_kernel

# Paper scale from a subset (README): all 30,000 Fashion-MNIST 5–9 training images, 8 real
# runs of 3 epochs, predicted from kernels on M = 500 and 1,000. Starts from the demo's
# pretrained checkpoint (`make demo` makes it; PAPER_CKPT= pretrains in the workdir instead).
PAPER := workdirs/paper_scale
PAPER_CKPT ?= $(WORKDIR)/pretrain/checkpoint.msgpack
paper_scale: setup
	$(PY) -m experiments.subset --config=ntk_time/configs/paper_scale.py --workdir=$(PAPER) \
	  --config.experiment.pretrain.checkpoint=$(PAPER_CKPT)

# The accuracy study of the README (figures 1 and 2): the demo's target, digits and the
# demo's target under the squared loss, 8 configurations × 3 seeds each, fine-tuned from
# the same pretrained checkpoint (about 70 minutes on 2 cores).
ACC := workdirs/accuracy
accuracy: setup
	$(PY) -m experiments.fig_times --config=ntk_time/configs/fig_times.py --workdir=$(ACC)
	$(PY) -m experiments.fig_curves --config=ntk_time/configs/fig_curves.py --workdir=$(ACC)
	$(PY) -m experiments.report $(ACC)/fashion $(ACC)/digits $(ACC)/fashion_mse

# Figures 3 and 4 (figures 1 and 2 are `make accuracy`).
figures: setup
	$(PY) -m experiments.fig_effective_lr --config=ntk_time/configs/fig_effective_lr.py \
	  --workdir=workdirs/effective_lr
	$(PY) -m experiments.fig_batch_size --config=ntk_time/configs/fig_batch_size.py \
	  --workdir=workdirs/batch_size
