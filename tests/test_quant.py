"""Weight-only int8 inference: the Rust kernel against the NumPy dequantized
reference, the quantized model's quality on the shipped default model, and
bad input."""
from __future__ import annotations

import numpy as np
import pytest

from gptlite import _core
from gptlite.engine import checkpoint, quant
from gptlite.engine.model import GPT, GPTConfig
from gptlite.engine.quant import QuantizedWeight
from gptlite.generate import generate

ISAS = quant.kernel_isas()


def _rand_weight(rng, n_in, n_out):
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    w *= rng.uniform(0.01, 2.0, size=n_out).astype(np.float32)  # channels of very different range
    return w


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 7, 5), (3, 17, 33), (2, 100, 70), (1, 768, 97), (9, 33, 129), (64, 48, 31),
                                   # wide: tasks of more than 32 rows, a short last task, prefetch past its end
                                   (1, 40, 64 * 44 + 11), (5, 24, 64 * 36 + 3)])
def test_kernel_matches_numpy_dequantized_reference(isa, m, k, n):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    qw = QuantizedWeight.from_float(_rand_weight(rng, k, n), "in_out")
    x = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    want = x.astype(np.float64) @ qw.dequantize().astype(np.float64) + b
    got = qw.matmul(x, b, isa=isa)
    assert got.shape == (m, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    got_nb = qw.matmul(x, None, isa=isa)
    np.testing.assert_allclose(got_nb, want - b, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    got_nb += 1  # the result is an ordinary writable array (the model adds into it)


def test_many_rows_take_the_sgemm_path_with_the_same_result():
    rng = np.random.default_rng(3)
    qw = QuantizedWeight.from_float(_rand_weight(rng, 40, 24), "in_out")
    x = rng.standard_normal((200, 40)).astype(np.float32)
    want = x.astype(np.float64) @ qw.dequantize()
    np.testing.assert_allclose(qw.matmul(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(qw.matmul(x), qw.matmul(x, isa="portable"), rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_quantization_error_is_at_most_half_a_step_per_channel():
    rng = np.random.default_rng(0)
    w = _rand_weight(rng, 50, 30)
    w[:, 3] = 0.0  # an all-zero channel must not divide by zero
    qw = QuantizedWeight.from_float(w, "in_out")
    assert qw.shape == w.shape and qw.q.shape == (30, 50) and qw.q.dtype == np.int8
    assert np.abs(qw.q).max() == 127 and int(qw.q.min()) >= -127
    err = np.abs(qw.dequantize() - w)
    assert (err <= qw.scale[None, :] / 2 * (1 + 1e-5)).all()
    assert (qw.dequantize()[:, 3] == 0).all()
    e = QuantizedWeight.from_float(w.T.copy(), "out_in")
    np.testing.assert_array_equal(e[np.array([[1, 3], [0, 2]])], e.dequantize()[np.array([[1, 3], [0, 2]])])


def test_rust_kernel_rejects_bad_buffers():
    x = np.ones(4, np.float32).tobytes()
    q = bytes(8)
    s = np.ones(2, np.float32).tobytes()
    assert len(_core.qmatmul(x, 1, 4, q, 2, s)) == 8
    with pytest.raises(ValueError, match="x holds 3 floats"):
        _core.qmatmul(np.ones(3, np.float32).tobytes(), 1, 4, q, 2, s)
    with pytest.raises(ValueError, match="weights hold 7 int8"):
        _core.qmatmul(x, 1, 4, bytes(7), 2, s)
    with pytest.raises(ValueError, match="1 scales for 2"):
        _core.qmatmul(x, 1, 4, q, 2, s[:4])
    with pytest.raises(ValueError, match="bias has 3"):
        _core.qmatmul(x, 1, 4, q, 2, s, np.ones(3, np.float32).tobytes())
    with pytest.raises(ValueError, match="not a whole number of float32"):
        _core.qmatmul(x[:5], 1, 4, q, 2, s)
    with pytest.raises(ValueError, match="empty shape"):
        _core.qmatmul(b"", 0, 4, q, 2, s)
    with pytest.raises(ValueError, match='kernel "amx9" is not available'):
        _core.qmatmul(x, 1, 4, q, 2, s, None, "amx9")
    assert quant.kernel_isa() in ISAS


def test_quantized_weight_rejects_bad_input():
    rng = np.random.default_rng(1)
    qw = QuantizedWeight.from_float(_rand_weight(rng, 8, 4), "in_out", name="h.0.mlp.c_fc.weight")
    with pytest.raises(ValueError, match=r"h.0.mlp.c_fc.weight: input has shape \(2, 7\), expected \(rows, 8\)"):
        qw.matmul(np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match=r"bias has shape \(5,\)"):
        qw.matmul(np.ones((2, 8), np.float32), np.ones(5, np.float32))
    with pytest.raises(TypeError, match="row lookup"):
        qw[0]
    bad = np.ones((3, 3), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="w: holds NaN"):
        QuantizedWeight.from_float(bad, "in_out", name="w")
    with pytest.raises(ValueError, match="found -128"):
        QuantizedWeight(np.full((2, 2), -128, np.int8), np.ones(2, np.float32), "in_out")
    with pytest.raises(ValueError, match="one float scale per output channel"):
        QuantizedWeight(np.zeros((2, 2), np.int8), np.ones(3, np.float32), "in_out")
    with pytest.raises(ValueError, match="layout"):
        QuantizedWeight.from_float(np.ones((2, 2), np.float32), "rows")


def _tiny_model(seed=0):
    cfg = GPTConfig(vocab_size=61, n_positions=24, n_embd=16, n_layer=2, n_head=2)
    return GPT(cfg, seed=seed, device="cpu")


def test_quantized_model_runs_through_the_same_forward_and_decode():
    m = _tiny_model()
    ref = {k: v.copy() for k, v in m.params.items()}
    q = quant.quantize_model(_tiny_model())
    assert q.quantized == "int8" and isinstance(q.params["wte.weight"], QuantizedWeight)
    assert q.num_parameters() == m.num_parameters()
    # the quantized model equals a float model holding the dequantized weights
    deq = GPT(m.config, params={k: (v.dequantize() if isinstance(v, QuantizedWeight) else v)
                                for k, v in q.params.items()}, device="cpu")
    idx = np.random.default_rng(0).integers(0, 61, size=(3, 10))
    np.testing.assert_allclose(q.logits(idx), deq.logits(idx), rtol=1e-4, atol=1e-4)
    assert not np.allclose(q.logits(idx), GPT(m.config, params=ref, device="cpu").logits(idx), atol=1e-7)
    # left-padded batched decoding: each row as if decoded alone
    rows = [[5, 6, 7, 8], [9, 10]]
    out = generate(q, rows, 5, temperature=0)
    for r, o in zip(rows, out):
        assert generate(q, [r], 5, temperature=0)[0] == o
    with pytest.raises(ValueError, match="inference only"):
        q.loss_and_grads(idx, idx)
    with pytest.raises(ValueError, match="already quantized"):
        quant.quantize_model(q)
    with pytest.raises(ValueError, match="quantize must be one of int8"):
        quant.quantize_model(_tiny_model(), "int4")
    with pytest.raises(ValueError, match="float32"):
        quant.quantize_model(GPT(m.config, device="cpu", dtype="float64"))


def _heldout_ids(tok, corpora_dir):
    text = (corpora_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")
    return np.asarray(tok.encode(text[int(len(text) * 0.9):]), dtype=np.int64)


def _perplexity(model, ids, T):
    n = (len(ids) - 1) // T
    x = ids[: n * T].reshape(n, T)
    y = ids[1: n * T + 1].reshape(n, T)
    losses = [model.loss(x[i:i + 32], y[i:i + 32]) * len(x[i:i + 32]) for i in range(0, n, 32)]
    return float(np.exp(sum(losses) / n))


def test_default_model_int8_perplexity_within_one_percent(corpora_dir):
    f32 = checkpoint.from_pretrained("default")
    i8 = checkpoint.from_pretrained("default", quantize="int8")
    tok = checkpoint.load_tokenizer(checkpoint.resolve_model_dir("default"))
    ids = _heldout_ids(tok, corpora_dir)
    T = f32.config.n_positions
    p32, p8 = _perplexity(f32, ids, T), _perplexity(i8, ids, T)
    rel = abs(p8 - p32) / p32
    print(f"default model, tinyshakespeare last 10% ({len(ids)} tokens): ppl float32 {p32:.4f} int8 {p8:.4f} "
          f"({100 * rel:.3f}% relative)")
    assert rel <= 0.01
    # greedy continuations of held-out prompts: most positions agree
    prompts = [ids[i:i + 16].tolist() for i in range(0, 16 * 8, 16)]
    a = generate(f32, prompts, 48, temperature=0)
    b = generate(i8, prompts, 48, temperature=0)
    same = np.mean([x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb)])
    print(f"greedy tokens matching float32: {100 * same:.1f}%")
    assert same >= 0.5


def test_load_model_quantize_arguments(tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of int8"):
        checkpoint.from_pretrained("default", quantize="int4")
    with pytest.raises(ValueError, match="CPU only"):
        checkpoint.from_pretrained("default", quantize="int8", device="cuda")
    with pytest.raises(ValueError, match="float32"):
        checkpoint.from_pretrained("default", quantize="int8", dtype="float64")


def test_cli_generate_quantize(capsys):
    from gptlite import cli

    assert cli.main(["generate", "--quantize", "int8", "--temperature", "0", "--max-new-tokens", "8", "ROMEO:"]) == 0
    out_q = capsys.readouterr().out
    assert out_q.startswith("ROMEO:") and len(out_q) > len("ROMEO:")
    assert cli.main(["generate", "--quantize", "int8", "--dtype", "float64", "x"]) != 0
    assert "--quantize int8 runs on the CPU in float32" in capsys.readouterr().err
