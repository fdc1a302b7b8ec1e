"""The protobuf wire format, as much as Flight SQL's messages use: varints and length-delimited fields
decoded into ``{field number: [values]}``, read back by field number, and encoded one field at a time.

Written by hand so that the server needs no protobuf runtime; the messages built on it are in messages.py.
Decoding is one pass over the bytes, never recursive (a nested message is decoded when the code that reads
its field asks), and a message holds at most ``MAX_FIELDS`` values: clients control these bytes, and each
value costs a Python object.
"""

from __future__ import annotations

Fields = dict[int, list[int | bytes]]  # field number -> its values in order (ints for varints and fixed)
MAX_FIELDS = 10_000  # values in one message, and in one packed repeated field


class ProtobufError(ValueError):
    """Bytes that are not the protobuf message they should be."""


class LimitError(ValueError):
    """A message this server will not take: over one of its limits on what clients send (the message says
    which, and the limit)."""


def decode(data: bytes) -> Fields:
    fields: Fields = {}
    pos = count = 0
    try:
        while pos < len(data):
            count += 1
            if count > MAX_FIELDS:
                raise LimitError(
                    f"a message of more than {MAX_FIELDS} fields; {MAX_FIELDS} is the most this server decodes"
                )
            key, pos = read_varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = read_varint(data, pos)
            elif wire == 2:
                length, pos = read_varint(data, pos)
                if pos + length > len(data):
                    raise ProtobufError("length runs past the end")
                value, pos = data[pos : pos + length], pos + length
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                if pos + size > len(data):
                    raise ProtobufError("truncated message")
                value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
            else:
                raise ProtobufError(f"unsupported wire type {wire}")
            fields.setdefault(number, []).append(value)
    except IndexError:
        raise ProtobufError("truncated message") from None
    return fields


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it (IndexError when ``data`` ends inside it)."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def packed_varints(data: bytes) -> list[int]:
    """A packed repeated varint field's values (at most ``MAX_FIELDS``)."""
    values: list[int] = []
    pos = 0
    try:
        while pos < len(data):
            if len(values) == MAX_FIELDS:
                raise LimitError(f"a packed field of more than {MAX_FIELDS} values; {MAX_FIELDS} is the most")
            value, pos = read_varint(data, pos)
            values.append(value)
    except IndexError:
        raise ProtobufError("truncated packed field") from None
    return values


def encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint_field(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


def bytes_field(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


# Reading a decoded message: a field given more than once counts with its last value, as in protobuf
def get_bytes(fields: Fields, number: int) -> bytes | None:
    values = [v for v in fields.get(number, []) if isinstance(v, bytes)]
    return values[-1] if values else None


def get_text(fields: Fields, number: int) -> str:
    value = get_bytes(fields, number)
    try:
        return value.decode() if value is not None else ""
    except UnicodeDecodeError:
        raise ProtobufError(f"field {number} is not UTF-8") from None


def get_int(fields: Fields, number: int) -> int:
    values = [v for v in fields.get(number, []) if isinstance(v, int)]
    return values[-1] if values else 0
