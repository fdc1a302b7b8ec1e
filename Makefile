# Every target creates the virtual environment it needs, with what it needs: make serve and make install the
# server only; make test, make bench and make lint add their extras (pyproject.toml). Re-running is fast (a
# stamp file per set).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
IMAGE ?= flight-writer

.PHONY: install serve test bench lint docs image image-base emulators cluster clean

# .venv/.installed-<set>: pip install -e '.[<set>]' into .venv (created with an up-to-date pip if missing);
# the set "server" is the runtime dependencies alone
$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || { $(PYTHON) -m venv $(VENV) && $(BIN)/python -m pip install --quiet --upgrade pip; }
	$(BIN)/python -m pip install --quiet -e '.$(if $(filter server,$*),,[$*])'
	touch $@

# the flight-writer command in .venv/bin, with the server's dependencies only
install: $(VENV)/.installed-server
	@echo "installed: $(BIN)/flight-writer (source $(BIN)/activate puts it on PATH; pipx install . installs it for your user)"

serve: $(VENV)/.installed-server
	$(BIN)/flight-writer serve --config configs/settings.toml

# the scale-out topology as local processes: nats-server, WRITERS=2 write processes, one ingest process
cluster: $(VENV)/.installed-cluster
	deploy/cluster.sh

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# BENCH_SCALE=0.1 BENCH_REPEAT=1 make bench for a quick run; results in bench/results.json and bench/results.png
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check flight_writer tests bench examples
	$(BIN)/ruff format --check flight_writer tests bench examples

# the documentation site into site/ (--strict: a broken link or anchor fails it); $(BIN)/mkdocs serve to read it
docs: $(VENV)/.installed-docs
	$(BIN)/mkdocs build --strict

# The container (podman; Dockerfile, container/). The base image is made locally with debootstrap (needs root;
# cached in container/cache/), the wheels on the host (container/wheels/), so the build itself needs no
# network. BASE=<another Debian bookworm image with python3> skips the local base.
PODMAN ?= container/podman
BASE ?=
image: $(VENV)/.installed-server
	container/wheels.sh
	base=$(if $(BASE),$(BASE),$$(PODMAN="$(PODMAN)" container/base-image.sh)) && \
		$(PODMAN) build --format docker --tag $(IMAGE) --build-arg BASE=$$base .

image-base:
	PODMAN="$(PODMAN)" container/base-image.sh

# Azurite (Azure Blob emulator) for the cloud tests; the S3 and GCS emulators come with the test extras
emulators: .emulators/node_modules/.bin/azurite-blob
.emulators/node_modules/.bin/azurite-blob:
	npm install --prefix .emulators --no-audit --no-fund --silent azurite@3

clean:
	rm -rf $(VENV) data wal cluster site build .pytest_cache .emulators
