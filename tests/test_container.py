"""format.container (and the manifest checks on top of it): headers built and validated."""

from __future__ import annotations

import json
import struct

import pytest

import modelsafe as ms
from modelsafe.format import checksum, container, manifest
from modelsafe.format.container import (
    HEADER_CHECKSUM_KEY,
    MANIFEST_KEY,
    MAX_HEADER_BYTES,
    build_header,
    parse_header,
    read_length,
    verify_header_checksum,
)


def parse(blob: bytes, data_len: int):
    (n,) = struct.unpack("<Q", blob[:8])
    return parse_header(blob[8 : 8 + n], 8 + n + data_len, "f.safetensors")


def test_build_header_pads_to_8_bytes_and_parses_back():
    for name_len in range(1, 17):
        name = "x" * name_len
        blob = build_header([(name, "F32", [2], 0, 8)], {"k": "v"})
        assert len(blob) % 8 == 0
        header = parse(blob, 8)
        assert list(header.entries) == [name] and header.metadata == {"k": "v"}
        entry = header.entries[name]
        assert (entry.storage.name, entry.shape, entry.begin, entry.end) == ("float32", (2,), 0, 8)
        assert header.data_start == len(blob) and header.data_len == 8


def test_header_is_plain_safetensors_json():
    blob = build_header([("a", "I64", [1, 2], 0, 16)], {})
    (n,) = struct.unpack("<Q", blob[:8])
    assert json.loads(blob[8 : 8 + n]) == {"a": {"dtype": "I64", "shape": [1, 2], "data_offsets": [0, 16]}}


def test_seal_covers_every_header_byte():
    blob = build_header([("a", "F32", [1], 0, 4)], {MANIFEST_KEY: "{}", HEADER_CHECKSUM_KEY: checksum.PLACEHOLDER})
    verify_header_checksum(blob, "f")
    assert checksum.PLACEHOLDER.encode() not in blob
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x01
        with pytest.raises(ms.CorruptCheckpointError):
            verify_header_checksum(bytes(damaged), "f")


def test_read_length_bounds():
    assert read_length(struct.pack("<Q", 10), 18, "f") == 10
    for prefix, size in [(struct.pack("<Q", 11), 18), (struct.pack("<Q", MAX_HEADER_BYTES + 1), 2**40),
                         (struct.pack("<Q", 1), 9), (b"\x01\x00", 2), (struct.pack("<Q", 2**64 - 1), 100)]:
        with pytest.raises(ms.CorruptCheckpointError) as info:
            read_length(prefix, size, "f.safetensors")
        assert info.value.path == "f.safetensors"


def test_layout_errors_name_the_tensor():
    cases = {
        "overlap": ([("a", "F32", [2], 0, 8), ("b", "F32", [2], 4, 12)], 12, "b"),
        "gap": ([("a", "F32", [2], 4, 12)], 12, "a"),
        "outside": ([("a", "F32", [2], 0, 8)], 4, "a"),
        "mismatch": ([("a", "F64", [2], 0, 8)], 8, "a"),
    }
    for what, (entries, data_len, key) in cases.items():
        with pytest.raises(ms.CorruptCheckpointError) as info:
            parse(build_header(entries, {}), data_len)
        assert info.value.key == key, what
        assert f"tensor {key!r}" in str(info.value)


def test_empty_tensors_may_share_an_offset():
    blob = build_header([("a", "F32", [0], 0, 0), ("b", "F32", [0, 3], 0, 0), ("c", "U8", [2], 0, 2)], {})
    assert set(parse(blob, 2).entries) == {"a", "b", "c"}


def test_seal_without_manifest_is_refused():
    blob = build_header([], {HEADER_CHECKSUM_KEY: checksum.PLACEHOLDER, "modelsafX": "{}"})
    with pytest.raises(ms.CorruptCheckpointError, match="manifest"):
        parse(blob, 0)


def test_foreign_storage_codes():
    for code, logical in [("F8_E4M3FNUZ", "float8_e4m3fnuz"), ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
                          ("F8_E8M0", "float8_e8m0fnu"), ("BF16", "bfloat16"), ("C64", "complex64")]:
        size = container.STORAGE_CODES[code].itemsize
        header = parse(build_header([("t", code, [3], 0, 3 * size)], {}), 3 * size)
        assert header.entries["t"].storage.name == logical


# -- manifest --------------------------------------------------------------------------

def test_check_version():
    manifest.check_version({"format_version": [1, 0]}, "f")
    manifest.check_version({"format_version": [1, 99]}, "f")
    with pytest.raises(ms.NewerFormatError, match="modelsafe 7.0"):
        manifest.check_version({"format_version": [2, 0], "writer": "modelsafe 7.0"}, "f")
    for bad in ({"format_version": [True, 0]}, {"format_version": [1]}, {"format_version": [0, 1]}, [], {}):
        with pytest.raises(ms.CorruptCheckpointError) as info:
            manifest.check_version(bad, "f")
        assert not isinstance(info.value, ms.NewerFormatError)


def test_every_saved_tensor_has_a_checksum_of_its_bytes(tmp_path):
    import numpy as np

    from craft import manifest_of, read_parts

    path = tmp_path / "x.safetensors"
    ms.save({"a": np.arange(5), "b": b"bytes", "c": np.zeros((2, 2), np.float16)}, path)
    header, data = read_parts(path)
    tensors = manifest_of(path)["tensors"]
    assert set(tensors) == {"a", "b", "c"}
    for name, entry in tensors.items():
        begin, end = header[name]["data_offsets"]
        assert entry["xxh3"] == checksum.digest(data[begin:end])


def test_tensors_are_laid_out_aligned(tmp_path):
    import numpy as np

    from craft import read_parts

    path = tmp_path / "al.safetensors"
    ms.save({"u8": np.ones(3, np.uint8), "f64": np.ones(3), "i16": np.ones(3, np.int16), "c128": np.ones(1, np.complex128)},
            path)
    header, data = read_parts(path)
    data_start = path.stat().st_size - len(data)
    assert data_start % 8 == 0
    sizes = {"u8": 1, "f64": 8, "i16": 2, "c128": 16}
    for name, size in sizes.items():
        assert header[name]["data_offsets"][0] % min(size, 8) == 0, name
