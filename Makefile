# The two commands of the README: `make book` and `make test`. Both create the virtual environment when it
# is missing (once: a second run reinstalls nothing unless requirements.txt or pyproject.toml changed) and
# fetch the photo packages the embedded benchmark is made from.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1
# Python keeps the bytecode it compiles (in the virtual environment's __pycache__ folders): a shell that sets
# PYTHONDONTWRITEBYTECODE makes every kernel and subprocess compile torch, timm and their imports again
# (measured on 2 cores: 25.5 s per fresh process without bytecode, 8.3 s with it).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: book test notebooks photos venv clean-book lab

book: $(VENV)/.installed photos ## execute changed notebooks with papermill, then build the HTML book
	$(PY) -m ada_utils book

# Two pytest workers, each test file whole in one of them (order kept within a file): most notebook tests wait on
# a kernel or a subprocess part of the time (measured: 9 min 58 s vs 11 min 44 s in one process on 2 cores).
TEST_WORKERS ?= 2
test: $(VENV)/.installed photos ## run the whole test suite (notebooks included, smoke parameters)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

notebooks: $(VENV)/.installed photos ## execute changed notebooks only
	$(PY) -m ada_utils book --no-html

photos: $(VENV)/.installed
	$(PY) -m ada_utils data fetch-photos

venv: $(VENV)/.installed

# --no-compile: pip would byte-compile every module of every package (most never imported) on one core; Python
# compiles the ones a notebook imports on first use instead, and keeps them.
$(VENV)/.installed: requirements.txt pyproject.toml
	@echo "[setup] creating $(VENV) (about 2 minutes, 6.5 GB) ..."
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -r requirements.txt -e . 2>&1 | { grep -v -E "is ignored: it is neither|^$$" || true; }
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ada)" >/dev/null
	touch $@

lab: $(VENV)/.installed ## open the notebooks in JupyterLab with the project's kernel
	$(VENV)/bin/jupyter lab notebooks/

clean-book:
	rm -rf _build executed

# Publishing: `make book`, then `make publish` pushes the HTML to the gh-pages branch with ghp-import, as
# Jupyter Book's documentation recommends (-n: add .nojekyll so _static/ is served; -f: force-push, so a fresh
# clone, as in CI, replaces the branch). Override e.g. `make publish PUBLISH_REMOTE=upstream PUBLISH_BRANCH=pages`.
PUBLISH_REMOTE ?= origin
PUBLISH_BRANCH ?= gh-pages
PUBLISH_DIR ?= _build/html
.PHONY: publish

publish: ## push the built book (_build/html) to the gh-pages branch of origin (run make book first)
	@test -f $(PUBLISH_DIR)/index.html || { echo "make publish: $(PUBLISH_DIR)/index.html does not exist: run make book first" >&2; exit 1; }
	@test -x $(VENV)/bin/ghp-import || { echo "make publish: $(VENV)/bin/ghp-import is missing (it comes from requirements.txt): run make venv" >&2; exit 1; }
	$(VENV)/bin/ghp-import -n -p -f -r $(PUBLISH_REMOTE) -b $(PUBLISH_BRANCH) -m "Publish the book" $(PUBLISH_DIR)
	@echo "[publish] $(PUBLISH_DIR) pushed to $(PUBLISH_REMOTE) $(PUBLISH_BRANCH)"
