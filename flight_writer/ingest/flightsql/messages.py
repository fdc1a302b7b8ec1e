"""Flight SQL, as much as bulk ingestion needs: ``CommandStatementIngest`` (what ADBC's ``adbc_ingest`` sends),
``CommandGetSqlInfo`` (asked on connect) and the ``CloseSession`` action.

Messages are decoded and encoded by hand: a handful of protobuf fields, defined here after Arrow's
``FlightSql.proto`` (field numbers) rather than generated, so the server needs no protobuf runtime. The wire
format itself (varints, length-delimited fields) is protowire.py; ``ProtobufError`` and ``decode`` are
re-exported here, so the Flight SQL door needs only this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from flight_writer._version import __version__
from flight_writer.ingest.flightsql.protowire import (
    LimitError,
    ProtobufError,
    bytes_field,
    decode,
    get_bytes,
    get_int,
    get_text,
    packed_varints,
    varint_field,
)

__all__ = [
    "CATALOG_COMMANDS",
    "GET_CATALOGS",
    "GET_DB_SCHEMAS",
    "GET_SQL_INFO",
    "GET_TABLES",
    "GET_TABLE_TYPES",
    "IF_EXISTS",
    "IF_NOT_EXIST",
    "INGEST",
    "MAX_CATALOG_ROWS",
    "MAX_PATTERN",
    "MAX_TABLE_SCHEMAS",
    "SQL_ACTIONS",
    "SQL_INFO",
    "SQL_INFO_SCHEMA",
    "SQL_INFO_VALUE",
    "TYPE_PREFIX",
    "CatalogRequest",
    "IngestCommand",
    "Like",
    "LimitError",
    "ProtobufError",
    "catalog_rows",
    "close_session_result",
    "decode",
    "like",
    "pack_any",
    "parse_catalog",
    "parse_ingest",
    "parse_sql_info_request",
    "sql_info_table",
    "unpack_any",
    "update_result",
]

TYPE_PREFIX = "type.googleapis.com/arrow.flight.protocol.sql."
INGEST = "CommandStatementIngest"
GET_SQL_INFO = "CommandGetSqlInfo"
GET_CATALOGS = "CommandGetCatalogs"
GET_DB_SCHEMAS = "CommandGetDbSchemas"
GET_TABLES = "CommandGetTables"
GET_TABLE_TYPES = "CommandGetTableTypes"
CATALOG_COMMANDS = (GET_CATALOGS, GET_DB_SCHEMAS, GET_TABLES, GET_TABLE_TYPES)

# Flight SQL's actions other than CloseSession: answered UNIMPLEMENTED, not "unknown action"
SQL_ACTIONS = frozenset(
    {
        "CreatePreparedStatement",
        "CreatePreparedSubstraitPlan",
        "ClosePreparedStatement",
        "BeginTransaction",
        "BeginSavepoint",
        "EndTransaction",
        "EndSavepoint",
        "CancelQuery",
        "CancelFlightInfo",
        "RenewFlightEndpoint",
        "SetSessionOptions",
        "GetSessionOptions",
    }
)

# What one catalog call may ask for (clients control all three): refused beyond, naming the limit
MAX_PATTERN = 1024  # characters in a catalog name or a LIKE pattern
MAX_CATALOG_ROWS = 100_000  # rows in one answer
MAX_TABLE_SCHEMAS = 1000  # tables in one GetTables with include_schema (each reads a Parquet footer)

# CommandStatementIngest.TableDefinitionOptions
IF_NOT_EXIST = {0: "unspecified", 1: "create", 2: "fail"}
IF_EXISTS = {0: "unspecified", 1: "fail", 2: "append", 3: "replace"}

SQL_INFO_VALUE = pa.dense_union(
    [
        pa.field("string_value", pa.string()),
        pa.field("bool_value", pa.bool_()),
        pa.field("bigint_value", pa.int64()),
        pa.field("int32_bitmask", pa.int32()),
        pa.field("string_list", pa.list_(pa.string())),
        pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32()))),
    ]
)
SQL_INFO_SCHEMA = pa.schema([pa.field("info_name", pa.uint32(), nullable=False), pa.field("value", SQL_INFO_VALUE)])
_STRING, _BOOL, _INT32 = 0, 1, 3
# SqlInfo ids -> (union member, value): what an ingest-only server can truthfully say about itself
SQL_INFO: dict[int, tuple[int, object]] = {
    0: (_STRING, "flight-writer"),  # FLIGHT_SQL_SERVER_NAME
    1: (_STRING, __version__),  # FLIGHT_SQL_SERVER_VERSION
    2: (_STRING, pa.__version__),  # FLIGHT_SQL_SERVER_ARROW_VERSION
    3: (_BOOL, False),  # FLIGHT_SQL_SERVER_READ_ONLY
    4: (_BOOL, False),  # FLIGHT_SQL_SERVER_SQL: no SQL queries
    5: (_BOOL, False),  # FLIGHT_SQL_SERVER_SUBSTRAIT
    8: (_INT32, 0),  # FLIGHT_SQL_SERVER_TRANSACTION: SQL_SUPPORTED_TRANSACTION_NONE
    9: (_BOOL, False),  # FLIGHT_SQL_SERVER_CANCEL
    10: (_BOOL, True),  # FLIGHT_SQL_SERVER_BULK_INGESTION
    11: (_BOOL, False),  # FLIGHT_SQL_SERVER_INGEST_TRANSACTIONS_SUPPORTED
}


@dataclass(frozen=True)
class CatalogRequest:
    """A catalog command, decoded and checked once per call: its filters (LIKE patterns compiled) and the
    schema of its answer."""

    name: str
    catalog: str | None = None  # exact
    db_schema: Like | None = None
    table: Like | None = None
    tables: bool = True  # table_types is empty or names TABLE
    include_schema: bool = False

    @property
    def schema(self) -> pa.Schema:
        """The result schema (GetTables adds ``table_schema`` when asked to)."""
        text, required = pa.string(), False
        if self.name == GET_CATALOGS:
            return pa.schema([pa.field("catalog_name", text, nullable=required)])
        if self.name == GET_TABLE_TYPES:
            return pa.schema([pa.field("table_type", text, nullable=required)])
        fields = [pa.field("catalog_name", text), pa.field("db_schema_name", text, nullable=self.name == GET_TABLES)]
        if self.name == GET_TABLES:
            fields += [pa.field("table_name", text, nullable=required), pa.field("table_type", text, nullable=required)]
            if self.include_schema:
                fields.append(pa.field("table_schema", pa.binary(), nullable=required))
        return pa.schema(fields)

    @property
    def lists_datasets(self) -> bool:
        return self.name != GET_TABLE_TYPES


def parse_catalog(name: str, value: bytes) -> CatalogRequest:
    """``CommandGetDbSchemas``/``CommandGetTables`` fields (the others have none that matter here):
    ``LimitError`` for a name or pattern over ``MAX_PATTERN`` characters."""
    if name not in (GET_DB_SCHEMAS, GET_TABLES):
        return CatalogRequest(name)
    fields = decode(value)

    def text(number: int, what: str) -> str | None:
        if get_bytes(fields, number) is None:
            return None
        found = get_text(fields, number)
        if len(found) > MAX_PATTERN:
            raise LimitError(f"{what} is {len(found)} characters; {MAX_PATTERN} is the most this server takes")
        return found

    catalog = text(1, "catalog")
    schema_like = text(2, "db_schema_filter_pattern")
    table_like = text(3, "table_name_filter_pattern") if name == GET_TABLES else None
    types = {_utf8(t, 4) for t in fields.get(4, []) if isinstance(t, bytes)} if name == GET_TABLES else set()
    return CatalogRequest(
        name,
        catalog,
        Like(schema_like) if schema_like is not None else None,
        Like(table_like) if table_like is not None else None,
        not types or "TABLE" in types,
        name == GET_TABLES and bool(get_int(fields, 5)),
    )


def catalog_rows(
    request: CatalogRequest, datasets: list[str], schema_of: Callable[[str], pa.Schema | None]
) -> pa.Table:
    """Answer a catalog command from dataset names: ``catalog/schema/table``, ``schema/table`` or ``table``.
    One pass over the names, each pattern matched once per distinct value; the Parquet schemas
    (``include_schema``) are read last, only for the tables answered, at most ``MAX_TABLE_SCHEMAS``."""
    name, out_schema = request.name, request.schema
    if name == GET_TABLE_TYPES:
        return pa.Table.from_pylist([{"table_type": "TABLE"}], schema=out_schema)
    if name == GET_TABLES and not request.tables:  # asked for views or the like: there are none
        return out_schema.empty_table()
    schemas = _Matches(request.db_schema)
    tables = _Matches(request.table)
    rows: dict[tuple[str | None, ...], str] = {}  # (catalog, schema[, table]) -> the dataset; in name order
    for dataset in datasets:
        *parents, table = dataset.split("/")
        # a one-segment dataset lives in the schema "" (a schema name cannot be null in these results)
        cat, sch = (parents[0] if len(parents) == 2 else None), (parents[-1] if parents else "")
        if name == GET_CATALOGS:
            if cat is not None:
                rows.setdefault((cat,), dataset)
        elif (request.catalog is None or (cat or "") == request.catalog) and schemas(sch):
            if name == GET_DB_SCHEMAS:
                rows.setdefault((cat, sch), dataset)
            elif tables(table):
                rows.setdefault((cat, sch, table), dataset)
        if len(rows) > MAX_CATALOG_ROWS:
            raise LimitError(
                f"the answer has more than {MAX_CATALOG_ROWS} rows, the most one call returns; narrow it "
                "with catalog, db_schema_filter_pattern or table_name_filter_pattern"
            )
    if request.include_schema and len(rows) > MAX_TABLE_SCHEMAS:
        raise LimitError(
            f"{len(rows)} tables match with include_schema; {MAX_TABLE_SCHEMAS} is the most one call reads "
            "the schemas of: narrow it with catalog, db_schema_filter_pattern or table_name_filter_pattern"
        )
    if not rows:
        return out_schema.empty_table()
    arrays: list[pa.Array] = [pa.array(values, pa.string()) for values in zip(*rows, strict=True)]
    if name == GET_TABLES:
        arrays.insert(3, pa.array(["TABLE"] * len(rows), pa.string()))
        if request.include_schema:
            blobs = [(schema_of(d) or pa.schema([])).serialize().to_pybytes() for d in rows.values()]
            arrays.append(pa.array(blobs, pa.binary()))
    return pa.Table.from_arrays(arrays, schema=out_schema)


class _Matches:
    """``like(text)``, remembered per distinct text for one call (schema names repeat across tables)."""

    def __init__(self, like: Like | None) -> None:
        self._like = like
        self._seen: dict[str, bool] = {}

    def __call__(self, text: str) -> bool:
        if self._like is None:
            return True
        found = self._seen.get(text)
        if found is None:
            found = self._seen[text] = self._like(text)
        return found


class Like:
    """A SQL LIKE pattern, compiled once: ``%`` any run of characters, ``_`` any one, ``\\`` makes the next
    character literal (``\\_``, ``\\%``, ``\\\\``; a trailing one is itself). At most ``MAX_PATTERN``
    characters (``LimitError``).

    The pattern is cut at its ``%`` into fixed-length pieces: the first must match at the start of the text,
    the last at its end, and each other piece is placed leftmost after the one before (which leaves the
    most room for the rest, so no other placement need be tried: nothing backtracks). A piece is found with
    ``str.find``, or a regular expression of literals and ``.`` when it holds ``_``, neither of which
    backtracks, and a text shorter than the pieces together is refused before any search: a match costs at
    most len(text) x len(pattern) character steps in C, usually one pass."""

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_PATTERN:
            raise LimitError(f"a LIKE pattern of {len(pattern)} characters; {MAX_PATTERN} is the most")
        pieces: list[list[str | None]] = [[]]  # None: any one character
        chars = iter(pattern)
        for c in chars:
            if c == "%":
                pieces.append([])
            elif c == "_":
                pieces[-1].append(None)
            else:
                pieces[-1].append(next(chars, "\\") if c == "\\" else c)
        self._length = sum(len(p) for p in pieces)  # the shortest text that can match
        self._exact = len(pieces) == 1
        self._first, self._last = _piece(pieces[0]), _piece(pieces[-1])
        self._middle = [_piece(p) for p in pieces[1:-1] if p]

    def __call__(self, text: str) -> bool:
        if len(text) < self._length or (self._exact and len(text) != self._length):
            return False
        first, last = self._first, self._last
        pos, end = len(first), len(text) - len(last)
        if not _at(first, text, 0) or not _at(last, text, end):
            return False
        for piece in self._middle:
            if isinstance(piece, str):
                found = text.find(piece, pos, end)
                if found < 0:
                    return False
                pos = found + len(piece)
            else:
                match = piece.search(text, pos, end)
                if match is None:
                    return False
                pos = match.end()
        return True


def like(pattern: str, text: str) -> bool:
    """SQL LIKE (see :class:`Like`; compile it once when matching many texts)."""
    return Like(pattern)(text)


class _Wild:
    """A piece with ``_``: a compiled regular expression of literals and ``.`` (no quantifier, so nothing
    to backtrack) and its length."""

    def __init__(self, chars: list[str | None]) -> None:
        self.regex = re.compile("".join("." if c is None else re.escape(c) for c in chars), re.DOTALL)
        self.size = len(chars)

    def __len__(self) -> int:
        return self.size

    def search(self, text: str, pos: int, end: int) -> re.Match[str] | None:
        return self.regex.search(text, pos, end)


def _piece(chars: list[str | None]) -> str | _Wild:
    return "".join(chars) if None not in chars else _Wild(chars)  # type: ignore[arg-type]


def _at(piece: str | _Wild, text: str, pos: int) -> bool:
    if isinstance(piece, str):
        return text.startswith(piece, pos)
    return piece.regex.match(text, pos, pos + len(piece)) is not None


def _utf8(value: bytes, number: int) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ProtobufError(f"field {number} is not UTF-8") from None


@dataclass
class IngestCommand:
    table: str = ""
    schema: str | None = None
    catalog: str | None = None
    temporary: bool = False
    transaction_id: bytes | None = None
    if_not_exist: str = "unspecified"
    if_exists: str = "unspecified"
    options: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> list[str]:
        return [p for p in (self.catalog, self.schema) if p] + [self.table]


def unpack_any(data: bytes) -> tuple[str, bytes]:
    """``google.protobuf.Any`` -> (message name under Flight SQL's prefix, or the full type URL; value)."""
    fields = decode(data)
    url = get_text(fields, 1)
    value = get_bytes(fields, 2) or b""
    return (url[len(TYPE_PREFIX) :] if url.startswith(TYPE_PREFIX) else url), value


def pack_any(name: str, value: bytes) -> bytes:
    return bytes_field(1, (TYPE_PREFIX + name).encode()) + bytes_field(2, value)


def parse_ingest(value: bytes) -> IngestCommand:
    fields = decode(value)
    cmd = IngestCommand(
        table=get_text(fields, 2),
        schema=get_text(fields, 3) or None,
        catalog=get_text(fields, 4) or None,
        temporary=bool(get_int(fields, 5)),
        transaction_id=get_bytes(fields, 6),
    )
    if (options := get_bytes(fields, 1)) is not None:
        table_options = decode(options)
        cmd.if_not_exist = IF_NOT_EXIST.get(get_int(table_options, 1), "unspecified")
        cmd.if_exists = IF_EXISTS.get(get_int(table_options, 2), "unspecified")
    for entry in fields.get(1000, []):
        if isinstance(entry, bytes):
            kv = decode(entry)
            cmd.options[get_text(kv, 1)] = get_text(kv, 2)
    return cmd


def parse_sql_info_request(value: bytes) -> list[int]:
    """The ``info`` ids asked for (packed or not); empty means all."""
    ids: list[int] = []
    for item in decode(value).get(1, []):
        if isinstance(item, int):
            ids.append(item)
        else:  # packed repeated uint32
            ids += packed_varints(item)
    return list(dict.fromkeys(ids))  # each answered once


def sql_info_table(ids: list[int]) -> pa.Table:
    wanted = [i for i in (ids or SQL_INFO) if i in SQL_INFO]
    children: list[list[object]] = [[] for _ in SQL_INFO_VALUE]
    type_codes, offsets = [], []
    for info in wanted:
        member, value = SQL_INFO[info]
        type_codes.append(member)
        offsets.append(len(children[member]))
        children[member].append(value)
    arrays = [pa.array(values, type=f.type) for values, f in zip(children, SQL_INFO_VALUE, strict=True)]
    union = pa.UnionArray.from_dense(
        pa.array(type_codes, pa.int8()), pa.array(offsets, pa.int32()), arrays, [f.name for f in SQL_INFO_VALUE]
    )
    return pa.Table.from_arrays([pa.array(wanted, pa.uint32()), union], schema=SQL_INFO_SCHEMA)


def update_result(record_count: int) -> bytes:
    """``DoPutUpdateResult { int64 record_count = 1 }``."""
    return varint_field(1, record_count)


def close_session_result() -> bytes:
    """``CloseSessionResult { status = CLOSED (1) }``."""
    return varint_field(1, 1)
