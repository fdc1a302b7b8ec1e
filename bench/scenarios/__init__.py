"""The parts of make bench, one module each, in the order they run; BENCH_ONLY names some of them
(comma-separated), and each is a function of the span table that returns its part of results.json:

  throughput   every contender on six scenarios of batch rows x producers x datasets (the chart)
  cores        N producers, N datasets, writer.threads = N, for N up to the machine's cores
  burst        50 MB from one producer, then `flush`
  nats         the scale-out topology (1 ingest + K write processes) against the memory queue
  topology     the scale-out topology sized to the machine's cores (J ingest, K write processes, N streams)
               against as many direct writer threads as cores
  gil          the share of wall time the server holds the GIL (py-spy)
  latency      durable-ack latency at a steady load, per flush interval
  memory       the server's peak RSS while 10 x queue.max_bytes goes through a slowed storage
  tables       lake tables (Iceberg on SQLite, Delta): ingest against plain files, durable -> committed lag,
               commit latency by files per commit, commits over time with maintenance
"""

from bench.scenarios import burst, cores, gil, latency, memory, nats, tables, throughput, topology

PARTS = {
    "throughput": throughput.throughput,
    "cores": cores.cores,
    "burst": burst.burst,
    "nats": nats.nats,
    "topology": topology.topology,
    "gil": gil.gil_share,
    "latency": latency.latency,
    "memory": memory.peak_memory,
    "tables": tables.tables,
}
