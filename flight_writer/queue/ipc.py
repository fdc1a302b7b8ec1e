"""The Arrow IPC bytes a batch is kept as: the payload of a WAL record (``wal/format.py``) and the body of a
NATS message (``nats/ingest.py``, read back in ``nats/feed.py``).

One IPC stream per batch: its schema, its dictionaries, the batch. Its buffers are compressed as the write
options say (``queue.compression``); the stream records the codec, so bytes written under one setting are
read under any other.
"""

from __future__ import annotations

import pyarrow as pa


def write_options(compression: str) -> pa.ipc.IpcWriteOptions:
    """How batches are written: ``queue.compression`` (``none``, ``lz4``, ``zstd``), on the calling thread."""
    return pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression, use_threads=False)


def encode_ipc(batch: pa.RecordBatch, options: pa.ipc.IpcWriteOptions) -> pa.Buffer:
    """A batch's Arrow IPC stream (schema, dictionaries, the batch): the costly part of keeping a batch,
    made before any lock is taken."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=options) as w:
        w.write_batch(batch)
    return sink.getvalue()


def decode_ipc(data: pa.Buffer) -> pa.RecordBatch:
    """The batch of a stream ``encode_ipc`` made (its uncompressed buffers are slices of ``data``)."""
    return pa.ipc.open_stream(data).read_next_batch()
