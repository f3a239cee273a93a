# `make demo` and `make test` work on a fresh machine: they create the stack's venv and install
# the tested set the first time (a few minutes), and only check a stamp file afterwards.
#   STACK=spark35 (default): Spark 3.5 LTS + BigDL, in .venv
#   STACK=spark4:            Spark 4.3, no BigDL,  in .venv-spark4     e.g. `make test STACK=spark4`
PYTHON ?= python3
STACK  ?= spark35
OUT    ?= out/demo

ifeq ($(STACK),spark35)
VENV := .venv
else ifeq ($(STACK),spark4)
VENV := .venv-spark4
else
$(error STACK=$(STACK): expected spark35 or spark4)
endif
CONSTRAINTS := constraints/$(STACK).txt
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The stacks install with uv (pip's resolver, unpacking and compiling took ~2.3 min a stack here
# from a cold cache, uv ~1 min, the same packages at the same versions); uv goes into the venv
# with pip, and scripts/uv_env.sh hands it pip's configured package sources.
UV_VERSION := 0.13.9
PIP   := . scripts/uv_env.sh && $(BIN)/uv pip install -q --python $(BIN)/python -c $(CONSTRAINTS)

AIRFLOW_VENV  := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-stamp
# Spark Connect's thin client (pyspark-client: no JVM, no jars), for the Spark 4 stack's tests
CLIENT_VENV  := .venv-client
CLIENT_STAMP := $(CLIENT_VENV)/.installed-stamp

.PHONY: setup airflow-setup client-setup demo test test-fast test-cluster mutation planted bench dist lint clean

setup: $(STAMP)

# Airflow gets its own venv: its dependency tree clashes with the pinned Spark/BigDL stack.
airflow-setup: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): requirements-airflow.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-airflow.txt
	touch $@

$(STAMP): $(CONSTRAINTS) setup.py requirements-dev.txt requirements-bigdl.txt requirements-mlflow.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(PIP) -r requirements-dev.txt -e '.[torch,tf]'
ifeq ($(STACK),spark35)
	@# BigDL's metadata pins an old pyspark/numpy that would break the stack: no deps.
	$(PIP) --no-deps -r requirements-bigdl.txt
else
	@# Spark Connect's client side (grpcio, ...): the server jar ships in the pyspark wheel
	$(PIP) 'pyspark[connect]'
endif
	@# MLflow (tracking and the registry, sparkgan[mlflow]): its metadata caps pyarrow below the Spark 4
	@# stack's pin, so it goes in without deps and its requirements, less that cap, after it
	$(PIP) --no-deps mlflow
	$(PIP) -r requirements-mlflow.txt
	touch $@

client-setup: $(CLIENT_STAMP)

$(CLIENT_STAMP): constraints/client.txt
	test -x $(CLIENT_VENV)/bin/python || $(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/python -m pip install -q --disable-pip-version-check -r constraints/client.txt
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

TEST_NEEDS := $(STAMP) $(AIRFLOW_STAMP) $(if $(filter spark4,$(STACK)),$(CLIENT_STAMP))
# The Spark 4 stack leaves the tests marked default_stack (a model's quality, the README's quickstart:
# promises that do not depend on the Spark version) to the default stack's run.
# TEST_WORKERS processes share the tests a file at a time (pytest-xdist's loadfile: a module's
# fixtures, like tests/test_cluster.py's cluster, stay in one process). On 2 cores the suite is
# CPU-bound either way; two workers keep both cores busy while one waits on a JVM or a subprocess.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: $(TEST_NEEDS)
	$(BIN)/python -m pytest -q -rs --durations=12 $(XDIST) $(if $(filter spark4,$(STACK)),-m "not default_stack") tests

# Before a commit: everything but the slow tests (214 of them on Spark 3.5, ~4 min on 2 cores, a fifth
# of the whole suite's CPU), on the same xdist workers as `make test`
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -rs $(XDIST) -m "not slow" tests

# the slow half alone: loopback standalone cluster, packed env, training runs, the DAG run
test-cluster: $(STAMP) $(AIRFLOW_STAMP)
	$(BIN)/python -m pytest -q -rs -m slow tests

# Mutation testing of the pure-Python core (README, Mutation testing): mutmut mutates these functions,
# runs the Spark-free tests (setup.cfg [mutmut]) against each mutant, and the report fails the target
# below MUTATION_MIN percent killed. About a minute on 2 cores; mutmut's own log: mutants/run.log.
MUTATION_MIN ?= 90
MUTATE := $(foreach f,array_to_row row_to_array to_gray to_rgb _to_8bit decode_image resize_array,pipeline.images.x_$(f)*) \
          $(foreach f,accuracy metric_rows rgb_to_y _y_cropped psnr_y ssim_y,pipeline.metrics.x_$(f)*) \
          $(foreach f,conf_dir load_profile read_spark_defaults _spark_value resolve_options,pipeline.config.x_$(f)*) \
          $(foreach f,check_distributor threads_per_process positive input_table output resume_decision,pipeline.options.x_$(f)*) \
          $(foreach f,parse_split parse_size split_of origin_of,pipeline.ingest.x_$(f)*) \
          $(foreach f,absolute arrow_uri file_uri is_local local_path check_writable,pipeline.io.x_$(f)*) pipeline.io.x?Run?check_counts*
mutation: $(STAMP)
	$(PIP) mutmut
	rm -rf mutants && mkdir mutants
	@echo "mutmut run: $(words $(MUTATE)) functions, log in mutants/run.log"
	@$(BIN)/mutmut run $(foreach m,$(MUTATE),'$(m)') > mutants/run.log 2>&1 || { tail -n 40 mutants/run.log; exit 1; }
	@$(BIN)/python scripts/mutation_report.py --min $(MUTATION_MIN) $(foreach m,$(MUTATE),'$(m)')

# Hand-planted bugs in the Spark- and torch-facing code (which mutmut does not mutate): each is
# applied to a copy of the tree and the tests that guard its promise must fail (scripts/planted_bugs.py).
planted: $(STAMP)
	$(BIN)/python scripts/planted_bugs.py

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/digits.py
	$(BIN)/python bench/featurize.py
	$(BIN)/python bench/gan.py

# wheel, --py-files zip and a venv-pack'ed env for --archives, named by stack (FLAVOR=core: no torch/TF)
FLAVOR ?= full
dist: $(STAMP)
	PYTHON=$(BIN)/python STACK=$(STACK) scripts/dist.sh $(FLAVOR)

lint: $(STAMP)
	$(BIN)/ruff check pipeline jobs tests bench dags scripts
	$(BIN)/hadolint docker/Dockerfile
	$(BIN)/shellcheck scripts/*.sh conf/*.sh .ci/run

clean:
	rm -rf out build dist *.egg-info spark-warehouse bench/.data
