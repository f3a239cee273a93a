"""pipeline/tarstream.py: the members of a tar stream, the same as tarfile reads them."""

import gzip
import io
import tarfile

import pytest

from pipeline import tarstream

FILES = [("a/b/0001.png", b"x" * 700), ("a/b/0001.cls", b"3"), ("a/dir", None),
         ("long/" + "n" * 150 + ".png", b"y" * 1200), ("é/ünï.json", b'{"label": 1}'), ("big.png", b"z" * 5000),
         ("empty.txt", b"")]


def _tar(fmt, files) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _tarfile_reads(raw: bytes, limit: int):
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|*") as tar:
        return [(m.name, tar.extractfile(m).read() if m.size <= limit else None) for m in tar if m.isfile()]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_are_what_tarfile_reads(fmt):
    # ustar holds no name over 100 characters without a prefix folder, nor non-ASCII ones portably
    files = FILES if fmt != tarfile.USTAR_FORMAT else [f for f in FILES if not f[0].startswith(("long", "é"))]
    raw = _tar(fmt, files)
    got = list(tarstream.members(io.BytesIO(raw), 4096))
    assert got == _tarfile_reads(raw, 4096)
    assert ("big.png", None) in got and ("empty.txt", b"") in got and all(n != "a/dir" for n, _ in got)
    if fmt != tarfile.USTAR_FORMAT:
        assert ("long/" + "n" * 150 + ".png", b"y" * 1200) in got and ("é/ünï.json", b'{"label": 1}') in got


def test_compressed_shards_are_read_too():
    raw = _tar(tarfile.PAX_FORMAT, FILES)
    assert list(tarstream.members(io.BytesIO(gzip.compress(raw)), 4096)) == _tarfile_reads(raw, 4096)


def test_damage_is_an_error_after_the_members_before_it():
    raw = _tar(tarfile.PAX_FORMAT, FILES)
    read = []
    with pytest.raises(EOFError, match="unexpected end of data"):
        # 512-byte blocks: the first member's header and data end at 1536, the second's header at 2048
        for member in tarstream.members(io.BytesIO(raw[:2100]), 4096):
            read.append(member[0])
    assert read == ["a/b/0001.png"]
    bad = bytearray(raw)
    bad[1536 + 3] ^= 0xFF  # inside the second member's header name
    with pytest.raises(tarfile.ReadError, match="bad checksum"):
        list(tarstream.members(io.BytesIO(bytes(bad)), 4096))
    assert list(tarstream.members(io.BytesIO(b""), 4096)) == []
