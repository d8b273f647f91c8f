# The two commands a new user needs: `make run` (the whole pipeline) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export DVC_NO_ANALYTICS := 1

.PHONY: run test install install-dev ui clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e ".[dev,team]"
	touch $@

install: $(VENV)/.installed

run: install  ## train, sample, evaluate and report with params.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: install  ## the full test suite (CI runs exactly this)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

ui: install  ## MLflow UI on 127.0.0.1:5000 against the project's store; prints the link to the runs
	$(BIN)/ddpmlab ui --port 5000

clean:  ## remove the virtualenv (pipeline outputs stay: `dvc gc` / `git clean` for those)
	rm -rf $(VENV)
