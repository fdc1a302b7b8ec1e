#!/usr/bin/env bash
# make cluster: the scale-out topology as local processes, for trying it out on one machine:
# nats-server with JetStream, WRITERS write processes (2) and one ingest process, sharing one stream and
# one storage root (configs/settings.toml's, ./data by default). Ctrl-C stops the ingest process first,
# then the writers (each writes what it holds), then NATS (each runs in a session of its own, so the
# terminal's Ctrl-C reaches only this script, which stops them in that order).
#   NATS_PORT (4222), WRITERS (2), CLUSTER_DIR (./cluster: NATS's store and the logs), METRICS_PORT (unset: no
#   metrics; set: the ingest process serves /metrics on it, write process i on METRICS_PORT + i)
set -euo pipefail
BIN=${BIN:-.venv/bin}
NATS_PORT=${NATS_PORT:-4222}
WRITERS=${WRITERS:-2}
DIR=${CLUSTER_DIR:-./cluster}
mkdir -p "$DIR"

setsid "$BIN/nats-server" -c deploy/nats.conf -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DIR/nats" >"$DIR/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 100); do  # until it listens
    (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break
    sleep 0.1
done

export QUEUE_TYPE=nats FLIGHT_WRITER_QUEUE__URL="nats://127.0.0.1:$NATS_PORT"
metrics() {  # the metrics listener of the process at offset $1 from METRICS_PORT, if any
    if [ -n "${METRICS_PORT:-}" ]; then echo "FLIGHT_WRITER_METRICS__LISTEN=127.0.0.1:$((METRICS_PORT + $1))"; fi
}
writers=()
for i in $(seq "$WRITERS"); do
    env $(metrics "$i") setsid "$BIN/flight-writer" serve --config configs/settings.toml --role write \
        2>"$DIR/writer-$i.log" &
    writers+=($!)
done
env $(metrics 0) setsid "$BIN/flight-writer" serve --config configs/settings.toml --role ingest &
ingest=$!

stop() {
    trap - INT TERM
    kill -TERM "$ingest" 2>/dev/null || true
    wait "$ingest" 2>/dev/null || true
    kill -TERM "${writers[@]}" 2>/dev/null || true
    wait "${writers[@]}" 2>/dev/null || true
    kill -TERM "$nats_pid" 2>/dev/null || true
    wait "$nats_pid" 2>/dev/null || true
    exit 0
}
trap stop INT TERM
echo "$nats_pid ${writers[*]} $ingest" >"$DIR/pids"  # for whoever must clean up after a kill -9 of this script
echo "cluster: nats on 127.0.0.1:$NATS_PORT, $WRITERS writers (logs in $DIR), ingest in the foreground" >&2
wait "$ingest" || true
stop
