"""Checkpoints: our safetensors reader/writer against the `safetensors` package,
the HF directory layout both ways with transformers, and every bad-checkpoint case."""
from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest

from gptlite import checkpoint as ckpt
from gptlite.checkpoint import read_safetensors, read_safetensors_metadata, write_safetensors

# --------------------------------------------------------------------------------
# safetensors format
# --------------------------------------------------------------------------------
ALL_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
              np.uint8, np.uint16, np.uint32, np.uint64, np.bool_]


def _sample_tensors(rng):
    out = {}
    for i, dt in enumerate(ALL_DTYPES):
        shape = [(3, 5), (7,), (2, 3, 4), (), (0, 4)][i % 5]
        if np.dtype(dt).kind == "f":
            a = rng.standard_normal(shape).astype(dt)
        elif dt is np.bool_:
            a = rng.random(shape) > 0.5
        else:
            a = rng.integers(0, 100, size=shape).astype(dt)
        out[f"t{i}.{np.dtype(dt).name}"] = a
    return out


def test_round_trip_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = _sample_tensors(rng)
    write_safetensors(tmp_path / "a.safetensors", tensors, metadata={"k": "v"})
    back = read_safetensors(tmp_path / "a.safetensors")
    assert back.keys() == tensors.keys()
    for k, a in tensors.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape, k
        np.testing.assert_array_equal(back[k], a)
    assert read_safetensors_metadata(tmp_path / "a.safetensors") == {"k": "v"}
    # header padded to 8 bytes: every tensor aligned in the map
    raw = (tmp_path / "a.safetensors").read_bytes()
    assert int.from_bytes(raw[:8], "little") % 8 == 0


def test_float16_and_bfloat16_storage(tmp_path):
    x = np.array([1.0, -2.5, 3.140625, 1e-3, 65504.0, 1.00390625, float("inf")], dtype=np.float32)
    write_safetensors(tmp_path / "h.safetensors", {"x": x}, dtype="float16")
    h = read_safetensors(tmp_path / "h.safetensors")["x"]
    assert h.dtype == np.float16
    np.testing.assert_array_equal(h, x.astype(np.float16))
    write_safetensors(tmp_path / "b.safetensors", {"x": x}, dtype="bfloat16")
    b = read_safetensors(tmp_path / "b.safetensors")["x"]
    assert b.dtype == np.float32  # bf16 widened on read
    np.testing.assert_allclose(b[:4], x[:4], rtol=2 ** -8)
    assert b[5] == 1.0  # 1 + 2^-8 rounds to even (1.0) in bf16
    assert np.isinf(b[6])


def test_interop_with_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as torch_save

    rng = np.random.default_rng(1)
    tensors = {k: v for k, v in _sample_tensors(rng).items()}
    # theirs -> ours
    st.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "np"})
    back = read_safetensors(tmp_path / "theirs.safetensors")
    for k, a in tensors.items():
        np.testing.assert_array_equal(back[k], a)
        assert back[k].dtype == a.dtype
    assert read_safetensors_metadata(tmp_path / "theirs.safetensors") == {"format": "np"}
    # ours -> theirs
    write_safetensors(tmp_path / "ours.safetensors", tensors, metadata={"a": "b"})
    loaded = st.load_file(str(tmp_path / "ours.safetensors"))
    for k, a in tensors.items():
        np.testing.assert_array_equal(loaded[k], a)
    # bf16 both ways, through torch (NumPy has no bfloat16)
    t = torch.randn(4, 6)
    torch_save({"w": t.to(torch.bfloat16)}, str(tmp_path / "bf.safetensors"))
    np.testing.assert_array_equal(read_safetensors(tmp_path / "bf.safetensors")["w"], t.to(torch.bfloat16).float().numpy())
    from safetensors.torch import load_file as torch_load

    write_safetensors(tmp_path / "bf2.safetensors", {"w": t.numpy()}, dtype="bfloat16")
    got = torch_load(str(tmp_path / "bf2.safetensors"))["w"]
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, t.to(torch.bfloat16))  # same round-to-nearest-even as torch


def test_reads_are_memory_mapped(tmp_path):
    write_safetensors(tmp_path / "m.safetensors", {"w": np.ones((64, 64), np.float32)})
    w = read_safetensors(tmp_path / "m.safetensors")["w"]
    assert not w.flags.owndata and not w.flags.writeable


def _header_file(path, header: dict, data: bytes = b"", raw_header: bytes | None = None):
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + data)
    return path


@pytest.mark.parametrize("case, match", [
    ("empty", "too short"),
    ("truncated_len", "too short"),
    ("huge_header", "exceeds"),
    ("header_past_eof", "truncated"),
    ("not_json", "not valid UTF-8 JSON"),
    ("not_object", "expected a JSON object"),
    ("unknown_dtype", "'w'.*unknown dtype 'Q7'"),
    ("fp8", "'w'.*F8_E4M3 is not supported"),
    ("offsets_out_of_range", "'w'.*out of range"),
    ("size_mismatch", "'w'.*needs 16 bytes"),
    ("overlap", "overlap"),
    ("hole", "hole"),
    ("trailing", "trailing"),
    ("bad_shape", "'w'.*corrupt shape"),
    ("missing_key", "'w'.*corrupt header entry"),
])
def test_corrupt_safetensors(tmp_path, case, match):
    p = tmp_path / "bad.safetensors"
    f32 = lambda shape, a, b: {"dtype": "F32", "shape": shape, "data_offsets": [a, b]}  # noqa: E731
    if case == "empty":
        p.write_bytes(b"")
    elif case == "truncated_len":
        p.write_bytes(b"\x10\x00\x00")
    elif case == "huge_header":
        p.write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")
    elif case == "header_past_eof":
        p.write_bytes((100).to_bytes(8, "little") + b'{"w":')
    elif case == "not_json":
        _header_file(p, {}, raw_header=b'{"w": [1, 2')
    elif case == "not_object":
        _header_file(p, [1, 2])
    elif case == "unknown_dtype":
        _header_file(p, {"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    elif case == "fp8":
        _header_file(p, {"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, b"\0")
    elif case == "offsets_out_of_range":
        _header_file(p, {"w": f32([4], 0, 16)}, b"\0" * 8)
    elif case == "size_mismatch":
        _header_file(p, {"w": f32([4], 0, 12)}, b"\0" * 12)
    elif case == "overlap":
        _header_file(p, {"v": f32([2], 0, 8), "w": f32([2], 4, 12)}, b"\0" * 12)
    elif case == "hole":
        _header_file(p, {"v": f32([1], 0, 4), "w": f32([1], 8, 12)}, b"\0" * 12)
    elif case == "trailing":
        _header_file(p, {"w": f32([1], 0, 4)}, b"\0" * 12)
    elif case == "bad_shape":
        _header_file(p, {"w": f32([-1], 0, 4)}, b"\0" * 4)
    elif case == "missing_key":
        _header_file(p, {"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4)
    with pytest.raises(ValueError, match=match) as info:
        read_safetensors(p)
    assert str(p) in str(info.value)


def test_truncated_real_file(tmp_path):
    p = tmp_path / "t.safetensors"
    write_safetensors(p, {"a": np.zeros(10, np.float32), "b": np.ones(10, np.float32)})
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"t\.safetensors.*tensor '[ab]'.*out of range"):
        read_safetensors(p)


def test_write_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "x.safetensors"
    write_safetensors(p, {"a": np.arange(4, dtype=np.float32)})
    before = p.read_bytes()
    with pytest.raises(ValueError, match="'b'.*cannot be stored"):
        write_safetensors(p, {"a": np.zeros(3), "b": np.array([object()])})

    def fail(fd):
        raise OSError("disk full")

    import gptlite.fileio

    monkeypatch.setattr(gptlite.fileio.os, "fsync", fail)  # fails after the data is written
    with pytest.raises(OSError, match="disk full"):
        write_safetensors(p, {"a": np.zeros(1000, np.float32)})
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["x.safetensors"]
