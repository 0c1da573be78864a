"""gobig's tar header parser reads what tarfile reads (GNU, pax and ustar archives, long
names, directories and links skipped) and calls a damaged archive an error."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from data_pipeline.tar_stream import TarFormatError, iter_members, iter_samples


def _archive(fmt: int) -> bytes:
    long = "d/" + "y" * 90 + "/" + "x" * 60 + ".txt"  # over 100 characters: prefix or long name
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in [(long, b"hello"), ("0001.cls", b"3"), ("0001.pixels.npy", bytes(700)),
                           ("0002.CLS", b"4")]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "z" * 50
        tf.addfile(link)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_members_match_tarfile(fmt):
    raw = _archive(fmt)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        expected = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]
    assert list(iter_members(io.BytesIO(raw))) == expected
    samples = list(iter_samples(io.BytesIO(raw)))
    assert [s["__key__"] for s in samples] == [expected[0][0].rsplit(".", 1)[0], "0001", "0002"]
    assert samples[1]["cls"] == b"3" and len(samples[1]["pixels.npy"]) == 700
    assert samples[2] == {"__key__": "0002", "cls": b"4"}  # field names lower-cased


def test_damaged_archives_are_errors():
    raw = bytearray(_archive(tarfile.GNU_FORMAT))
    damaged = bytes(raw[:10]) + bytes([raw[10] ^ 0x41]) + bytes(raw[11:])
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_members(io.BytesIO(damaged)))
    first_member_ends = 512 + 512 + 512  # GNU long-name header + its data + the header
    with pytest.raises(TarFormatError, match="ends inside"):
        list(iter_members(io.BytesIO(bytes(raw[: first_member_ends + 100]))))
    with pytest.raises(TarFormatError, match="compressed"):
        list(iter_members(io.BytesIO(gzip.compress(bytes(raw)))))
