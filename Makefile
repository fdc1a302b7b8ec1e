# Every target creates the virtual environment it needs; re-running is fast (a stamp file).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
IMAGE ?= flight-writer

.PHONY: serve test bench lint image image-base emulators cluster clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/flight-writer serve --config configs/settings.toml

# the scale-out topology as local processes: nats-server, WRITERS=2 write processes, one ingest process
cluster: $(STAMP)
	deploy/cluster.sh

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# BENCH_SCALE=0.1 BENCH_REPEAT=1 make bench for a quick run; results in bench/results.json and bench/results.png
bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check flight_writer tests bench
	$(BIN)/ruff format --check flight_writer tests bench

# The container (podman; Dockerfile, container/). The base image is made locally with debootstrap (needs root;
# cached in container/cache/), the wheels on the host (container/wheels/), so the build itself needs no
# network. BASE=<another Debian bookworm image with python3> skips the local base.
PODMAN ?= container/podman
BASE ?=
image: $(STAMP)
	container/wheels.sh
	base=$(if $(BASE),$(BASE),$$(PODMAN="$(PODMAN)" container/base-image.sh)) && \
		$(PODMAN) build --format docker --tag $(IMAGE) --build-arg BASE=$$base .

image-base:
	PODMAN="$(PODMAN)" container/base-image.sh

# Azurite (Azure Blob emulator) for the cloud tests; the S3 and GCS emulators come with the dev extras
emulators: .emulators/node_modules/.bin/azurite-blob
.emulators/node_modules/.bin/azurite-blob:
	npm install --prefix .emulators --no-audit --no-fund --silent azurite@3

clean:
	rm -rf $(VENV) data wal cluster .pytest_cache .emulators
