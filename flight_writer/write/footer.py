"""One Parquet file from row groups encoded apart, so the row groups of one file encode on several cores.

pyarrow encodes a file's row groups one after another. To use more cores for one file, each row group is
encoded on its own as a complete one-row-group Parquet file (a *part*, with the same schema and writer
settings), and ``assemble`` joins the parts into one file: the magic, each part's column chunks in order,
then one footer made from the parts' footers, with every absolute offset moved by where its part's chunks
landed, ``num_rows`` summed, the row groups' ordinals renumbered, and our key/value metadata added.

The footer is Thrift's compact protocol (parquet.thrift ``FileMetaData``). The structs on the way to the
offsets are decoded and encoded back field by field; every other field keeps its encoded bytes, so fields
this module does not know pass through unchanged. Parts with a page index or bloom filters (which live outside the
column chunks) or encryption are refused (``ValueError``): our writer enables none of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MAGIC = b"PAR1"

# compact protocol types
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)

# field ids (parquet.thrift)
_FMD_NUM_ROWS, _FMD_ROW_GROUPS, _FMD_KEY_VALUE, _FMD_ENCRYPTION = 3, 4, 5, 8
_RG_COLUMNS, _RG_FILE_OFFSET, _RG_ORDINAL = 1, 5, 7
_CC_FILE_OFFSET, _CC_META, _CC_OFFSET_INDEX, _CC_COLUMN_INDEX, _CC_CRYPTO = 2, 3, 4, 6, 8
_CMD_DATA_PAGE, _CMD_INDEX_PAGE, _CMD_DICT_PAGE, _CMD_BLOOM = 9, 10, 11, 14

Struct = dict[int, tuple[int, Any]]  # field id -> (compact type, value)
_COLUMN_META = {_CMD_DATA_PAGE: {}, _CMD_INDEX_PAGE: {}, _CMD_DICT_PAGE: {}}
_COLUMN_CHUNK = {_CC_FILE_OFFSET: {}, _CC_META: _COLUMN_META}
_ROW_GROUP = {_RG_COLUMNS: _COLUMN_CHUNK, _RG_FILE_OFFSET: {}, _RG_ORDINAL: {}}
_DESCEND = {_FMD_NUM_ROWS: {}, _FMD_ROW_GROUPS: _ROW_GROUP, _FMD_KEY_VALUE: {1: {}}}


# -- decoding ------------------------------------------------------------------------------------------------
# Only the structs on the way to an offset are decoded (``_DESCEND``); any other field keeps its encoded
# bytes and is written back as it was: fewer Python objects per footer (the GIL is held throughout).
_RAW = -1  # a value kept encoded: (kind, bytes)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self) -> int:
        data, pos = self.data, self.pos
        shift = result = 0
        while True:
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                self.pos = pos
                return result
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip(self, kind: int) -> None:
        """Move past one value of ``kind`` without building it (the hot part of joining: kept flat)."""
        data, pos = self.data, self.pos
        if kind in (_I16, _I32, _I64):
            while data[pos] & 0x80:
                pos += 1
            self.pos = pos + 1
        elif kind == _BINARY:
            self.pos = pos
            n = self.varint()
            self.pos += n
        elif kind in (_LIST, _SET):
            header = data[pos]
            self.pos = pos + 1
            size, elem = header >> 4, header & 0x0F
            if size == 15:
                size = self.varint()
            if elem in (_I16, _I32, _I64):  # a run of varints: every byte without the high bit ends one
                pos = self.pos
                while size:
                    if not data[pos] & 0x80:
                        size -= 1
                    pos += 1
                self.pos = pos
            else:
                for _ in range(size):
                    self.skip(elem)
        elif kind == _STRUCT:
            while (header := data[self.pos]) != 0:
                self.pos += 1
                if not header >> 4:
                    self.zigzag()
                if header & 0x0F not in (_TRUE, _FALSE):
                    self.skip(header & 0x0F)
            self.pos += 1
        elif kind in (_TRUE, _FALSE, _BYTE):
            self.pos = pos + 1
        elif kind == _DOUBLE:
            self.pos = pos + 8
        else:
            raise ValueError(f"Parquet footer: unsupported Thrift compact type {kind}")

    def struct(self, descend: dict[int, Any]) -> Struct:
        """A struct whose fields in ``descend`` are decoded (ints, or structs and lists of structs with
        their own ``descend``); every other field is kept encoded."""
        fields: Struct = {}
        last = 0
        data = self.data
        while (header := data[self.pos]) != 0:
            self.pos += 1
            kind, delta = header & 0x0F, header >> 4
            field = last + delta if delta else self.zigzag()
            last = field
            if kind in (_TRUE, _FALSE):
                fields[field] = (kind, kind == _TRUE)
            elif field in descend and kind in (_I16, _I32, _I64):
                fields[field] = (kind, self.zigzag())
            elif field in descend and kind == _BINARY:
                n = self.varint()
                self.pos += n
                fields[field] = (kind, data[self.pos - n : self.pos])
            elif field in descend and kind == _STRUCT:
                fields[field] = (kind, self.struct(descend[field]))
            elif field in descend and kind == _LIST:
                header = data[self.pos]
                self.pos += 1
                size, elem = header >> 4, header & 0x0F
                if size == 15:
                    size = self.varint()
                if elem != _STRUCT:
                    raise ValueError(f"Parquet footer: field {field} is not a list of structs")
                fields[field] = (kind, (elem, [self.struct(descend[field]) for _ in range(size)]))
            else:
                begin = self.pos
                self.skip(kind)
                fields[field] = (_RAW, (kind, data[begin : self.pos]))
        self.pos += 1
        return fields


# -- encoding ------------------------------------------------------------------------------------------------
def _varint(n: int, out: bytearray) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zigzag(n: int, out: bytearray) -> None:
    _varint((n << 1) ^ (n >> 63), out)


def _struct(fields: Struct, out: bytearray) -> None:
    last = 0
    for field in sorted(fields):
        kind, value = fields[field]
        raw = None
        if kind == _RAW:
            kind, raw = value
        elif kind in (_TRUE, _FALSE):
            kind = _TRUE if value else _FALSE
        if 0 < field - last <= 15:
            out.append(((field - last) << 4) | kind)
        else:
            out.append(kind)
            _zigzag(field, out)
        last = field
        if raw is not None:
            out += raw
        elif kind in (_I16, _I32, _I64):
            _zigzag(value, out)
        elif kind == _BINARY:
            _varint(len(value), out)
            out += value
        elif kind == _STRUCT:
            _struct(value, out)
        elif kind == _LIST:
            elem, items = value
            if len(items) < 15:
                out.append((len(items) << 4) | elem)
            else:
                out.append(0xF0 | elem)
                _varint(len(items), out)
            for item in items:
                _struct(item, out)
    out.append(0)


# -- the parts -----------------------------------------------------------------------------------------------
def split(part: bytes | memoryview) -> tuple[int, Struct]:
    """A complete Parquet file -> (where its footer starts, its decoded footer)."""
    view = memoryview(part)
    if len(view) < 12 or view[:4] != MAGIC or view[-4:] != MAGIC:
        raise ValueError("not a Parquet file (magic bytes missing)")
    length = int.from_bytes(view[-8:-4], "little")
    start = len(view) - 8 - length
    return start, _Reader(bytes(view[start:-8])).struct(_DESCEND)


def _shift(fields: Struct, field: int, by: int) -> None:
    if field in fields:
        kind, value = fields[field]
        fields[field] = (kind, value + by)


def merge_footers(footers: list[tuple[Struct, int]], metadata: dict[bytes, bytes]) -> bytes:
    """One encoded footer from ``(footer, shift)`` per part, in file order: every row group of every part,
    its offsets moved by ``shift``; key/value metadata of the first part plus ``metadata``."""
    merged = dict(footers[0][0])
    row_groups: list[Struct] = []
    rows = 0
    for footer, shift in footers:
        if _FMD_ENCRYPTION in footer:
            raise ValueError("encrypted Parquet parts cannot be joined")
        rows += footer[_FMD_NUM_ROWS][1]
        for group in footer[_FMD_ROW_GROUPS][1][1]:
            group = dict(group)
            _shift(group, _RG_FILE_OFFSET, shift)
            if _RG_ORDINAL in group:
                group[_RG_ORDINAL] = (_I16, len(row_groups))
            columns = []
            for chunk in group[_RG_COLUMNS][1][1]:
                if _CC_OFFSET_INDEX in chunk or _CC_COLUMN_INDEX in chunk or _CC_CRYPTO in chunk:
                    raise ValueError("Parquet parts with a page index or encryption cannot be joined")
                chunk = dict(chunk)
                _shift(chunk, _CC_FILE_OFFSET, shift)
                meta = dict(chunk[_CC_META][1])
                if _CMD_BLOOM in meta:
                    raise ValueError("Parquet parts with bloom filters cannot be joined")
                for field in (_CMD_DATA_PAGE, _CMD_INDEX_PAGE, _CMD_DICT_PAGE):
                    _shift(meta, field, shift)
                chunk[_CC_META] = (_STRUCT, meta)
                columns.append(chunk)
            group[_RG_COLUMNS] = (_LIST, (_STRUCT, columns))
            row_groups.append(group)
    merged[_FMD_NUM_ROWS] = (_I64, rows)
    merged[_FMD_ROW_GROUPS] = (_LIST, (_STRUCT, row_groups))
    pairs = [kv for kv in merged.get(_FMD_KEY_VALUE, (_LIST, (_STRUCT, [])))[1][1] if kv[1][1] not in metadata]
    pairs += [{1: (_BINARY, k), 2: (_BINARY, v)} for k, v in metadata.items()]
    merged[_FMD_KEY_VALUE] = (_LIST, (_STRUCT, pairs))
    out = bytearray()
    _struct(merged, out)
    return bytes(out)


def assemble(parts: Iterable[bytes | memoryview], metadata: dict[bytes, bytes]) -> list[bytes | memoryview]:
    """The pieces of one Parquet file holding the row groups of ``parts`` in order, to be written one
    after another: the magic, each part's column chunks (views into the parts, not copies), the footer."""
    pieces: list[bytes | memoryview] = [MAGIC]
    footers = []
    position = len(MAGIC)
    for part in parts:
        start, footer = split(part)
        pieces.append(memoryview(part)[len(MAGIC) : start])
        footers.append((footer, position - len(MAGIC)))
        position += start - len(MAGIC)
    footer = merge_footers(footers, metadata)
    pieces += [footer, len(footer).to_bytes(4, "little"), MAGIC]
    return pieces


def file_metadata(footer: bytes | memoryview) -> pq.FileMetaData:
    """The Thrift footer of a Parquet file (without its length and magic) as pyarrow's FileMetaData."""
    data = bytes(footer)
    return pq.read_metadata(pa.BufferReader(MAGIC + data + len(data).to_bytes(4, "little") + MAGIC))
