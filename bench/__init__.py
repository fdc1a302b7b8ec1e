"""The benchmark: flight-writer against the limits around it, on the same data and the same disk.

Contenders, per scenario (batch rows x producers x datasets):
  discard  a Flight server that reads and drops every batch: the transport limit
  reply    the same, but it answers every batch with a PutResult as flight-writer does: the protocol's limit
  direct   the client writes Parquet itself with pyarrow (zstd, same row groups), one writer per dataset
  memory   flight-writer end to end (queue.type = memory): do_put, then `flush` until everything is durable
  wal      the same with queue.type = wal (fsync = always)

Servers run as separate processes on 127.0.0.1; producers are threads of this process. Throughput is Arrow
bytes (and rows) of the spans sent, per second of wall time. Every measurement runs BENCH_REPEAT times (3),
the contenders taking turns, and the median counts; CPU seconds of the client and the server are recorded.
Also: durable-ack latency at a steady load for a few flush intervals, and the server's peak RSS while
10 x queue.max_bytes goes through a slowed storage.

    make bench                                  # BENCH_SCALE=1: 1 GiB of Arrow data per measurement
    BENCH_SCALE=0.1 BENCH_REPEAT=1 make bench   # a quick run
    BENCH_ONLY=cores,burst make bench           # some parts only: written to bench/results-partial.json

Writes bench/results.json and bench/results.png, and prints the table. The parts:

  workload.py     the spans sent and how much of them: BENCH_SCALE, BENCH_REPEAT, row groups
  contenders.py   the servers (discard, flight-writer per queue type, the NATS topology), the direct
                  writers, the producers and the clocks
  compare.py      a scenario's contenders taking turns, BENCH_REPEAT times each: medians, ranges, CPU
  scenarios/      one module per part of the run (throughput, cores, burst, nats, gil, latency, memory,
                  tables)
  report.py       the targets, the tables, results.json and the chart
  __main__.py     python -m bench from the repository root (make bench); bench/run.py does the same
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent  # bench/: the results, and the runs' temporary folders
REPO = HERE.parent  # where the servers run
