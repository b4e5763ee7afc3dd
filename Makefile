# One command to run the stack, one to test it. `make help` lists the rest.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
SERVICE_ENV := PYTHONPATH=rt-detr-service
MODEL_VARIANT ?= r18vd
EMBED_VARIANT ?= siglip2-base
# The local VLM is off unless VLM_PROVIDER=transformers: fetch it then (smolvlm-256m, ~0.5 GB).
VLM_VARIANT ?= none

.PHONY: help run serve test models export deps constraints system system-test up down logs push soak soak-hour bench bench-cpu bench-cluster bench-record lint settings-doc clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-12s %s\n", $$1, $$2}'

PIP := $(PY) -m pip install -q --disable-pip-version-check
ULTRALYTICS := ultralytics==8.4.190
# Installed without their dependencies: both ask for opencv-python next to opencv-python-headless.
NO_DEPS := $(ULTRALYTICS) trackers==2.6.1

CONSTRAINTS := rt-detr-service/constraints.txt

$(DEPS): rt-detr-service/requirements.txt rt-detr-service/requirements-ultralytics.txt tests/requirements.txt $(CONSTRAINTS)
	$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || bash scripts/setup-system.sh venv
	$(PYTHON) -m venv $(VENV)
	@echo "Installing the pinned Python dependencies into $(VENV): about 6 GB (torch with its CUDA libraries)," \
	  "2 to 5 minutes on a fresh machine, quiet while it works."
	$(PIP) -c $(CONSTRAINTS) -r rt-detr-service/requirements.txt -r rt-detr-service/requirements-ultralytics.txt -r tests/requirements.txt
	$(PIP) --no-deps $(NO_DEPS)
	touch $@

deps: $(DEPS) ## create .venv with the pinned Python dependencies

constraints: deps ## re-pin every installed package (after changing a requirements file and testing)
	{ sed -n '1,3p' $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable | grep -v -E '^(ruff)=='; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

system: ## install the Debian packages `make run` needs (GStreamer test camera)
	bash scripts/setup-system.sh run

system-test: ## install the Debian packages `make test` needs (adds chromium, deck, shellcheck, ffmpeg, curl)
	bash scripts/setup-system.sh test

run: system deps ## set up, then run the service with a local test camera; prints key and curl lines
	PY=$(PY) bash scripts/run-native.sh

serve: deps ## run only the service (settings from the environment / .env)
	$(SERVICE_ENV) $(PY) -m rtdetr_service

test: system-test deps ## set up, then run every test (CPU only)
	$(SERVICE_ENV) $(PY) -m pytest

models: deps ## download official weights into models/ (MODEL_VARIANT=r18vd|r34vd|...|d-fine-s|rf-detr-base|lw-detr-s|deimv2-n; EMBED_VARIANT=siglip2-base|none; VLM_VARIANT=none|smolvlm-256m|smolvlm-500m)
	$(SERVICE_ENV) $(PY) scripts/download_models.py $(MODEL_VARIANT)
	$(if $(filter-out none,$(EMBED_VARIANT)),$(SERVICE_ENV) $(PY) scripts/download_models.py $(EMBED_VARIANT))
	$(if $(filter-out none,$(VLM_VARIANT)),$(SERVICE_ENV) $(PY) scripts/download_models.py $(VLM_VARIANT))

export: deps ## export MODEL for BACKEND now (ONNX / OpenVINO IR / TensorRT engine, cached in models/.cache)
	$(SERVICE_ENV) $(PY) -m rtdetr_service.inference.export_cli

up: ## docker compose: start MediaMTX, Kong and the service (GPU host)
	docker compose up -d --build

down: ## docker compose: stop the stack
	docker compose down

logs: ## docker compose: follow the logs
	docker compose logs -f --tail=100

push: ## loop-push a clip to an RTSP URL with ffmpeg (CLIP=..., URL=...; natively starts the relay camera)
	bash scripts/setup-system.sh push
	bash scripts/push.sh

soak: ## push + N sessions, watch memory and fps for a while, then a verdict (STACK=native: all local)
	bash scripts/setup-system.sh push
	bash scripts/soak.sh

soak-hour: deps ## the 1-hour native soak of docs/reliability.md: CSV in test-artifacts/soak-1h, plot in docs/img
	bash scripts/setup-system.sh push
	STACK=native DURATION=3600 WARMUP=60 INTERVAL=5 SESSIONS=2 VIEWERS=6 OUT=test-artifacts/soak-1h \
	  PLOT=docs/img/soak-1h.png SOAK_ARGS="--hold 5 --stall-hold 90 --cut-every 600 --cut-for 8 --snapshot" \
	  bash scripts/soak.sh

bench: deps ## pipeline vs baseline benchmark (needs a CUDA GPU for the real figures)
	$(SERVICE_ENV) $(PY) bench/bench_pipeline.py

bench-cpu: deps ## CPU backends (torch, OpenVINO bf16/fp32, ONNX Runtime), baseline, ultralytics predict: one run (~7 min)
	$(SERVICE_ENV) $(PY) bench/bench_cpu.py

bench-cluster: deps ## two replicas: failover, drain, relay latency and CPU; lease load on PostgreSQL (~10 min)
	bash scripts/setup-system.sh cluster
	$(SERVICE_ENV) $(PY) bench/failover.py
	$(SERVICE_ENV) $(PY) bench/lease_load.py --sessions 100,1000

bench-record: system deps ## recordings: clip and export speed; CPU, disk and memory per recorded 1080p30 stream (~10 min, more the first time)
	$(SERVICE_ENV) $(PY) bench/clip_speed.py --dir /var/tmp/clip-bench --out test-artifacts/clip_speed.json
	$(SERVICE_ENV) $(PY) bench/record_cost.py --dir /var/tmp --out test-artifacts/record_cost.json

lint: deps ## ruff on Python, shellcheck on shell scripts
	bash scripts/setup-system.sh lint
	$(PY) -m pip install -q --disable-pip-version-check ruff==0.14.6
	$(PY) -m ruff check rt-detr-service tests bench scripts
	$(PY) -m ruff format --check rt-detr-service tests bench scripts
	shellcheck scripts/*.sh bench/*.sh

settings-doc: deps ## write docs/settings.md from the Settings class (after changing a setting)
	$(SERVICE_ENV) $(PY) scripts/settings_doc.py

clean: ## remove the venv and run files
	rm -rf $(VENV) .run test-artifacts
