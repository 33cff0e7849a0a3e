"""Read TensorFlow tensor-bundle checkpoints (``.index`` + ``.data-*``) without TensorFlow.

A TF 1.x/2.x ``tf.train.Saver`` checkpoint is a *tensor bundle*:

- ``<prefix>.index`` is an immutable sorted key/value table in the LevelDB *table* format:
  data blocks of prefix-compressed entries with restart points, an index block pointing at the
  data blocks, a (here empty) meta-index block, and a 48-byte footer holding the two block
  handles as varints and a magic number. Every block is followed by a one-byte compression type
  and a masked CRC-32C of the block.
- The entry with the empty key is a ``BundleHeaderProto`` (number of shards, endianness); every
  other key is a tensor name whose value is a serialized ``BundleEntryProto``: dtype, shape,
  shard id, byte offset and size in the shard, and the masked CRC-32C of the raw bytes.
- ``<prefix>.data-0000k-of-0000n`` holds the raw little-endian tensor bytes.

The protobuf fields we need are decoded by hand from the wire format (varints and
length-delimited fields), so neither ``tensorflow`` nor ``protobuf`` is needed. Both the block
checksums and each tensor's checksum are verified (CRC-32C, vectorised with numpy so a
megabyte-sized tensor costs milliseconds).

Written for the musicnn port (:mod:`musicbench_plugins.models.musicnn`) but general: any
bundle whose tensors are fixed-width numeric and unpartitioned.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type (1 byte) + masked crc32c (4 bytes)

# tensorflow/core/framework/types.proto -> numpy (fixed-width types only)
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),   # DT_FLOAT
    2: np.dtype("<f8"),   # DT_DOUBLE
    3: np.dtype("<i4"),   # DT_INT32
    4: np.dtype("u1"),    # DT_UINT8
    5: np.dtype("<i2"),   # DT_INT16
    6: np.dtype("i1"),    # DT_INT8
    9: np.dtype("<i8"),   # DT_INT64
    10: np.dtype("?"),    # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}


class CheckpointFormatError(ValueError):
    """The bytes are not a tensor bundle we can read (or are corrupt)."""


# -- CRC-32C (Castagnoli), as LevelDB and TF use it -------------------------------------------

_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


_TABLE = _make_table()
_TABLE_PY = [int(v) for v in _TABLE]
_CHUNK_CACHE: dict[int, list[list[int]]] = {}


def _update_py(crc: int, data: bytes | memoryview) -> int:
    table = _TABLE_PY
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _skip_tables(length: int) -> list[list[int]]:
    """Byte tables of the linear map "run the CRC register over ``length`` zero bytes".

    The register update is linear over GF(2): ``update(r, data) = update(r, zeros) ^
    update(0, data)``; this map is ``update(., zeros)``, split into four 256-entry tables (one
    per byte of the register) so applying it costs four look-ups.
    """
    if length not in _CHUNK_CACHE:
        basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
        for _ in range(length):
            basis = _TABLE[basis & 0xFF] ^ (basis >> 8)
        images = [int(v) for v in basis]
        tables = []
        for k in range(4):
            t = [0] * 256
            for v in range(1, 256):
                low = v & -v
                t[v] = t[v ^ low] ^ images[8 * k + low.bit_length() - 1]
            tables.append(t)
        _CHUNK_CACHE[length] = tables
    return _CHUNK_CACHE[length]


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC-32C of ``data`` (continuing from ``crc``, the value of a previous call).

    Long inputs are cut into equal chunks whose zero-seeded CRCs are computed side by side with
    numpy, then folded in order with the linear "skip over a chunk" map.
    """
    data = memoryview(data).cast("B")
    n = len(data)
    reg = crc ^ 0xFFFFFFFF
    if n < 16384:
        return _update_py(reg, data) ^ 0xFFFFFFFF
    chunk = 1 << max(8, (n.bit_length() + 1) // 2)  # ~sqrt(n), a power of two (cached tables)
    head = n % chunk
    reg = _update_py(reg, data[:head])
    blocks = np.frombuffer(data[head:], dtype=np.uint8).reshape(-1, chunk)
    regs = np.zeros(blocks.shape[0], dtype=np.uint32)
    for i in range(chunk):  # one vectorised step per byte column, across all chunks
        regs = _TABLE[(regs ^ blocks[:, i]) & 0xFF] ^ (regs >> 8)
    t0, t1, t2, t3 = _skip_tables(chunk)
    for r in regs.tolist():
        reg = t0[reg & 0xFF] ^ t1[(reg >> 8) & 0xFF] ^ t2[(reg >> 16) & 0xFF] ^ t3[reg >> 24] ^ r
    return reg ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB/TF checksum masking (rotate right by 15, add a constant)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# -- wire format ------------------------------------------------------------------------------


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; returns ``(value, next position)``."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointFormatError("varint longer than 64 bits")


def proto_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field number, wire type, value)`` of a serialized protobuf message.

    Varints come back as ints, fixed32/fixed64 as ints (little-endian unsigned),
    length-delimited fields as bytes. Groups (deprecated wire types 3/4) are rejected.
    """
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value, pos = bytes(buf[pos : pos + length]), pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise CheckpointFormatError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise CheckpointFormatError("truncated protobuf field")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass(frozen=True)
class BundleEntry:
    """The fields of a ``BundleEntryProto`` we use."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored
    sliced: bool = False


def parse_entry(name: str, value: bytes) -> BundleEntry:
    """Decode a serialized ``BundleEntryProto`` (dtype=1, shape=2, shard_id=3, offset=4,
    size=5, crc32c=6 fixed32, slices=7)."""
    dtype, shape, shard, offset, size, crc, sliced = 0, (), 0, 0, 0, None, False
    for number, _, v in proto_fields(value):
        if number == 1:
            dtype = int(v)  # type: ignore[arg-type]
        elif number == 2:
            shape = _parse_shape(v)  # type: ignore[arg-type]
        elif number == 3:
            shard = int(v)  # type: ignore[arg-type]
        elif number == 4:
            offset = _signed64(int(v))  # type: ignore[arg-type]
        elif number == 5:
            size = _signed64(int(v))  # type: ignore[arg-type]
        elif number == 6:
            crc = int(v)  # type: ignore[arg-type]
        elif number == 7:
            sliced = True
    return BundleEntry(name, dtype, shape, shard, offset, size, crc, sliced)


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    """``TensorShapeProto``: repeated ``dim`` (2) of ``Dim{size=1}``; ``unknown_rank`` (3)."""
    dims: list[int] = []
    for number, _, v in proto_fields(buf):
        if number == 2:
            size = 0
            for n2, _, v2 in proto_fields(v):  # type: ignore[arg-type]
                if n2 == 1:
                    size = _signed64(int(v2))  # type: ignore[arg-type]
            dims.append(size)
        elif number == 3 and v:
            raise CheckpointFormatError("tensor of unknown rank in a checkpoint")
    return tuple(dims)


@dataclass(frozen=True)
class BundleHeader:
    num_shards: int
    endianness: int  # 0 little, 1 big


def parse_header(value: bytes) -> BundleHeader:
    """``BundleHeaderProto``: num_shards (1), endianness (2), version (3, ignored)."""
    shards, endian = 1, 0
    for number, _, v in proto_fields(value):
        if number == 1:
            shards = int(v)  # type: ignore[arg-type]
        elif number == 2:
            endian = int(v)  # type: ignore[arg-type]
    return BundleHeader(shards, endian)


# -- the table (LevelDB SSTable) --------------------------------------------------------------


def _block_handle(buf: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return offset, size, pos


def _read_block(table: bytes, offset: int, size: int, *, verify: bool) -> memoryview:
    end = offset + size
    if end + BLOCK_TRAILER_SIZE > len(table):
        raise CheckpointFormatError(
            f"block at {offset} (+{size}) runs past the end of the index ({len(table)} bytes)")
    ctype = table[end]
    if ctype != 0:
        raise CheckpointFormatError(
            f"index block compressed with type {ctype} (1 = snappy); only uncompressed tables "
            "are supported (TF writes tensor-bundle indexes uncompressed)")
    if verify:
        (stored,) = struct.unpack_from("<I", table, end + 1)
        actual = mask_crc(crc32c(memoryview(table)[offset : end + 1]))
        if stored != actual:
            raise CheckpointFormatError(f"checksum mismatch in the index block at {offset}")
    return memoryview(table)[offset:end]


def _block_entries(block: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """Entries of one block: ``shared, non_shared, value_len`` varints, key suffix, value.
    Keys share a prefix with the previous key except at restart points (listed at the end)."""
    if len(block) < 4:
        raise CheckpointFormatError("block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise CheckpointFormatError("block restart array does not fit")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = read_varint(block, pos)
        non_shared, pos = read_varint(block, pos)
        value_len, pos = read_varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise CheckpointFormatError("corrupt block entry")
        key = key[:shared] + bytes(block[pos : pos + non_shared])
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def table_items(table: bytes, *, verify: bool = True) -> Iterator[tuple[bytes, bytes]]:
    """All ``(key, value)`` pairs of a LevelDB-format table, in key order."""
    if len(table) < FOOTER_SIZE:
        raise CheckpointFormatError(f"index of {len(table)} bytes is shorter than a footer")
    footer = memoryview(table)[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
    if magic != TABLE_MAGIC:
        raise CheckpointFormatError(
            f"bad table magic {magic:#018x}: not a TF checkpoint .index file")
    _, _, pos = _block_handle(footer, 0)  # meta-index: unused by tensor bundles
    index_offset, index_size, _ = _block_handle(footer, pos)
    index = _read_block(table, index_offset, index_size, verify=verify)
    for _, handle in _block_entries(index):
        offset, size, _ = _block_handle(handle, 0)
        for key, value in _block_entries(_read_block(table, offset, size, verify=verify)):
            yield key, bytes(value)


# -- the bundle -------------------------------------------------------------------------------


def read_index(index: bytes, *, verify: bool = True) -> tuple[BundleHeader, dict[str, BundleEntry]]:
    """Parse a bundle's ``.index`` bytes into its header and tensor entries."""
    header: BundleHeader | None = None
    entries: dict[str, BundleEntry] = {}
    for key, value in table_items(index, verify=verify):
        if key == b"":
            header = parse_header(value)
        else:
            name = key.decode("utf-8")
            entries[name] = parse_entry(name, value)
    if header is None:
        raise CheckpointFormatError("no bundle header (empty key) in the index")
    if header.endianness != 0:
        raise CheckpointFormatError("big-endian checkpoints are not supported")
    return header, entries


ShardSource = Sequence[bytes] | Callable[[int], bytes]


def read_tensors(
    index: bytes,
    shards: ShardSource,
    names: Iterable[str] | None = None,
    *,
    verify: bool = True,
) -> dict[str, np.ndarray]:
    """Tensors of a bundle as ``{name: numpy array}`` (copies, native byte order).

    :param index: the ``.index`` file's bytes.
    :param shards: the ``.data-*`` shards' bytes in shard order, or a function shard id -> bytes.
    :param names: tensors to read (default: all); a name missing from the bundle raises KeyError.
    :param verify: check the index block checksums and each tensor's CRC-32C.
    :raises CheckpointFormatError: corrupt data, unsupported dtype or partitioned variables.
    """
    header, entries = read_index(index, verify=verify)
    wanted = list(entries) if names is None else list(names)
    missing = [n for n in wanted if n not in entries]
    if missing:
        raise KeyError(f"not in the checkpoint: {missing}")
    get = shards if callable(shards) else (lambda i: shards[i])  # type: ignore[index]
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        e = entries[name]
        if e.sliced:
            raise CheckpointFormatError(f"{name}: partitioned (sliced) variables not supported")
        if e.dtype not in DTYPES:
            raise CheckpointFormatError(f"{name}: unsupported dtype enum {e.dtype}")
        if not 0 <= e.shard_id < header.num_shards:
            raise CheckpointFormatError(f"{name}: shard {e.shard_id} of {header.num_shards}")
        dtype = DTYPES[e.dtype]
        count = int(np.prod(e.shape, dtype=np.int64))
        if e.size != count * dtype.itemsize:
            raise CheckpointFormatError(
                f"{name}: {e.size} bytes for shape {e.shape} of {dtype} ({count * dtype.itemsize})")
        shard = get(e.shard_id)
        raw = memoryview(shard)[e.offset : e.offset + e.size]
        if len(raw) != e.size:
            raise CheckpointFormatError(f"{name}: data shard truncated")
        if verify and e.crc32c is not None and mask_crc(crc32c(raw)) != e.crc32c:
            raise CheckpointFormatError(f"{name}: CRC-32C mismatch (corrupt data shard?)")
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(e.shape).astype(dtype.newbyteorder("="))
    return out
