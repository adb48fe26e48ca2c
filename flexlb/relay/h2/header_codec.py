"""HPACK (RFC 7541) for the frame relay, with the limits enforced while decoding.

The `hpack` library decodes a whole block before anything can be checked, so a block of tens of
thousands of empty literals costs seconds; this decoder counts fields and decoded size as it goes
and stops materialising (but keeps the dynamic table in step) once a limit is passed. Names and
values are `str` decoded as latin-1, so every octet survives the trip through the gateway.
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

Headers = list[tuple[str, str]]

_STATIC: tuple[tuple[str, str], ...] = tuple((n.decode("latin-1"), v.decode("latin-1"))
                                             for n, v in HeaderTable.STATIC_TABLE)
_STATIC_LEN = len(_STATIC)
_STATIC_PAIR = {pair: i + 1 for i, pair in reversed(list(enumerate(_STATIC)))}
_STATIC_NAME = {n: i + 1 for i, (n, _) in reversed(list(enumerate(_STATIC)))}
_ENTRY_OVERHEAD = 32  # RFC 7541 §4.1: an entry's size is name + value + 32
_MAX_INT = 1 << 32  # larger integers are an attack, not a header


class CompressionError(Exception):
    """The block is not valid HPACK: a connection error of type COMPRESSION_ERROR."""


class FieldLimitExceeded(Exception):
    """Far more fields than allowed: the block is not worth decoding (ENHANCE_YOUR_CALM)."""


class Decoder:
    """One connection's HPACK decoding context."""

    def __init__(self, table_size_limit: int = 4096) -> None:
        self._table: deque[tuple[str, str]] = deque()  # newest first
        self._size = 0
        self._limit = table_size_limit  # our SETTINGS_HEADER_TABLE_SIZE
        self._max_size = table_size_limit  # as set by the peer's size updates

    def _evict(self) -> None:
        table = self._table
        while self._size > self._max_size and table:
            n, v = table.pop()
            self._size -= len(n) + len(v) + _ENTRY_OVERHEAD

    def _add(self, name: str, value: str) -> None:
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        if size > self._max_size:
            self._table.clear()
            self._size = 0
            return
        self._table.appendleft((name, value))
        self._size += size
        self._evict()

    def _entry(self, index: int) -> tuple[str, str]:
        if index == 0:
            raise CompressionError("index 0")
        if index <= _STATIC_LEN:
            return _STATIC[index - 1]
        i = index - _STATIC_LEN - 1
        if i >= len(self._table):
            raise CompressionError(f"index {index} is beyond the table")
        return self._table[i]

    def decode(self, block: bytes, max_list_bytes: int, max_fields: int) -> tuple[Headers, str | None]:
        """The fields of `block`, and why the list breaks a limit (None when within).

        Raises CompressionError for invalid HPACK, FieldLimitExceeded past twice `max_fields`.
        """
        out: Headers = []
        over: str | None = None
        list_bytes = 0
        fields = 0
        pos = 0
        n = len(block)
        updates_allowed = True
        while pos < n:
            b = block[pos]
            if b & 0x80:  # indexed field
                index, pos = _integer(block, pos, 7)
                name, value = self._entry(index)
                indexing = False
            elif b & 0xE0 == 0x20:  # dynamic table size update, only before the first field
                if not updates_allowed:
                    raise CompressionError("table size update after a field")
                size, pos = _integer(block, pos, 5)
                if size > self._limit:
                    raise CompressionError(f"table size {size} above SETTINGS_HEADER_TABLE_SIZE {self._limit}")
                self._max_size = size
                self._evict()
                continue
            else:
                indexing = bool(b & 0x40)
                index, pos = _integer(block, pos, 6 if indexing else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = _string(block, pos)
                value, pos = _string(block, pos)
            updates_allowed = False
            fields += 1
            if indexing:
                self._add(name, value)
            if over is None:
                list_bytes += len(name) + len(value) + _ENTRY_OVERHEAD
                if fields > max_fields:
                    over = f"more than {max_fields} header fields"
                elif list_bytes > max_list_bytes:
                    over = f"header list larger than {max_list_bytes} bytes"
                else:
                    out.append((name, value))
            elif fields > 2 * max_fields:
                raise FieldLimitExceeded(f"more than {2 * max_fields} header fields in one block")
        return (out if over is None else []), over


def _integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    mask = (1 << prefix_bits) - 1
    value = block[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    n = len(block)
    while True:
        if pos >= n:
            raise CompressionError("truncated integer")
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if value > _MAX_INT:
            raise CompressionError("integer too large")
        if not b & 0x80:
            return value, pos
        shift += 7


def _string(block: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(block):
        raise CompressionError("truncated string")
    huffman = block[pos] & 0x80
    length, pos = _integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise CompressionError("string longer than the block")
    raw = block[pos:end]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except Exception as exc:  # hpack raises its own error type for bad padding and EOS
            raise CompressionError(f"Huffman: {exc}") from None
    return raw.decode("latin-1"), end


class Encoder:
    """One connection's HPACK encoding context: static-table names, incremental indexing, no Huffman."""

    def __init__(self, table_size: int = 4096) -> None:
        self._max_size = table_size
        self._pending_update: int | None = None
        self._entries: deque[tuple[str, str]] = deque()  # newest first
        self._size = 0
        self._inserted = 0  # entries ever added: gives each entry a stable number
        self._by_pair: dict[tuple[str, str], int] = {}
        self._by_name: dict[str, int] = {}

    def set_table_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE changed: use at most that (signalled in the next block)."""
        size = min(size, 4096)  # more table than this buys nothing for gRPC headers
        if size != self._max_size:
            self._max_size = size
            self._pending_update = size
            self._evict()

    def _evict(self) -> None:
        while self._size > self._max_size and self._entries:
            n, v = self._entries.pop()
            self._size -= len(n) + len(v) + _ENTRY_OVERHEAD
            number = self._inserted - len(self._entries) - 1
            if self._by_pair.get((n, v)) == number:
                del self._by_pair[(n, v)]
            if self._by_name.get(n) == number:
                del self._by_name[n]

    def _index_of(self, number: int) -> int:
        return _STATIC_LEN + self._inserted - number

    def encode(self, headers: Headers) -> bytes:
        """One header block."""
        out = bytearray()
        if self._pending_update is not None:
            out += _int_bytes(self._pending_update, 5, 0x20)
            self._pending_update = None
        for name, value in headers:
            pair = (name, value)
            index = _STATIC_PAIR.get(pair)
            if index is not None:
                out += _int_bytes(index, 7, 0x80)
                continue
            number = self._by_pair.get(pair)
            if number is not None:
                out += _int_bytes(self._index_of(number), 7, 0x80)
                continue
            name_index = _STATIC_NAME.get(name)
            if name_index is None:
                number = self._by_name.get(name)
                name_index = self._index_of(number) if number is not None else 0
            size = len(name) + len(value) + _ENTRY_OVERHEAD
            if size * 4 > self._max_size or name.endswith("-bin") or name == "grpc-message":
                # values that rarely repeat would only churn the table
                out += _int_bytes(name_index, 4, 0x00)
            else:
                out += _int_bytes(name_index, 6, 0x40)
                self._entries.appendleft(pair)
                self._size += size
                self._by_pair[pair] = self._inserted
                self._by_name[name] = self._inserted
                self._inserted += 1
                self._evict()
            if not name_index:
                out += _str_bytes(name)
            out += _str_bytes(value)
        return bytes(out)


def _int_bytes(value: int, prefix_bits: int, first: int) -> bytes:
    mask = (1 << prefix_bits) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _str_bytes(text: str) -> bytes:
    try:
        raw = text.encode("latin-1")  # what the decoder made: the original octets
    except UnicodeEncodeError:
        raw = text.encode("utf-8")  # text of our own
    return _int_bytes(len(raw), 7, 0x00) + raw
