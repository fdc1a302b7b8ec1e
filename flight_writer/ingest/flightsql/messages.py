"""Flight SQL, as much as bulk ingestion needs: ``CommandStatementIngest`` (what ADBC's ``adbc_ingest`` sends),
``CommandGetSqlInfo`` (asked on connect) and the ``CloseSession`` action.

Messages are decoded and encoded by hand: a handful of protobuf fields, defined here after Arrow's
``FlightSql.proto`` (field numbers) rather than generated, so the server needs no protobuf runtime. The wire
format itself (varints, length-delimited fields) is protowire.py; ``ProtobufError`` and ``decode`` are
re-exported here, so the Flight SQL door needs only this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from flight_writer._version import __version__
from flight_writer.ingest.flightsql.protowire import (
    ProtobufError,
    bytes_field,
    decode,
    get_bytes,
    get_int,
    get_text,
    read_varint,
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
    "SQL_ACTIONS",
    "SQL_INFO",
    "SQL_INFO_SCHEMA",
    "SQL_INFO_VALUE",
    "TYPE_PREFIX",
    "IngestCommand",
    "ProtobufError",
    "catalog_rows",
    "catalog_schema",
    "close_session_result",
    "decode",
    "like",
    "pack_any",
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


def catalog_schema(name: str, value: bytes) -> pa.Schema:
    """The result schema of a catalog command (GetTables adds ``table_schema`` when asked to)."""
    text, required = pa.string(), False
    if name == GET_CATALOGS:
        return pa.schema([pa.field("catalog_name", text, nullable=required)])
    if name == GET_TABLE_TYPES:
        return pa.schema([pa.field("table_type", text, nullable=required)])
    fields = [pa.field("catalog_name", text), pa.field("db_schema_name", text, nullable=name == GET_TABLES)]
    if name == GET_TABLES:
        fields += [pa.field("table_name", text, nullable=required), pa.field("table_type", text, nullable=required)]
        if get_int(decode(value), 5):
            fields.append(pa.field("table_schema", pa.binary(), nullable=required))
    return pa.schema(fields)


def catalog_rows(
    name: str, value: bytes, datasets: list[str], schema_of: Callable[[str], pa.Schema | None]
) -> pa.Table:
    """Answer a catalog command from dataset names: ``catalog/schema/table``, ``schema/table`` or ``table``."""
    fields = decode(value) if name in (GET_DB_SCHEMAS, GET_TABLES) else {}
    catalog = get_text(fields, 1) if get_bytes(fields, 1) is not None else None
    schema_like = get_text(fields, 2) if get_bytes(fields, 2) is not None else None
    table_like = get_text(fields, 3) if get_bytes(fields, 3) is not None else None
    types = [t.decode() for t in fields.get(4, []) if isinstance(t, bytes)]
    out_schema = catalog_schema(name, value)
    if name == GET_TABLE_TYPES:
        return pa.Table.from_pylist([{"table_type": "TABLE"}], schema=out_schema)
    rows: list[dict[str, object]] = []
    for dataset in datasets:
        *parents, table = dataset.split("/")
        # a one-segment dataset lives in the schema "" (a schema name cannot be null in these results)
        cat, sch = (parents[0] if len(parents) == 2 else None), (parents[-1] if parents else "")
        if name == GET_CATALOGS:
            if cat is not None:
                rows.append({"catalog_name": cat})
            continue
        if catalog is not None and (cat or "") != catalog:
            continue
        if schema_like is not None and not like(schema_like, sch):
            continue
        if name == GET_DB_SCHEMAS:
            rows.append({"catalog_name": cat, "db_schema_name": sch})
            continue
        if (table_like is not None and not like(table_like, table)) or (types and "TABLE" not in types):
            continue
        row: dict[str, object] = {
            "catalog_name": cat,
            "db_schema_name": sch,
            "table_name": table,
            "table_type": "TABLE",
        }
        if "table_schema" in out_schema.names:
            row["table_schema"] = (schema_of(dataset) or pa.schema([])).serialize().to_pybytes()
        rows.append(row)
    unique = [dict(r) for r in {tuple(sorted(r.items(), key=lambda kv: kv[0])): r for r in rows}.values()]
    return pa.Table.from_pylist(unique, schema=out_schema)


def like(pattern: str, text: str) -> bool:
    """SQL LIKE: ``%`` any run, ``_`` one character. At most len(pattern) x len(text) steps: a regular
    expression of the same pattern backtracked exponentially (a dozen ``%`` and a ``!`` froze the server)."""
    p = t = 0
    star, resume = -1, 0  # the last % seen, and where in text its run ends for now
    while t < len(text):
        if p < len(pattern) and pattern[p] == "%":
            star, resume = p, t
            p += 1
        elif p < len(pattern) and pattern[p] in ("_", text[t]):
            p += 1
            t += 1
        elif star >= 0:  # let the last % take one more character
            resume += 1
            p, t = star + 1, resume
        else:
            return False
    return all(c == "%" for c in pattern[p:])


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
            pos = 0
            while pos < len(item):
                number, pos = read_varint(item, pos)
                ids.append(number)
    return ids


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
