# `make demo` and `make test` work on a fresh machine: they create .venv and install the pinned
# stack the first time (a few minutes), and only check a stamp file afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= out/demo

.PHONY: setup demo test test-fast bench lint clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-bigdl.txt requirements-dev.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	@# BigDL's metadata pins pyspark/numpy versions that break the stack above: no deps.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-bigdl.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(BIN)/python -m pipeline ingest --source mnist --output $(OUT)/mnist --mode overwrite
	$(BIN)/python -m pipeline train_digits --input $(OUT)/mnist/images --output $(OUT)/digits --mode overwrite
	$(BIN)/python -m pipeline transfer_demo --input $(OUT)/mnist/images --output $(OUT)/transfer --mode overwrite
	$(BIN)/python -m pipeline train_gan --model dcgan --input $(OUT)/mnist/images --output $(OUT)/dcgan \
		--steps 400 --mode overwrite
	$(BIN)/python -m pipeline ingest --source photos --output $(OUT)/photos --mode overwrite
	$(BIN)/python -m pipeline train_gan --model srgan --input $(OUT)/photos/images --output $(OUT)/srgan \
		--steps 150 --pretrain-steps 120 --crop 64 --lr 2e-4 --mode overwrite
	$(BIN)/python -m pipeline upscale --generator $(OUT)/srgan --input $(OUT)/photos/images \
		--output $(OUT)/upscaled --mode overwrite
	@echo; echo "== demo summary (runs table out/runs) =="
	@$(BIN)/python -m pipeline.runs out/runs --last 8

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/digits.py
	$(BIN)/python bench/featurize.py
	$(BIN)/python bench/gan.py

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs tests bench

clean:
	rm -rf out build dist *.egg-info spark-warehouse bench/.data
