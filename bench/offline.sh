#!/bin/sh
# make bench's many-core parts on a machine without a package index or a virtualenv (a borrowed benchmark
# machine with a Python that has pyarrow and numpy): installs the wheels that bench/wheels.sh fetched
# (WHEELS, .whl/ by default; with none there the Python's own packages are used) into a folder of their own
# (SITE), checks that the server imports, then runs each part on its own, so that a run cut short keeps the
# parts before it: RESULTS/<part>.log (what make bench prints) and RESULTS/<part>.json.
#
#   bench/wheels.sh 3.12                                   # here, with a package index
#   RESULTS=/tmp/out bench/offline.sh                      # there: topology, cores, nats at BENCH_SCALE=0.5
#   BENCH_PARTS=topology BENCH_TOPOLOGY=2x4x4x2 bench/offline.sh
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-bench/offline-results}
SITE=${SITE:-/tmp/flight-writer-site}
WHEELS=${WHEELS:-.whl}
mkdir -p "$RESULTS"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    PATH="$SITE/bin:$PATH"
    export PYTHONPATH PATH
fi
export PYTHONUNBUFFERED=1 BENCH_SCALE="${BENCH_SCALE:-0.5}"
{
    echo "cores: $(nproc), $(uname -srm)"
    "$PY" -c "import platform, pyarrow, opendal, nats, flight_writer.cli
print('python', platform.python_version(), 'pyarrow', pyarrow.__version__, 'opendal', opendal.__version__)"
    command -v nats-server && nats-server --version
} 2>&1 | tee "$RESULTS/machine.txt"
failed=""
for part in $(echo "${BENCH_PARTS:-topology,cores,nats}" | tr , ' '); do
    echo "== $part (BENCH_SCALE=$BENCH_SCALE)"
    rm -f bench/results-partial.json
    if BENCH_ONLY=$part "$PY" -m bench > "$RESULTS/$part.log" 2>&1; then
        mv bench/results-partial.json "$RESULTS/$part.json"
    else
        failed="$failed $part"
    fi
    cat "$RESULTS/$part.log"
done
[ -z "$failed" ] || { echo "failed:$failed (their logs say why)"; exit 1; }
