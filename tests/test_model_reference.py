"""gptlite's GPT against HF transformers with the very same weights.

Logits, loss and every parameter's gradient: float64 to <= 1e-9 relative,
float32 logits <= 1e-4 absolute and gradients <= 1e-3 relative (norm-wise),
on small GPT-2-shaped configs with GPT-2's real vocabulary, the GPT-1 layout,
and once on the full 124M shape. Plus KV-cache decoding, config mapping and
input validation.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_reference import hf_loss_and_grads, hf_model, load_into_hf, params_from_hf, rel_err  # noqa: E402

from gptlite.engine.model import GPT, GPTConfig, init_params, param_shapes  # noqa: E402

SMALL = dict(n_layer=2, n_embd=64, n_head=4, n_positions=32)
CONFIGS = {
    "gpt2": GPTConfig(**SMALL),
    "gpt2-erf": GPTConfig(**SMALL, activation_function="gelu"),
    "gpt1": GPTConfig(**SMALL, vocab_size=40478, layout="gpt1"),
}


def batch(cfg, B=3, T=17, seed=0, ignore=True):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, (B, T))
    targets = rng.integers(0, cfg.vocab_size, (B, T))
    if ignore:
        targets[0, :5] = -1
        targets[-1, -1] = -1
    return idx, targets


def pair(cfg, dtype, seed=1):
    hf = hf_model(cfg, seed=seed, dtype=dtype)
    return GPT(cfg, params=params_from_hf(hf, cfg, dtype), device="cpu", dtype=dtype), hf


@pytest.mark.parametrize("name", list(CONFIGS))
def test_float64_matches_hf(name):
    cfg = CONFIGS[name]
    model, hf = pair(cfg, "float64")
    idx, targets = batch(cfg)
    hl, hloss, hgrads = hf_loss_and_grads(hf, idx, targets, cfg)
    logits, cache = model.forward(idx)
    assert logits.dtype == np.float64 and logits.shape == (3, 17, cfg.vocab_size)
    assert rel_err(logits, hl) <= 1e-9
    loss, grads = model.loss_and_grads(idx, targets)
    assert abs(loss - hloss) <= 1e-9 * abs(hloss)
    assert set(grads) == set(model.params)
    for k, g in grads.items():
        assert g.shape == model.params[k].shape and g.dtype == np.float64
        assert rel_err(g, hgrads[k]) <= 1e-9, k


@pytest.mark.parametrize("name", ["gpt2", "gpt1"])
def test_float32_matches_hf(name):
    cfg = CONFIGS[name]
    model, hf = pair(cfg, "float32")
    idx, targets = batch(cfg)
    hl, hloss, hgrads = hf_loss_and_grads(hf, idx, targets, cfg)
    assert np.abs(model.logits(idx) - hl).max() <= 1e-4
    loss, grads = model.loss_and_grads(idx, targets)
    assert abs(loss - hloss) <= 1e-5 * abs(hloss)
    for k, g in grads.items():
        assert g.dtype == np.float32, k  # no silent float64 promotion
        assert rel_err(g, hgrads[k]) <= 1e-3, k


@pytest.mark.parametrize("name", ["gpt2", "gpt1"])
def test_backward_from_dlogits_and_dhidden(name):
    """backward(cache, dlogits, dhidden) against torch autograd through the HF
    trunk's last hidden state and the tied head."""
    torch = pytest.importorskip("torch")
    cfg = CONFIGS[name]
    model, hf = pair(cfg, "float64")
    idx, _ = batch(cfg, B=2, T=9)
    rng = np.random.default_rng(5)
    Rl = rng.standard_normal((2, 9, cfg.vocab_size))
    Rh = rng.standard_normal((2, 9, cfg.n_embd))
    logits, cache = model.forward(idx)
    grads = model.backward(cache, dlogits=Rl, dhidden=Rh)
    hf.zero_grad(set_to_none=True)
    out = hf(torch.from_numpy(idx), output_hidden_states=True)
    L = (out.logits * torch.from_numpy(Rl)).sum() + (out.hidden_states[-1] * torch.from_numpy(Rh)).sum()
    L.backward()
    np.testing.assert_allclose(cache.hidden, out.hidden_states[-1].detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.hidden_states(idx), cache.hidden, rtol=0, atol=0)
    sd = dict(hf.named_parameters())
    from hf_reference import hf_name

    for k, g in grads.items():
        assert rel_err(g, sd[hf_name(k, cfg)].grad.numpy()) <= 1e-9, k
    # dhidden alone: the head gets nothing, wte only its embedding share
    g2 = model.backward(cache, dhidden=Rh)
    assert set(g2) == set(model.params)
    with pytest.raises(ValueError, match="dlogits and/or dhidden"):
        model.backward(cache)


def test_forward_backward_equals_loss_and_grads():
    from gptlite.engine import ops

    cfg = CONFIGS["gpt2"]
    model = GPT(cfg, dtype="float64", seed=3)
    idx, targets = batch(cfg)
    logits, cache = model.forward(idx)
    loss, ce = ops.cross_entropy_forward(logits, targets)
    grads = model.backward(cache, dlogits=ops.cross_entropy_backward(ce))
    loss2, grads2 = model.loss_and_grads(idx, targets)
    assert abs(loss - loss2) < 1e-12
    for k in grads:
        np.testing.assert_allclose(grads[k], grads2[k], rtol=1e-10, atol=1e-14)
    assert abs(model.loss(idx, targets) - loss) < 1e-12


def test_hf_weights_round_trip():
    cfg = CONFIGS["gpt1"]
    model = GPT(cfg, seed=7)
    hf = hf_model(cfg, seed=0)
    load_into_hf(hf, model.params, cfg)
    back = params_from_hf(hf, cfg)
    for k, v in model.params.items():
        np.testing.assert_array_equal(back[k], v)
    assert model.num_parameters() == sum(p.numel() for p in hf.parameters())


# --------------------------------------------------------------------------
# KV cache


@pytest.mark.parametrize("name", ["gpt2", "gpt1"])
def test_kv_decode_equals_full_forward(name):
    cfg = CONFIGS[name]
    model = GPT(cfg, dtype="float64", seed=2)
    idx, _ = batch(cfg, B=2, T=24)
    full = model.logits(idx)
    for prefill in (5, 20):  # short and long prompts take different attention paths
        kv, kv_last = model.kv_cache(2, 28), model.kv_cache(2, 28)
        got = [model.decode(idx[:, :prefill], kv)]
        last = [model.decode(idx[:, :prefill], kv_last, last_only=True)]
        for t in range(prefill, 24):  # then one token at a time
            got.append(model.decode(idx[:, t:t + 1], kv))
            last.append(model.decode(idx[:, t:t + 1], kv_last, last_only=True))
        assert kv.length == kv_last.length == 24
        np.testing.assert_allclose(np.concatenate(got, axis=1), full, rtol=1e-10, atol=1e-10)
        # last_only: the logits of each call's last position, (B,1,V) per call
        assert last[0].shape == (2, 1, cfg.vocab_size)
        np.testing.assert_allclose(np.concatenate(last, axis=1), full[:, prefill - 1:], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["gpt2", "gpt1"])
def test_kv_decode_left_padded_batch(name):
    """Rows of different lengths, left-padded with junk: every real position's
    logits equal those of the row run alone."""
    cfg = CONFIGS[name]
    model = GPT(cfg, dtype="float64", seed=4)
    rng = np.random.default_rng(9)
    lengths = [4, 9, 6]
    rows = [rng.integers(0, cfg.vocab_size, n + 5) for n in lengths]  # prompt + 5 continuation tokens
    P = max(lengths)
    pad = np.array([P - n for n in lengths])
    prompt = np.stack([np.r_[rng.integers(0, cfg.vocab_size, p), r[:n]] for p, r, n in zip(pad, rows, lengths)])
    kv = model.kv_cache(3, P + 5)
    out = [model.decode(prompt, kv, pad=pad)]
    for s in range(5):
        out.append(model.decode(np.array([[r[n + s]] for r, n in zip(rows, lengths)]), kv))
    got = np.concatenate(out, axis=1)  # (3, P+5, V)
    for b, (r, n) in enumerate(zip(rows, lengths)):
        ref = model.logits(r[None, :])[0]
        np.testing.assert_allclose(got[b, pad[b]:], ref, rtol=1e-10, atol=1e-10)
        assert np.isfinite(got[b]).all()


def test_kv_cache_errors():
    cfg = CONFIGS["gpt2"]
    model = GPT(cfg, seed=0)
    kv = model.kv_cache(1, 4)
    model.decode(np.array([[1, 2, 3]]), kv)
    with pytest.raises(ValueError, match="free columns"):
        model.decode(np.array([[1, 2]]), kv)
    model.decode(np.array([[1]]), kv)
    with pytest.raises(ValueError, match="full"):
        model.decode(np.array([[1]]), kv)
    with pytest.raises(ValueError, match="batch"):
        model.decode(np.array([[1], [2]]), model.kv_cache(1, 4))
    kv = model.kv_cache(2, 8)
    model.decode(np.array([[0, 1], [2, 3]]), kv, pad=np.array([1, 0]))
    with pytest.raises(ValueError, match="pad differs"):
        model.decode(np.array([[1], [2]]), kv, pad=np.array([0, 0]))
    with pytest.raises(ValueError, match="pad must be"):
        model.decode(np.array([[1], [2]]), model.kv_cache(2, 8), pad=np.array([0.5, 0]))


# --------------------------------------------------------------------------
# config, init, sizes


@pytest.mark.parametrize("name", list(GPTConfig.PRESETS))
def test_presets_round_trip_through_hf_config(name):
    import transformers

    cfg = GPTConfig.preset(name)
    d = cfg.to_hf_dict()
    assert GPTConfig.from_hf_dict(d) == cfg
    cls = transformers.OpenAIGPTConfig if d["model_type"] == "openai-gpt" else transformers.GPT2Config
    hcfg = cls(**{k: v for k, v in d.items() if k != "model_type"})
    assert GPTConfig.from_hf_dict(hcfg.to_dict()) == cfg


def test_config_errors_and_presets():
    assert GPTConfig.preset("openai-gpt").layout == "gpt1"
    assert GPTConfig.preset("openai-gpt").n_positions == 512
    assert GPTConfig.preset("gpt2-xl").n_embd == 1600
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="layout"):
        GPTConfig(layout="gpt3")
    with pytest.raises(ValueError, match="activation"):
        GPTConfig(activation_function="relu")
    with pytest.raises(ValueError, match="preset"):
        GPTConfig.preset("gpt5")
    with pytest.raises(ValueError, match="model_type"):
        GPTConfig.from_hf_dict({"model_type": "llama", "n_positions": 8})
    with pytest.raises(ValueError, match="activation"):
        GPTConfig.from_hf_dict({"model_type": "gpt2", "n_ctx": 8, "activation_function": "relu"})


def test_param_counts_of_presets():
    # the published sizes (tied head counted once), from shapes alone
    count = lambda n: sum(int(np.prod(s)) for s in param_shapes(GPTConfig.preset(n)).values())
    assert count("gpt2") == 124_439_808
    assert count("gpt2-medium") == 354_823_168
    assert count("gpt2-large") == 774_030_080
    assert count("gpt2-xl") == 1_557_611_200
    assert count("openai-gpt") == 116_534_784


def test_init_statistics_and_determinism():
    cfg = GPTConfig(n_layer=4, n_embd=128, n_head=4, n_positions=64, vocab_size=1000)
    p = init_params(cfg, seed=11)
    assert all(np.array_equal(p[k], v) for k, v in init_params(cfg, seed=11).items())
    assert not np.array_equal(p["wte.weight"], init_params(cfg, seed=12)["wte.weight"])
    assert abs(p["wte.weight"].std() - 0.02) < 1e-3
    assert abs(p["h.1.mlp.c_fc.weight"].std() - 0.02) < 1e-3
    assert abs(p["h.1.attn.c_proj.weight"].std() - 0.02 / np.sqrt(8)) < 5e-4
    assert (p["h.0.ln_1.weight"] == 1).all() and (p["h.0.attn.c_attn.bias"] == 0).all()
    assert all(v.dtype == np.float32 for v in p.values())


def test_flops_per_token():
    cfg = CONFIGS["gpt2"]
    model = GPT(cfg, seed=0)
    n = model.num_parameters() - cfg.n_positions * cfg.n_embd
    assert model.flops_per_token(32) == 6 * n + 12 * cfg.n_layer * cfg.n_embd * 32


# --------------------------------------------------------------------------
# bad input


def test_input_validation():
    cfg = CONFIGS["gpt2"]
    model = GPT(cfg, seed=0)
    with pytest.raises(ValueError, match=r"token id 50257 at position \(batch 1, time 2\)"):
        model.forward(np.array([[0, 1, 2], [3, 4, 50257]]))
    with pytest.raises(ValueError, match="token id -1"):
        model.logits(np.array([[-1]]))
    with pytest.raises(ValueError, match="n_positions=32"):
        model.forward(np.zeros((1, 33), np.int64))
    with pytest.raises(TypeError, match="integer"):
        model.forward(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        model.forward(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="empty"):
        model.forward(np.zeros((1, 0), np.int64))
    with pytest.raises(ValueError, match="targets shape"):
        model.loss_and_grads(np.zeros((1, 3), np.int64), np.zeros((1, 2), np.int64))
    with pytest.raises(ValueError, match="target id 60000"):
        model.loss_and_grads(np.zeros((1, 2), np.int64), np.array([[0, 60000]]))
    with pytest.raises(ValueError, match="dtype"):
        GPT(cfg, dtype="float16")
    params = init_params(cfg)
    params["h.1.mlp.c_fc.weight"] = params["h.1.mlp.c_fc.weight"][:, :10]
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.weight has shape \(64, 10\)"):
        GPT(cfg, params=params)
    del params["ln_f.bias"]
    with pytest.raises(ValueError, match="missing.*ln_f.bias"):
        GPT(cfg, params=params)


# --------------------------------------------------------------------------
# full 124M shape


@pytest.mark.slow
def test_full_124m_float32_matches_hf():
    cfg = GPTConfig.preset("gpt2")
    model, hf = pair(cfg, "float32", seed=0)
    idx, targets = batch(cfg, B=1, T=16)
    hl, hloss, hgrads = hf_loss_and_grads(hf, idx, targets, cfg)
    assert np.abs(model.logits(idx) - hl).max() <= 1e-4
    loss, grads = model.loss_and_grads(idx, targets)
    assert abs(loss - hloss) <= 1e-5 * abs(hloss)
    for k, g in grads.items():
        assert rel_err(g, hgrads[k]) <= 1e-3, k


# --------------------------------------------------------------------------
# CuPy: the same model on a GPU against the NumPy reference


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["gpt2", "gpt1"])
def test_cupy_model_matches_numpy(name):
    cp = pytest.importorskip("cupy")
    from gptlite.engine import backend

    if not backend.cuda_available():
        pytest.skip("no CUDA device")
    cfg = CONFIGS[name]
    cpu = GPT(cfg, dtype="float64", seed=1, device="cpu")
    gpu = GPT(cfg, params=cpu.params, dtype="float64", device="cuda")
    idx, targets = batch(cfg)
    loss, grads = cpu.loss_and_grads(idx, targets)
    gloss, ggrads = gpu.loss_and_grads(idx, targets)
    assert abs(loss - gloss) <= 1e-9 * abs(loss)
    for k in grads:
        assert rel_err(cp.asnumpy(ggrads[k]), grads[k]) <= 1e-9, k
    kv = gpu.kv_cache(3, 17)
    dec = [gpu.decode(cp.asarray(idx[:, :10]), kv)] + [gpu.decode(cp.asarray(idx[:, t:t + 1]), kv) for t in range(10, 17)]
    np.testing.assert_allclose(cp.asnumpy(cp.concatenate(dec, axis=1)), cpu.logits(idx), rtol=1e-9, atol=1e-9)
    # float32 on the GPU against HF
    gpu32 = GPT(cfg, params=cpu.params, dtype="float32", device="cuda")
    hf = hf_model(cfg, dtype="float32")
    load_into_hf(hf, cpu.params, cfg)
    hl, hloss, hgrads = hf_loss_and_grads(hf, idx, targets, cfg)
    assert np.abs(cp.asnumpy(gpu32.logits(idx)) - hl).max() <= 1e-4
    loss32, grads32 = gpu32.loss_and_grads(idx, targets)
    assert abs(loss32 - hloss) <= 1e-5 * abs(hloss)
    for k, g in grads32.items():
        assert g.dtype == np.float32, k
        assert rel_err(cp.asnumpy(g), hgrads[k]) <= 1e-3, k
