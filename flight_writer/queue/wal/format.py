"""The write-ahead log's bytes on disk (log.py writes them, recovery.py reads them back).

A batch record is ``magic | u32 length | u32 checksum | payload``, the magic naming the checksum: ``FWR2``
CRC-32C (Castagnoli, in hardware through google-crc32c: ~70 us for a 1.5 MB record against ~370 for zlib's
CRC-32, measured on 8,192 spans), ``FWR1`` zlib's CRC-32 (logs of earlier versions, and where google-crc32c
has no compiled implementation). Recovery reads both. The payload is ``u64 seq | f64
received_at | u16 len(dataset) | u32 len(client id) | dataset | client id | Arrow IPC stream`` (schema,
dictionaries, the batch; its buffers compressed as ``queue.compression`` says, batches under
``log.SMALL_RECORD_BYTES`` not at all, which the IPC format records, so a log written with one setting is read
under any other). The magic lets recovery find the
next intact record after a damaged one. A manifest line is ``<crc32 hex> <json>``: ``{"plan": path,
"kind", "seqs": "1-3,7", "error"}``, ``{"done": "1-3,7"}``, ``{"ids": [[id, seq]...]}``.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import google_crc32c
import pyarrow as pa
from loguru import logger

from flight_writer.queue.base import Entry, Plan
from flight_writer.queue.ipc import decode_ipc
from flight_writer.queue.seqs import parse_ranges, seq_ranges

CRC32, CRC32C = b"FWR1", b"FWR2"
# google-crc32c falls back to pure Python where it has no wheel: hundreds of times slower than zlib
MAGIC = CRC32C if google_crc32c.implementation == "c" else CRC32
ANY_MAGIC = re.compile(b"FWR[12]")
HEADER = struct.Struct("<4sII")  # magic, payload length, checksum(payload)
BATCH = struct.Struct("<QdHI")  # seq, received_at, len(dataset), len(client id)
NO_ID = 0xFFFFFFFF


def encode_record(entry: Entry, ipc: list[pa.Buffer | bytes]) -> list[Any]:
    """The record of ``entry`` whose batch's IPC stream is the buffers ``ipc``, as buffers for one writev."""
    dataset = entry.dataset.encode()
    cid = entry.client_id.encode() if entry.client_id is not None else b""
    head = (
        BATCH.pack(entry.seq, entry.received_at, len(dataset), NO_ID if entry.client_id is None else len(cid))
        + dataset
        + cid
    )
    size = sum(len(part) for part in ipc)
    return [HEADER.pack(MAGIC, len(head) + size, checksum(MAGIC, [head, *ipc])) + head, *ipc]


def checksum(magic: bytes, parts: list[Any]) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc) if magic == CRC32 else google_crc32c.extend(crc, part)
    return crc


def decode_payload(payload: pa.Buffer) -> Entry:
    view = memoryview(payload)
    seq, received_at, ds_len, id_len = BATCH.unpack_from(view)
    pos = BATCH.size
    dataset = bytes(view[pos : pos + ds_len]).decode()
    pos += ds_len
    client_id = None
    if id_len != NO_ID:
        client_id = bytes(view[pos : pos + id_len]).decode()
        pos += id_len
    batch = decode_ipc(payload.slice(pos))
    schema_key = batch.schema.serialize().to_pybytes()
    return Entry(seq, dataset, schema_key, batch, received_at, batch.get_total_buffer_size(), client_id)


def scan_segment(path: Path) -> tuple[list[Entry], tuple[int, int, bool] | None]:
    """Intact records, and the damage as (first bad byte, end of the last bad stretch, whether an intact
    record follows the first bad byte)."""
    blob = path.read_bytes()
    data = pa.py_buffer(blob)  # batches decoded from it share its memory
    records: list[Entry] = []
    damage: tuple[int, int, bool] | None = None
    pos, n = 0, len(blob)
    while pos < n:
        if (length := intact_at(blob, pos)) is not None:
            records.append(decode_payload(data.slice(pos + HEADER.size, length)))
            if damage is not None:
                damage = (damage[0], damage[1], True)
            pos += HEADER.size + length
            continue
        nxt = _next_magic(blob, pos + 1)
        while nxt != -1 and intact_at(blob, nxt) is None:
            nxt = _next_magic(blob, nxt + 1)
        end = n if nxt == -1 else nxt
        damage = (pos, end, False) if damage is None else (damage[0], end, damage[2])
        pos = end
    return records, damage


def _next_magic(blob: bytes, pos: int) -> int:
    found = ANY_MAGIC.search(blob, pos)
    return -1 if found is None else found.start()


def intact_at(blob: bytes, pos: int) -> int | None:
    """The payload length of an intact record at ``pos``, else None."""
    if pos + HEADER.size > len(blob):
        return None
    magic, length, crc = HEADER.unpack_from(blob, pos)
    body = pos + HEADER.size
    if magic not in (CRC32, CRC32C) or length < BATCH.size or body + length > len(blob):
        return None
    # a pyarrow slice, not a memoryview: google-crc32c takes only buffers it need not release
    return length if checksum(magic, [pa.py_buffer(blob).slice(body, length)]) == crc else None


def plan_record(plan: Plan) -> dict[str, Any]:
    record: dict[str, Any] = {"plan": plan.path, "kind": plan.kind, "seqs": seq_ranges(list(plan.seqs))}
    if plan.error is not None:
        record["error"] = plan.error
    return record


def manifest_line(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def read_manifest(path: Path) -> tuple[dict[str, Plan], set[int], dict[int, str], list[tuple[str, int]]]:
    plans: dict[str, Plan] = {}
    done: set[int] = set()
    failed: dict[int, str] = {}
    ids: list[tuple[str, int]] = []
    if not path.exists():
        return plans, done, failed, ids
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        crc, _, body = line.partition(b" ")
        try:
            if int(crc, 16) != zlib.crc32(body):
                raise ValueError("checksum mismatch")
            record = json.loads(body)
        except ValueError as exc:
            if number < len(lines) - 1:  # not the last line: damage, not a torn append
                logger.error("WAL manifest line {} is damaged ({}); skipped", number, exc)
            continue
        if "plan" in record:
            seqs = tuple(parse_ranges(record["seqs"]))
            plans[record["plan"]] = Plan(record["plan"], record["kind"], seqs, record.get("error"))
            if record["kind"] == "failed" and record.get("error"):
                failed.update(dict.fromkeys(seqs, record["error"]))
        elif "done" in record:
            done.update(parse_ranges(record["done"]))
        elif "ids" in record:
            ids.extend((str(i), int(s)) for i, s in record["ids"])
    return plans, done, {s: e for s, e in failed.items() if s in done}, ids
