#!/usr/bin/env bash
# Fills container/wheels/ (gitignored) for the Dockerfile, so that the image build needs no network:
#   deps/  wheels of pyproject.toml's dependencies (and its tables extra) for CPython 3.11 on manylinux (this machine's CPU), plus
#          pip itself, and requirements.txt naming the dependencies
#   app/   flight-writer's own wheel
# pip runs here, on the host, where its index, proxy, certificates and cache are set up; inside a build
# container none of that is (TLS-intercepting proxies, private indexes). deps/ is rewritten only when its
# set of files changes, so the image's dependency layer stays cached while only the code changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PY_VERSION=${PY_VERSION:-3.11}   # the base image's python3 (Debian bookworm)
arch=$(uname -m)

mkdir -p container/wheels
new=$(mktemp -d container/wheels/deps.new.XXXXXX)
chmod 755 "$new"
log=container/wheels/build.log
trap 'status=$?; rm -rf "$new"; [[ $status = 0 ]] || cat "$log" >&2' EXIT
: >"$log"
# the dependencies and the tables extra (Iceberg, Delta): a table is then a setting away, as outside the image
"$PYTHON" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["tables"]))' >"$new/requirements.txt"
platforms=(--platform "manylinux2014_$arch")
for minor in 17 24 27 28 31 34 35 36; do   # glibc 2.36 in bookworm runs manylinux_2_x wheels up to 2.36
    platforms+=(--platform "manylinux_2_${minor}_$arch")
done
"$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --dest "$new" \
    --python-version "$PY_VERSION" --implementation cp --abi "cp${PY_VERSION/./}" --abi abi3 --abi none \
    "${platforms[@]}" -r "$new/requirements.txt" pip 2>>"$log"
if ! diff -rq "$new" container/wheels/deps >/dev/null 2>&1; then
    rm -rf container/wheels/deps
    mv "$new" container/wheels/deps
fi

# the package, unless its sources are those of the wheel there; built from a copy of them, as setuptools leaves
# build/ and egg-info behind where it builds (LICENSE too: pyproject.toml's license-files)
sources=$(find pyproject.toml README.md LICENSE flight_writer -name __pycache__ -prune -o -type f -print0 | sort -z |
    xargs -0 sha256sum | sha256sum | cut -c1-64)
if [[ $(cat container/wheels/app/.sources 2>/dev/null) == "$sources" ]]; then
    exit 0
fi
src=$(mktemp -d /tmp/flight-writer-src.XXXXXX)
trap 'status=$?; rm -rf "$new" "$src"; [[ $status = 0 ]] || cat "$log" >&2' EXIT
tar -c --exclude=__pycache__ pyproject.toml README.md LICENSE flight_writer | tar -x -C "$src"
rm -rf container/wheels/app
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir container/wheels/app "$src" 2>>"$log"
echo "$sources" >container/wheels/app/.sources
