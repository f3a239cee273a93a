# `make demo` and `make test` work on a fresh machine: they create .venv and install the pinned
# stack the first time (a few minutes), and only check a stamp file afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= out/demo

AIRFLOW_VENV  := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-stamp

.PHONY: setup airflow-setup demo test test-fast test-cluster bench dist lint clean

setup: $(STAMP)

# Airflow gets its own venv: its dependency tree clashes with the pinned Spark/BigDL stack.
airflow-setup: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): requirements-airflow.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-airflow.txt
	touch $@

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

test: $(STAMP) $(AIRFLOW_STAMP)
	$(BIN)/python -m pytest -q -rs tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not slow" tests

# the slow half alone: loopback standalone cluster, packed env, GAN training, the DAG run
test-cluster: $(STAMP) $(AIRFLOW_STAMP)
	$(BIN)/python -m pytest -q -rs -m slow tests

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/digits.py
	$(BIN)/python bench/featurize.py
	$(BIN)/python bench/gan.py

# wheel, --py-files zip and a venv-pack'ed env for --archives (FLAVOR=core: no torch/TF)
FLAVOR ?= full
dist: $(STAMP)
	PYTHON=$(BIN)/python scripts/dist.sh $(FLAVOR)

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs tests bench dags
	$(BIN)/hadolint docker/Dockerfile
	$(BIN)/shellcheck scripts/*.sh conf/*.sh .ci/run

clean:
	rm -rf out build dist *.egg-info spark-warehouse bench/.data
