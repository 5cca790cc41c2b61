"""Checkpoints: our safetensors reader/writer against the `safetensors` package,
the HF directory layout both ways with transformers, and every bad-checkpoint case."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from gptlite.engine import checkpoint as ckpt
from gptlite.engine.checkpoint import read_safetensors, read_safetensors_metadata, write_safetensors

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


# --------------------------------------------------------------------------------
# HF directories: transformers <-> gptlite
# --------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gptlite.engine.model import GPT, GPTConfig  # noqa: E402

from hf_reference import hf_model  # noqa: E402

SMALL = dict(vocab_size=50257, n_positions=32, n_embd=32, n_layer=2, n_head=4)
IDS = np.array([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]], dtype=np.int64)


def _hf_logits(hf, idx):
    with torch.no_grad():
        return hf(torch.from_numpy(idx)).logits.numpy()


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory):
    """A small GPT-2 (real vocabulary) saved by transformers' save_pretrained, and its logits."""
    d = tmp_path_factory.mktemp("hf_gpt2")
    hf = hf_model(GPTConfig(**SMALL), seed=3)
    hf.save_pretrained(str(d))
    return d, _hf_logits(hf, IDS)


def test_load_transformers_save_pretrained(hf_gpt2_dir):
    d, ref = hf_gpt2_dir
    m = ckpt.load_model(d, device="cpu")
    assert m.config.n_layer == 2 and m.config.vocab_size == 50257
    np.testing.assert_allclose(m.logits(IDS), ref, atol=1e-4, rtol=0)
    assert ckpt.from_pretrained(str(d), device="cpu").config == m.config


def test_load_hub_style_unprefixed_with_buffers_and_tied_head(hf_gpt2_dir, tmp_path):
    """The hub's original gpt2 files: no 'transformer.' prefix, attn.bias/masked_bias
    buffers, and (in some) an lm_head.weight equal to wte."""
    d, ref = hf_gpt2_dir
    raw = read_safetensors(d / "model.safetensors")
    P = SMALL["n_positions"]
    hub = {k[len("transformer."):]: np.array(v) for k, v in raw.items()}
    for i in range(SMALL["n_layer"]):
        hub[f"h.{i}.attn.bias"] = np.tril(np.ones((P, P), np.float32))[None, None]
        hub[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    hub["lm_head.weight"] = hub["wte.weight"].copy()
    out = tmp_path / "hub"
    out.mkdir()
    write_safetensors(out / "model.safetensors", hub, metadata={"format": "pt"})
    (out / "config.json").write_text((d / "config.json").read_text())
    np.testing.assert_allclose(ckpt.load_model(out, device="cpu").logits(IDS), ref, atol=1e-4, rtol=0)


def test_save_loads_in_transformers(tmp_path):
    cfg = GPTConfig(**SMALL)
    m = GPT(cfg, seed=5, device="cpu")
    ckpt.save_model(m, tmp_path / "m")
    names = read_safetensors(tmp_path / "m" / "model.safetensors").keys()
    assert all(n.startswith("transformer.") for n in names)
    assert read_safetensors_metadata(tmp_path / "m" / "model.safetensors")["format"] == "pt"
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "m"), attn_implementation="eager").eval()
    np.testing.assert_allclose(_hf_logits(hf, IDS), m.logits(IDS), atol=1e-4, rtol=0)
    # and back: our own round trip is exact
    m2 = ckpt.load_model(tmp_path / "m", device="cpu")
    for k, v in m.params.items():
        np.testing.assert_array_equal(m2.params[k], v)


def test_gpt1_checkpoint_from_transformers(tmp_path):
    cfg = transformers.OpenAIGPTConfig(vocab_size=1000, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    hf = transformers.OpenAIGPTLMHeadModel(cfg).eval()
    hf.save_pretrained(str(tmp_path / "g1"))
    idx = IDS % 1000
    m = ckpt.load_model(tmp_path / "g1", device="cpu")
    assert m.config.layout == "gpt1"
    np.testing.assert_allclose(m.logits(idx), _hf_logits(hf, idx), atol=1e-4, rtol=0)
    # saved by us with GPT-1 names, loadable by transformers again
    ckpt.save_model(m, tmp_path / "g1b")
    assert "transformer.tokens_embed.weight" in read_safetensors(tmp_path / "g1b" / "model.safetensors")
    hf2 = transformers.OpenAIGPTLMHeadModel.from_pretrained(str(tmp_path / "g1b")).eval()
    np.testing.assert_allclose(_hf_logits(hf2, idx), m.logits(idx), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(tmp_path, dtype):
    m = GPT(GPTConfig(**SMALL), seed=1, device="cpu")
    ckpt.save_model(m, tmp_path / "h", dtype=dtype)
    size = (tmp_path / "h" / "model.safetensors").stat().st_size
    assert size < 0.55 * 4 * m.num_parameters()
    m2 = ckpt.load_model(tmp_path / "h", device="cpu")
    assert m2.params["wte.weight"].dtype == np.float32
    # weights ~N(0, 0.02): f16 keeps ~11 bits, bf16 ~8
    tol = 2e-5 if dtype == "float16" else 2e-4
    for k, v in m.params.items():
        np.testing.assert_allclose(m2.params[k], v, atol=tol, rtol=2 ** -7)
    # transformers reads our half-precision files too
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "h"), dtype=torch.float32,
                                                      attn_implementation="eager").eval()
    np.testing.assert_allclose(_hf_logits(hf, IDS), m2.logits(IDS), atol=1e-4, rtol=0)


def test_save_model_keeps_other_files_and_is_atomic(tmp_path, monkeypatch):
    m = GPT(GPTConfig(**SMALL), seed=1, device="cpu")
    d = tmp_path / "run"
    ckpt.save_model(m, d)
    (d / "notes.txt").write_text("keep me")
    before = (d / "model.safetensors").read_bytes()
    m.params["wte.weight"] += 1.0

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "atomic_write_text", boom)  # fails after the weights are written
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_model(m, d)
    assert (d / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary left behind
    monkeypatch.undo()
    ckpt.save_model(m, d)
    assert (d / "notes.txt").read_text() == "keep me"
    np.testing.assert_array_equal(ckpt.load_model(d, device="cpu").params["wte.weight"], m.params["wte.weight"])


# --- bad checkpoints --------------------------------------------------------------
def _edit(src, dst, tensors=None, config=None):
    """Copy model dir src to dst, editing its tensors (name -> array | None to drop) or config."""
    dst.mkdir()
    raw = {k: np.array(v) for k, v in read_safetensors(src / "model.safetensors").items()}
    for k, v in (tensors or {}).items():
        if v is None:
            raw.pop(k)
        else:
            raw[k] = v
    write_safetensors(dst / "model.safetensors", raw)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(config or {})
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("case, match", [
    ("missing", r"missing tensor 'h\.1\.mlp\.c_fc\.bias'"),
    ("wrong_shape", r"tensor 'h\.0\.attn\.c_proj\.weight' has shape \(32, 31\) but config\.json implies \(32, 32\)"),
    ("wrong_dtype", r"tensor 'ln_f\.weight' has dtype int32"),
    ("extra", r"unexpected tensor 'h\.2\.ln_1\.weight'"),
    ("config_n_layer", r"missing tensor 'h\.2\."),
    ("config_n_embd", r"tensor 'wte\.weight' has shape \(50257, 32\) but config\.json implies \(50257, 64\)"),
    ("config_n_head", r"n_embd=32 is not divisible by n_head=5"),
    ("config_untied", r"tie_word_embeddings"),
    ("untied_head", r"'lm_head\.weight' differs from the token embedding"),
    ("gpt1_names", r"GPT-1 names .* model_type 'gpt2'"),
    ("nan", r"tensor 'wpe\.weight' holds NaN"),
])
def test_bad_checkpoints(hf_gpt2_dir, tmp_path, case, match):
    d, _ = hf_gpt2_dir
    raw = read_safetensors(d / "model.safetensors")
    t = {}
    cfg = {}
    if case == "missing":
        t["transformer.h.1.mlp.c_fc.bias"] = None
    elif case == "wrong_shape":
        t["transformer.h.0.attn.c_proj.weight"] = np.zeros((32, 31), np.float32)
    elif case == "wrong_dtype":
        t["transformer.ln_f.weight"] = np.ones(32, np.int32)
    elif case == "extra":
        t["transformer.h.2.ln_1.weight"] = np.ones(32, np.float32)
    elif case == "config_n_layer":
        cfg["n_layer"] = 3
    elif case == "config_n_embd":
        cfg["n_embd"] = 64
    elif case == "config_n_head":
        cfg["n_head"] = 5
    elif case == "config_untied":
        cfg["tie_word_embeddings"] = False
    elif case == "untied_head":
        t["lm_head.weight"] = np.array(raw["transformer.wte.weight"]) + 1
    elif case == "gpt1_names":
        t["transformer.tokens_embed.weight"] = np.array(raw["transformer.wte.weight"])
        t["transformer.positions_embed.weight"] = np.array(raw["transformer.wpe.weight"])
        t["transformer.wte.weight"] = t["transformer.wpe.weight"] = None
    elif case == "nan":
        w = np.array(raw["transformer.wpe.weight"])
        w[3, 4] = np.nan
        t["transformer.wpe.weight"] = w
    bad = _edit(d, tmp_path / "bad", t, cfg)
    with pytest.raises(ValueError, match=match) as info:
        ckpt.load_model(bad, device="cpu")
    assert str(bad) in str(info.value)


def test_truncated_checkpoint(hf_gpt2_dir, tmp_path):
    d, _ = hf_gpt2_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((d / "config.json").read_text())
    data = (d / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor '.*': data_offsets .* out of range"):
        ckpt.load_model(bad, device="cpu")
    (bad / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or truncated"):
        ckpt.load_model(bad, device="cpu")


def test_pickle_bin_is_refused(hf_gpt2_dir, tmp_path):
    d, _ = hf_gpt2_dir
    bad = tmp_path / "bin"
    bad.mkdir()
    (bad / "config.json").write_text((d / "config.json").read_text())
    # a pickle that would run code if loaded: it must never be opened
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*refuses.*pickle"):
        ckpt.load_model(bad, device="cpu")


def test_missing_config_and_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        ckpt.load_model(tmp_path / "nope")
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ckpt.load_model(tmp_path / "e")
    (tmp_path / "e" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        ckpt.load_model(tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="not one of gpt2"):
        ckpt.from_pretrained("no-such-model-xyz")


# --- from_pretrained: hub names through huggingface_hub (no hub here) ---------------------
def test_hub_offline_with_the_real_library(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty hub cache: a clear error, nothing fetched."""
    pytest.importorskip("huggingface_hub")
    import importlib

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)  # it reads the environment at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    try:
        with pytest.raises(OSError, match="could not get gpt2 from the Hugging Face hub .*HF_HUB_OFFLINE is set"):
            ckpt.from_pretrained("gpt2")
    finally:
        monkeypatch.undo()
        importlib.reload(huggingface_hub.constants)


def test_hub_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'gptlite\[hub\]'"):
        ckpt.from_pretrained("gpt2")


def test_from_pretrained_through_the_hub_client(monkeypatch, tmp_path, hf_gpt2_dir):
    """hf_hub_download is asked for the config, the weights and the tokenizer
    files of the repo; the snapshot directory it fills is loaded."""
    import shutil
    import types

    d, ref = hf_gpt2_dir
    snap = tmp_path / "snapshots" / "abc"
    calls = []

    def hf_hub_download(repo_id, filename):
        calls.append((repo_id, filename))
        if not (d / filename).exists():
            raise FileNotFoundError(f"{filename} not in {repo_id}")  # as EntryNotFoundError
        snap.mkdir(parents=True, exist_ok=True)
        shutil.copy(d / filename, snap / filename)
        return str(snap / filename)

    fake = types.SimpleNamespace(hf_hub_download=hf_hub_download,
                                 utils=types.SimpleNamespace(disable_progress_bars=lambda: None))
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    m = ckpt.from_pretrained("gpt2-medium", device="cpu")  # served by the fake: the small model
    np.testing.assert_allclose(m.logits(IDS), ref, atol=1e-4, rtol=0)
    assert calls[:2] == [("gpt2-medium", "config.json"), ("gpt2-medium", "model.safetensors")]
    assert {f for _, f in calls} >= {"vocab.json", "merges.txt"}

    def offline(repo_id, filename):
        raise OSError("connection refused")

    fake.hf_hub_download = offline
    with pytest.raises(OSError, match="could not get gpt2 from the Hugging Face hub .*offline"):
        ckpt.from_pretrained("gpt2")


@pytest.mark.slow
def test_gpt2_124m_shape_round_trip(tmp_path):
    """The full 124M shape from transformers' save_pretrained: same logits."""
    cfg = GPTConfig.preset("gpt2")
    hf = hf_model(cfg, seed=0)
    hf.save_pretrained(str(tmp_path / "g"))
    idx = np.arange(64, dtype=np.int64)[None] * 37
    ref = _hf_logits(hf, idx)
    del hf
    m = ckpt.load_model(tmp_path / "g", device="cpu")
    assert m.num_parameters() == 124439808
    np.testing.assert_allclose(m.logits(idx), ref, atol=1e-4, rtol=0)
