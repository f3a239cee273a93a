"""The regular files of a tar stream, read in one pass: what a WebDataset shard task needs, and no more.

tarfile builds a TarInfo and a file object per member; for shards of small images that costs about as
much as decoding them. Here each 512-byte header is parsed with slices (ustar's name and prefix,
pax `path` records, GNU long names), its checksum checked, and the member's bytes read from one
buffered stream. Compressed shards (gzip, bzip2, xz) go through tarfile, which reads those itself.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator

BLOCK = 512
_MAGIC = {b"\x1f\x8b": "gz", b"BZ": "bz2", b"\xfd7": "xz"}


def _number(field: bytes) -> int:
    if field[:1] == b"\x80":  # GNU base-256, for members over 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError(f"invalid header: {field!r} is not a number") from None


def _pax_path(data: bytes) -> bytes | None:
    """The `path` record of a pax extended header ("LEN path=VALUE\\n" records)."""
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            return value
        pos += length
    return None


def members(stream, limit: int) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) of each regular file in order; bytes None for one over `limit` (skipped unread).
    A damaged stream raises tarfile.ReadError or EOFError after the members before the damage."""
    buf = io.BufferedReader(stream, 1 << 20) if not isinstance(stream, io.BufferedReader) else stream
    if buf.peek(2)[:2] in _MAGIC:
        yield from _compressed(buf, limit)
        return
    long_name = None
    while True:
        header = buf.read(BLOCK)
        if not header or header.count(0) == BLOCK:  # end of archive (two zero blocks, or none at all)
            return
        if len(header) < BLOCK:
            raise EOFError("unexpected end of data in a member header")
        if _number(header[148:156]) != sum(header) - sum(header[148:156]) + 8 * 32:
            raise tarfile.ReadError("bad checksum in a member header")
        size, kind = _number(header[124:136]), header[156:157]
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar" and header[345:346] != b"\0":
            name = header[345:500].split(b"\0", 1)[0] + b"/" + name
        padded = size + (-size) % BLOCK
        if kind in (b"x", b"L") or (kind in (b"0", b"\0", b"7") and size <= limit):
            data = buf.read(padded)
            if len(data) < padded:
                raise EOFError("unexpected end of data inside a member")
            data = data[:size]
        else:  # not a file, or too large: skipped without keeping its bytes
            while padded:
                skipped = len(buf.read(min(padded, 1 << 20)))
                if not skipped:
                    raise EOFError("unexpected end of data inside a member")
                padded -= skipped
            data = None
        if kind == b"x":
            try:
                long_name = _pax_path(data) or long_name
            except ValueError:
                raise tarfile.ReadError("invalid pax extended header") from None
            continue
        if kind == b"L":
            long_name = data.rstrip(b"\0")
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            continue
        yield (long_name or name).decode("utf-8", "surrogateescape"), data
        long_name = None


def _compressed(buf, limit: int):
    with tarfile.open(fileobj=buf, mode="r|*") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, tar.extractfile(member).read() if member.size <= limit else None
