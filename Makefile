# Every target creates the virtual environment it needs; re-running is fast (a stamp file).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
IMAGE ?= flight-writer

.PHONY: serve test lint image clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/flight-writer serve --config configs/settings.toml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check flight_writer tests
	$(BIN)/ruff format --check flight_writer tests

image:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) data wal .pytest_cache
