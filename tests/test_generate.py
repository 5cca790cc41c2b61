"""Generation: greedy against full-forward argmax and HF generate, sampling,
batching, stopping, cropping; the `gptlite generate` and `check-reference` commands."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from gptlite.engine import checkpoint as ckpt
from gptlite import cli
from gptlite.generate import SamplingConfig, generate, sample_next
from gptlite.engine.model import GPT, GPTConfig, init_params

CFG = GPTConfig(vocab_size=50257, n_positions=48, n_embd=32, n_layer=2, n_head=4)
PROMPT = [464, 2068, 7586, 21831, 18045]


def _model(cfg=CFG, seed=0, noise=0.3):
    """GPT-2 init plus noise: a random model whose greedy output is not one repeated token."""
    rng = np.random.default_rng(seed)
    p = init_params(cfg, seed=seed)
    p = {k: (v + rng.normal(0, noise, v.shape)).astype(np.float32) for k, v in p.items()}
    return GPT(cfg, params=p, device="cpu")


@pytest.fixture(scope="module")
def model():
    return _model()


def _argmax_reference(m, prompt, n):
    ids, out = list(prompt), []
    for _ in range(n):
        t = int(m.logits(np.array([ids]))[0, -1].argmax())
        out.append(t)
        ids.append(t)
    return out


def test_greedy_equals_full_forward_argmax(model):
    g = generate(model, PROMPT, 20, temperature=0)
    assert g == _argmax_reference(model, PROMPT, 20)
    assert len(set(g)) > 3  # a meaningful sequence, not a constant
    assert generate(model, PROMPT, 20, temperature=0.7, top_k=1, seed=1) == g  # top-k=1 is greedy
    assert generate(model, np.array(PROMPT), 20, temperature=0) == g


def test_greedy_equals_hf_generate(model):
    torch = pytest.importorskip("torch")
    from hf_reference import hf_model, load_into_hf

    hf = hf_model(CFG)
    load_into_hf(hf, model.params, CFG)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    out = hf.generate(torch.tensor([PROMPT]), max_new_tokens=25, do_sample=False)
    assert out[0, len(PROMPT):].tolist() == generate(model, PROMPT, 25, temperature=0)


def test_seeded_sampling_is_deterministic(model):
    a = generate(model, PROMPT, 15, temperature=1.0, seed=123)
    assert a == generate(model, PROMPT, 15, temperature=1.0, seed=123)
    assert a != generate(model, PROMPT, 15, temperature=1.0, seed=124)
    assert a != generate(model, PROMPT, 15, temperature=0)
    b = generate(model, PROMPT, 15, temperature=0.9, top_k=40, top_p=0.9, seed=5)
    assert b == generate(model, PROMPT, 15, temperature=0.9, top_k=40, top_p=0.9, seed=5)
    # a Generator continues its stream: two calls from one Generator == not the same twice
    rng = np.random.default_rng(9)
    assert generate(model, PROMPT, 10, seed=rng) != generate(model, PROMPT, 10, seed=rng)


def _empirical(logits, cfg, n=20000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.repeat(np.asarray(logits, np.float64)[None], n, axis=0)
    return np.bincount(sample_next(x, cfg, rng), minlength=x.shape[1]) / n


def test_sampling_distributions():
    p = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    logits = np.log(p)
    np.testing.assert_allclose(_empirical(logits, SamplingConfig(1.0)), p, atol=0.015)
    # temperature 0.5 squares the probabilities (renormalised)
    q = p ** 2 / (p ** 2).sum()
    np.testing.assert_allclose(_empirical(logits, SamplingConfig(0.5)), q, atol=0.015)
    # top-k 2 keeps the two largest
    f = _empirical(logits, SamplingConfig(1.0, top_k=2))
    np.testing.assert_allclose(f, [4 / 7, 3 / 7, 0, 0, 0], atol=0.015)
    assert f[2:].sum() == 0
    # top-p: the smallest set reaching p. 0.7 -> {0,1}; 0.71 -> {0,1,2}
    f = _empirical(logits, SamplingConfig(1.0, top_p=0.7))
    assert f[2:].sum() == 0 and f[:2].min() > 0.3
    f = _empirical(logits, SamplingConfig(1.0, top_p=0.71))
    np.testing.assert_allclose(f, [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0], atol=0.015)
    # top_p tiny: always the most likely token
    assert set(np.flatnonzero(_empirical(logits, SamplingConfig(1.0, top_p=1e-6), n=500))) == {0}
    # -inf logits are never drawn
    f = _empirical(np.array([0.0, -np.inf, 0.0]), SamplingConfig(1.0), n=2000)
    assert f[1] == 0


def test_batched_prompts_match_single(model):
    prompts = [PROMPT, [11, 12], [5, 6, 7, 8, 9, 10, 11, 13, 14], [3]]
    batch = generate(model, prompts, 12, temperature=0)
    assert batch == [generate(model, p, 12, temperature=0) for p in prompts]
    assert batch[0] != batch[1]


def test_eot_stops_a_row(model):
    full = generate(model, PROMPT, 20, temperature=0)
    k = next(i for i in range(3, 20) if full[i] not in full[:i])  # first new token after a few
    eot = full[k]
    assert generate(model, PROMPT, 20, temperature=0, eot_token=eot) == full[:k]
    streamed = list(generate(model, PROMPT, 20, temperature=0, eot_token=eot, stream=True))
    assert streamed == full[:k]
    # in a batch, the other row goes on
    other = [11, 12]
    alone = generate(model, other, 20, temperature=0, eot_token=eot)
    assert len(alone) > k
    assert generate(model, [PROMPT, other], 20, temperature=0, eot_token=eot) == [full[:k], alone]
    steps = list(generate(model, [PROMPT, other], 20, temperature=0, eot_token=eot, stream=True))
    assert [s[0] for s in steps[:k]] == full[:k] and all(s[0] is None for s in steps[k:])
    assert [s[1] for s in steps if s[1] is not None] == alone


def test_stream_matches_batch_call(model):
    it = generate(model, PROMPT, 8, temperature=1.0, seed=3, stream=True)
    assert not isinstance(it, list)
    assert list(it) == generate(model, PROMPT, 8, temperature=1.0, seed=3)
    assert generate(model, PROMPT, 0) == []


def test_context_limit_crop_and_refuse(model):
    n_pos = CFG.n_positions
    long = [int(t) for t in np.random.default_rng(0).integers(0, 50257, n_pos + 7)]
    with pytest.raises(ValueError, match=r"prompt has 55 tokens but the model's context is 48 positions"):
        generate(model, long, 5, temperature=0)
    with pytest.raises(ValueError, match=r"prompt 1 has 55 tokens"):
        generate(model, [PROMPT, long], 5, temperature=0)
    # crop keeps the last tokens, leaving room for every requested token
    got = generate(model, long, 5, temperature=0, crop=True)
    assert got == generate(model, long[-(n_pos - 4):], 5, temperature=0)
    # generation stops when the context is full: a prompt of L tokens gets n_pos - L + 1
    near = long[:n_pos - 3]
    got = generate(model, near, 10, temperature=0)
    assert got == _argmax_reference(model, near, 4)
    assert len(generate(model, long[:n_pos], 10, temperature=0)) == 1


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(prompt_ids=[]), ValueError, "prompt is empty"),
    (dict(prompt_ids=[[1, 2], []]), ValueError, "prompt 1 is empty"),
    (dict(prompt_ids=[1, 50257]), ValueError, "token id 50257 at position 1 is out of range for vocab_size 50257"),
    (dict(prompt_ids=[[1], [-1, 2]]), ValueError, "prompt 1: token id -1 at position 0"),
    (dict(prompt_ids=[1, 2.5]), TypeError, "position 1 is 2.5, not an integer"),
    (dict(prompt_ids="hello"), TypeError, "not text"),
    (dict(temperature=-1), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(eot_token=60000), ValueError, "eot_token 60000"),
])
def test_bad_arguments(model, kwargs, exc, match):
    args = dict(prompt_ids=PROMPT, max_new_tokens=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        generate(model, **args)


# --------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, gpt2_dir):
    from gptlite.tokenizer.encoding import Tokenizer

    d = tmp_path_factory.mktemp("cli") / "model"
    ckpt.save_model(model, d, tokenizer=Tokenizer.from_files(gpt2_dir))
    assert ckpt.load_tokenizer(d) is not None
    return d


def _run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_generate_greedy(model_dir, model, capsys):
    tok = ckpt.load_tokenizer(model_dir)
    rc, out, err = _run(["generate", "--model", str(model_dir), "--temperature", "0", "--max-new-tokens", "12",
                         "Hello, world"], capsys)
    assert rc == 0, err
    ids = generate(model, tok.encode("Hello, world"), 12, temperature=0, eot_token=tok.eot_token)
    # streamed piece by piece, printed only as whole characters: same text as one decode
    assert out == "Hello, world" + tok.decode(ids) + "\n"


def test_cli_generate_seed_stdin_and_samples(model_dir, capsys, monkeypatch):
    base = ["generate", "--model", str(model_dir), "--max-new-tokens", "10", "--seed", "7", "--temperature", "1.0"]
    rc1, a, _ = _run(base + ["--num-samples", "2", "-"], capsys, stdin="Once upon a time", monkeypatch=monkeypatch)
    rc2, b, _ = _run(base + ["--num-samples", "2"], capsys, stdin="Once upon a time", monkeypatch=monkeypatch)
    assert rc1 == rc2 == 0 and a == b
    first, second = a.split("\n" + "-" * 40 + "\n")
    assert first.startswith("Once upon a time") and second.startswith("Once upon a time")
    assert first != second  # two different samples from one seeded stream
    rc3, c, _ = _run(base[:-1] + ["8", "--no-prompt", "Once upon a time"], capsys)
    assert rc3 == 0 and c != a.split("\n")[0] and not c.startswith("Once upon a time")


def test_cli_generate_errors(model_dir, tmp_path, capsys):
    rc, _, err = _run(["generate", "--model", str(tmp_path / "missing"), "hi"], capsys)
    assert rc == 2 and "missing" in err and "gptlite: error:" in err
    long = "word " * 100
    rc, _, err = _run(["generate", "--model", str(model_dir), long], capsys)
    assert rc == 2 and "context is 48 positions" in err and "--crop" in err
    rc, out, err = _run(["generate", "--model", str(model_dir), "--crop", "--max-new-tokens", "3", long], capsys)
    assert rc == 0, err
    rc, _, err = _run(["generate", "--model", str(model_dir), "--top-p", "2", "hi"], capsys)
    assert rc == 2 and "top_p" in err


def test_cli_streams_whole_characters_only(model_dir, monkeypatch):
    """Tokens that end inside a UTF-8 character are held back until it is complete."""
    import gptlite.generate as gen_mod

    tok = ckpt.load_tokenizer(model_dir)
    ids = tok.encode("héllo 😀 世界")
    assert any(b"\xf0\x9f\x98" in tok.decode_bytes([i]) for i in ids)  # the emoji spans tokens

    def fake_generate(model, prompt, n, **kw):
        gen_mod.SamplingConfig(kw["temperature"], kw["top_k"], kw["top_p"]).validate()
        return iter(ids)

    monkeypatch.setattr(gen_mod, "generate", fake_generate)
    writes = []

    class Out:
        def write(self, s):
            writes.append(s)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Out())
    assert cli.main(["generate", "--model", str(model_dir), "--no-prompt", "x"]) == 0
    assert "".join(writes) == "héllo 😀 世界\n"
    assert not any("\ufffd" in w for w in writes)
    assert "😀" in writes and "世" in writes  # printed as soon as complete


def test_cli_default_model_missing(tmp_path, capsys, monkeypatch):
    # as if gptlite were installed without assets/default
    from gptlite.engine import checkpoint

    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL_DIR", tmp_path / "gptlite" / "assets" / "default")
    rc, _, err = _run(["generate", "hello"], capsys)
    assert rc == 2 and "default model is not installed" in err and "model directory" in err


def test_check_reference_cli(model_dir, capsys):
    pytest.importorskip("transformers")
    rc, out, err = _run(["check-reference", "--model", str(model_dir), "--max-tokens", "40"], capsys)
    assert rc == 0, out + err
    assert "max |logits diff|" in out and "h.*.attn.c_attn.weight" in out and "PASSED" in out
    rc, out, _ = _run(["check-reference", "--model", str(model_dir), "--dtype", "float64", "--json"], capsys)
    assert rc == 0
    import json

    r = json.loads(out)
    assert r["passed"] and r["max_abs_logits_diff"] < 1e-9 and r["max_grad_rel_diff"] < 1e-8


def test_check_reference_detects_a_difference(model_dir):
    torch = pytest.importorskip("torch")
    from gptlite.engine.reference import build_hf_model, check_reference

    m = ckpt.load_model(model_dir, device="cpu")
    hf = build_hf_model(m)
    ok = check_reference(model_dir, hf_model=hf, max_tokens=20)
    assert ok["passed"]
    with torch.no_grad():
        hf.transformer.h[1].mlp.c_fc.bias[3] += 0.05
    bad = check_reference(model_dir, hf_model=hf, max_tokens=20)
    assert not bad["passed"]
    assert bad["grad_rel_diff"]["h.*.mlp.c_fc.bias"] > 1e-3


def test_check_reference_gpt1(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    hf = transformers.OpenAIGPTLMHeadModel(
        transformers.OpenAIGPTConfig(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    hf.save_pretrained(str(tmp_path / "g1"))
    rc, out, err = _run(["check-reference", "--model", str(tmp_path / "g1")], capsys)
    assert rc == 0, out + err
    assert "OpenAIGPTLMHeadModel" in out and "from_pretrained" in out


def test_cli_empty_prompt_is_an_error(model_dir, capsys, monkeypatch):
    rc, _, err = _run(["generate", "--model", str(model_dir), ""], capsys)
    assert rc == 2 and "empty prompt" in err
    rc, _, err = _run(["generate", "--model", str(model_dir), "-"], capsys, stdin="", monkeypatch=monkeypatch)
    assert rc == 2 and "empty prompt" in err


def test_shipped_default_model(capsys):
    """The model inside the package: small, loads offline with its own tokenizer,
    and `gptlite generate` with no --model writes play-like text from it."""
    from gptlite.engine import checkpoint

    d = checkpoint.resolve_model_dir(None)
    assert d == checkpoint.DEFAULT_MODEL_DIR and d.is_dir()
    assert sum(f.stat().st_size for f in d.iterdir()) <= 10 * 2 ** 20
    model, tok = checkpoint.load_model(d), checkpoint.load_tokenizer(d)
    assert tok is not None and tok.n_vocab <= model.config.vocab_size
    assert model.config.layout == "gpt2"
    rc, out, err = _run(["generate", "--seed", "1", "--max-new-tokens", "60", "ROMEO:"], capsys)
    assert rc == 0, err
    text = out[len("ROMEO:"):]
    assert out.startswith("ROMEO:") and len(text.split()) >= 20
    lines = [ln for ln in text.split("\n") if ln.strip()]
    assert len(lines) >= 3 and all(ln[0].isupper() for ln in lines[:3])  # verse: short capitalised lines
    rc2, out2, _ = _run(["generate", "--seed", "1", "--max-new-tokens", "60", "ROMEO:"], capsys)
    assert (rc2, out2) == (0, out)  # deterministic with --seed


# --------------------------------------------------------------------------------
# Generation on the GPU: the CuPy path on the NumPy stand-in (tests/fake_cupy.py)
# --------------------------------------------------------------------------------
SMALL = GPTConfig(n_layer=2, n_embd=32, n_head=4, n_positions=40, vocab_size=97)
SMALL_PROMPTS = [[3, 5, 7, 9, 11], [40, 2, 13], [8]]


def _device_sample(cp, logits, cfg, seed=0, step=0):
    from gptlite.generate import sample_next_device

    return cp.asnumpy(sample_next_device(cp.asarray(logits), cfg, seed, step))


def _draws(cp, logits, cfg, n=4000, seed=11):
    """n draws from one row of logits: n rows in one launch (the rows get different counters)."""
    return _device_sample(cp, np.repeat(np.asarray(logits)[None], n, axis=0), cfg, seed=seed)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_device_greedy_equals_cpu(monkeypatch, dtype):
    import fake_cupy

    cpu = GPT(SMALL, dtype=dtype, seed=3, device="cpu")
    want = generate(cpu, SMALL_PROMPTS, 9, temperature=0)
    eot = want[0][4]
    want_eot = generate(cpu, SMALL_PROMPTS, 9, temperature=0, eot_token=eot)
    fake_cupy.install(monkeypatch)
    gpu = GPT(SMALL, dtype=dtype, seed=3, device="cuda")
    assert generate(gpu, SMALL_PROMPTS, 9, temperature=0) == want
    assert generate(gpu, SMALL_PROMPTS, 9, temperature=0.7, top_k=1, seed=4) == want  # top-k 1 is greedy
    assert generate(gpu, SMALL_PROMPTS, 9, temperature=0, eot_token=eot) == want_eot
    assert list(generate(gpu, SMALL_PROMPTS[1], 9, temperature=0, stream=True)) == want[1]


def test_device_sampler_keeps_only_allowed_tokens(monkeypatch):
    """Logits whose allowed set is known: every draw lies in it, and (over many
    draws) every allowed token is drawn, in about the filtered proportions."""
    import fake_cupy

    cp = fake_cupy.install(monkeypatch)
    perm = np.random.default_rng(0).permutation(50)
    p = np.full(50, 1e-3)
    p[perm[:5]] = [0.4, 0.3, 0.15, 0.1, 0.05]
    logits = np.log(p / p.sum())

    def freq(cfg, n=4000):
        ids = _draws(cp, logits, cfg, n)
        assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 50
        return np.bincount(ids, minlength=50) / n

    f = freq(SamplingConfig(1.0, top_k=2))  # the two largest, renormalised
    assert set(np.flatnonzero(f)) == set(perm[:2])
    np.testing.assert_allclose(f[perm[:2]], [4 / 7, 3 / 7], atol=0.03)
    f = freq(SamplingConfig(1.0, top_p=0.7 * p[perm[:5]].sum() / p.sum()))  # the smallest set reaching 0.7 of it
    assert set(np.flatnonzero(f)) == set(perm[:2])
    f = freq(SamplingConfig(1.0, top_k=4, top_p=0.8))  # top-k first, then top-p of what is left: 3 tokens
    assert set(np.flatnonzero(f)) == set(perm[:3])
    np.testing.assert_allclose(f[perm[:3]], np.array([0.4, 0.3, 0.15]) / 0.85, atol=0.03)
    f = freq(SamplingConfig(0.5))  # temperature alone (the unsorted path): p^2, renormalised
    q = p ** 2 / (p ** 2).sum()
    np.testing.assert_allclose(f, q, atol=0.03)
    assert set(np.flatnonzero(freq(SamplingConfig(1.0, top_p=1e-6), n=300))) == {perm[0]}
    # ties at the top-k cut stay, as on the CPU; -inf is never drawn
    tied = np.array([0.0, 2.0, -np.inf, 2.0, 2.0, 1.0])
    assert set(_draws(cp, tied, SamplingConfig(1.0, top_k=2), 600)) == {1, 3, 4}
    assert 2 not in set(_draws(cp, tied, SamplingConfig(3.0), 600))


def test_device_sampler_batched_rows_and_seeds(monkeypatch):
    """Each row draws from its own logits; a (seed, step) pair gives the same ids,
    another seed or step other ids; the kernel is launched once per call."""
    import fake_cupy

    cp = fake_cupy.install(monkeypatch)
    rng = np.random.default_rng(1)
    B, V = 16, 300
    logits = rng.standard_normal((B, V)) * 3
    cfg = SamplingConfig(0.9, top_k=7, top_p=0.9)
    fake_cupy.reset_counts()
    a = _device_sample(cp, logits, cfg, seed=5, step=3)
    assert sum(fake_cupy.KERNEL_LAUNCHES.values()) == 1 and fake_cupy.KERNEL_LAUNCHES["gs_sample_f64"] == 1
    top7 = np.argsort(-logits, axis=1)[:, :7]
    assert all(a[b] in top7[b] for b in range(B))
    assert np.array_equal(a, _device_sample(cp, logits, cfg, seed=5, step=3))
    others = [_device_sample(cp, logits, cfg, seed=s, step=t) for s, t in ((6, 3), (5, 4))]
    assert all(not np.array_equal(a, o) for o in others)
    f32 = _device_sample(cp, logits.astype(np.float32), cfg, seed=5, step=3)
    assert "gs_sample_f32" in fake_cupy.KERNEL_LAUNCHES and all(f32[b] in top7[b] for b in range(B))


def test_device_sampling_generation(monkeypatch):
    import fake_cupy

    fake_cupy.install(monkeypatch)
    gpu = GPT(SMALL, dtype="float64", seed=3, device="cuda")
    kw = dict(temperature=0.9, top_k=12, top_p=0.95)
    a = generate(gpu, SMALL_PROMPTS, 10, seed=21, **kw)
    assert a == generate(gpu, SMALL_PROMPTS, 10, seed=21, **kw)
    assert a != generate(gpu, SMALL_PROMPTS, 10, seed=22, **kw)
    assert all(len(r) == 10 and all(0 <= t < SMALL.vocab_size for t in r) for r in a)
    assert list(generate(gpu, SMALL_PROMPTS, 10, seed=21, stream=True, **kw)) == [list(s) for s in zip(*a)]
    # a Generator as the seed moves on between calls, and replays from the same state
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    x = generate(gpu, SMALL_PROMPTS[0], 8, seed=g1, **kw)
    assert x == generate(gpu, SMALL_PROMPTS[0], 8, seed=g2, **kw)
    assert generate(gpu, SMALL_PROMPTS[0], 8, seed=g1, **kw) != x
    # each step's token is one of the top 12 of the logits it was drawn from (the CPU model, float64)
    cpu = GPT(SMALL, dtype="float64", seed=3, device="cpu")
    for prompt, row in zip(SMALL_PROMPTS, a):
        ids = list(prompt)
        for t in row:
            top = np.argsort(-cpu.logits(np.array([ids]))[0, -1])[:12]
            assert t in top
            ids.append(t)


@pytest.mark.parametrize("greedy", [True, False])
def test_device_generation_reads_only_ids(monkeypatch, greedy):
    """Per token, one host read: the B chosen ids (no logits, no scalar checks)."""
    import fake_cupy

    import gptlite.generate as gen_mod

    cp = fake_cupy.install(monkeypatch)
    # the stand-in's arrays are NumPy arrays, which backend.to_numpy would hand back
    # as they are: count what generate reads through it as the copy it is under CuPy
    monkeypatch.setattr(gen_mod, "to_numpy", lambda a: cp.asnumpy(a) if isinstance(a, fake_cupy.DeviceArray) else a)
    gpu = GPT(SMALL, dtype="float64", seed=3, device="cuda")
    kw = dict(temperature=0) if greedy else dict(temperature=1.0, top_p=0.9, seed=2)
    seen = {}
    for n in (3, 9):
        fake_cupy.reset_counts()
        out = generate(gpu, SMALL_PROMPTS, n, **kw)
        assert all(len(r) == n for r in out)
        seen[n] = (list(fake_cupy.TRANSFERS), list(fake_cupy.SYNC_SITES))
    transfers, sites = seen[9]
    assert transfers == [((len(SMALL_PROMPTS),), np.dtype(np.int64))] * 9
    assert len(sites) == 9 and {f for f, _ in sites} == {"generate.py"}
    assert len(seen[3][0]) == 3


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_kv_cache_allocated_once(monkeypatch, device):
    """The cache holds every column the generation can fill from the start: the
    same arrays (same device memory) at every step, never grown."""
    import fake_cupy

    if device == "cuda":
        fake_cupy.install(monkeypatch)
    m = GPT(SMALL, dtype="float64", seed=3, device=device)
    calls = []
    decode = m.decode

    def recording_decode(idx, kv, **kw):
        calls.append((id(kv), id(kv.k), id(kv.v), kv.k.ctypes.data, kv.v.ctypes.data, kv.k.shape, kv.length))
        return decode(idx, kv, **kw)

    monkeypatch.setattr(m, "decode", recording_decode)
    monkeypatch.setenv("GPTLITE_CUDA_GRAPHS", "0")  # every step through decode (the graphed steps: below)
    generate(m, SMALL_PROMPTS, 7, temperature=0)
    assert len(calls) == 7  # the prompt, then 6 fed-back tokens
    assert len({c[:6] for c in calls}) == 1
    T0 = max(len(p) for p in SMALL_PROMPTS)
    assert calls[0][5] == (SMALL.n_layer, len(SMALL_PROMPTS), SMALL.n_head, T0 + 6, SMALL.n_embd // SMALL.n_head)
    assert [c[6] for c in calls] == [0] + list(range(T0, T0 + 6))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_decode_position_bound_with_pad(monkeypatch, device):
    """Left padding lets a row's cache hold n_positions + its pad columns: decode's
    bound on the largest position (kept on the host) is exact, for a pad given on
    the host, on the device, or set on the cache by hand."""
    import fake_cupy

    if device == "cuda":
        fake_cupy.install(monkeypatch)
    m = GPT(SMALL, dtype="float64", seed=3, device=device)
    n_pos = SMALL.n_positions
    for how in ("host", "device", "by hand"):
        pad = np.array([3, 5])
        kv = m.kv_cache(2, n_pos + 6)
        first = np.ones((2, n_pos), np.int64)
        if how == "by hand":
            kv.pad = m.xp.asarray(pad)
            m.decode(first, kv)
        else:
            m.decode(first, kv, pad=pad if how == "host" else m.xp.asarray(pad))
        m.decode(np.ones((2, 1), np.int64), kv)
        m.decode(np.ones((2, 1), np.int64), kv)
        m.decode(np.ones((2, 1), np.int64), kv)  # column n_pos + 2: row 0's position n_pos - 1
        with pytest.raises(ValueError, match=f"past the model's n_positions={n_pos}"):
            m.decode(np.ones((2, 1), np.int64), kv)
    kv = m.kv_cache(2, n_pos + 6)
    m.decode(np.ones((2, n_pos), np.int64), kv, pad=np.array([3, 0]))
    with pytest.raises(ValueError, match="past the model's n_positions"):
        m.decode(np.ones((2, 1), np.int64), kv)  # row 1 has no padding


def _ptx_signatures(ptx: str) -> dict:
    import re

    return {m.group(1): re.findall(r"\.param \.(\w+)", m.group(2))
            for m in re.finditer(r"\.entry (\w+)\(\s*(.*?)\)", ptx, re.S)}


def test_sampling_kernel_launch_matches_ptx(monkeypatch):
    """The arguments the CuPy path passes (recorded by the stand-in) fit the compiled
    kernels' parameter lists: count, pointer or scalar, and each scalar's width."""
    import cuda_sources as cs
    import fake_cupy

    if cs.nvrtc() is None:
        pytest.skip("cupy / nvidia-cuda-nvrtc not installed")
    from gptlite.engine import kernels

    ptx = cs.compile_source(kernels._PREAMBLE + kernels.source("sampling"), "sampling.cu", "90")
    sigs = _ptx_signatures(ptx.decode() if isinstance(ptx, bytes) else ptx)
    widths = {np.int32: "u32", np.uint32: "u32", np.int64: "u64", np.uint64: "u64", np.float32: "f32", np.float64: "f64"}
    cp = fake_cupy.install(monkeypatch)
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for cfg in (SamplingConfig(0.8), SamplingConfig(0.8, top_k=3, top_p=0.5)):
            fake_cupy.reset_counts()
            _device_sample(cp, rng.standard_normal((4, 40)).astype(dt), cfg, seed=0, step=0)
            (name, args), = fake_cupy.KERNEL_ARGS.items()
            got = ["u64" if isinstance(a, np.ndarray) else widths[type(a)] for a in args]
            assert got == sigs[name], name



# -- the real sampling kernel (a GPU; run by scripts/gpu_check.sh) -----------------------

from gptlite.engine import backend as _backend  # noqa: E402

needs_gpu = pytest.mark.skipif(not _backend.cuda_available(), reason="no CUDA device (CuPy + driver + GPU)")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_real_sampling_kernel_matches_twin(dtype):
    """The compiled kernel draws the ids its NumPy twin draws from the same sorted
    rows, seed and step (GPT-2's vocabulary, 32 rows)."""
    import cupy as cp

    from gptlite.generate import SAMPLE_KERNELS, SAMPLE_THREADS, sample_kernel_twin, sample_next_device

    B, V = 32, 50257
    x = cp.asarray((np.random.default_rng(3).standard_normal((B, V)) * 3).astype(dtype))
    for cfg in (SamplingConfig(1.0), SamplingConfig(0.7, top_k=50), SamplingConfig(1.0, top_p=0.9),
                SamplingConfig(0.8, top_k=200, top_p=0.5), SamplingConfig(1.3, top_p=1e-6)):
        for seed, step in ((0, 0), (12345, 7), (2 ** 63 + 5, 2 ** 40)):
            got = cp.asnumpy(sample_next_device(x, cfg, seed, step))
            k = V if cfg.top_k is None else cfg.top_k
            top_p = 1.0 if cfg.top_p is None else cfg.top_p
            if k < V or top_p < 1.0:
                ids = cp.argsort(-x, axis=-1)
                vals, ids = cp.asnumpy(cp.take_along_axis(x, ids, axis=-1)), cp.asnumpy(ids)
            else:
                vals, ids = cp.asnumpy(x), None
            want = np.empty(B, np.int64)
            sample_kernel_twin(SAMPLE_KERNELS[np.dtype(dtype)], (B,), (SAMPLE_THREADS,),
                               (vals, ids, want, V, k, 1.0 / cfg.temperature, top_p, seed, step, None))
            assert np.array_equal(got, want), (cfg, seed, step, got, want)


@pytest.mark.gpu
@needs_gpu
def test_real_device_sampling_generation():
    cpu = GPT(SMALL, dtype="float64", seed=3, device="cpu")
    gpu = GPT(SMALL, dtype="float64", seed=3, device="cuda")
    assert generate(gpu, SMALL_PROMPTS, 9, temperature=0) == generate(cpu, SMALL_PROMPTS, 9, temperature=0)
    kw = dict(temperature=0.9, top_k=12, top_p=0.95)
    a = generate(gpu, SMALL_PROMPTS, 10, seed=21, **kw)
    assert a == generate(gpu, SMALL_PROMPTS, 10, seed=21, **kw) != generate(gpu, SMALL_PROMPTS, 10, seed=22, **kw)
    for prompt, row in zip(SMALL_PROMPTS, a):
        ids = list(prompt)
        for t in row:
            assert t in np.argsort(-cpu.logits(np.array([ids]))[0, -1])[:12]
            ids.append(t)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_real_cuda_graph_steps_give_the_eager_tokens(monkeypatch, dtype):
    """On the GPU the captured and replayed step gives the eager loop's tokens,
    greedy and sampled, for left-padded batches, float32 and mixed precision."""
    from gptlite.engine.model import GPTConfig

    cfg = GPTConfig(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=97)
    gpu = GPT(cfg, dtype=dtype, seed=3, device="cuda")
    for kw in (dict(temperature=0), dict(temperature=0.9, seed=4)):
        monkeypatch.setenv("GPTLITE_CUDA_GRAPHS", "0")
        eager = generate(gpu, SMALL_PROMPTS, 20, **kw)
        monkeypatch.setenv("GPTLITE_CUDA_GRAPHS", "1")
        assert generate(gpu, SMALL_PROMPTS, 20, **kw) == eager, kw


# -- CUDA graphs of the decode step (on the stand-in: tests/fake_cupy.py's _FakeGraph) ---


@pytest.mark.parametrize("temperature", [0, 0.8])
def test_graphed_decode_steps_give_the_eager_tokens(monkeypatch, temperature):
    """With CUDA graphs the step after the first token is captured once and
    replayed: the same tokens as the eager loop (greedy and sampled, left-padded
    prompts), every replay the same launches with the same scalar arguments and no
    read of the device (the stand-in checks both), the KV column written and the
    filled length read on the device."""
    import fake_cupy

    fake_cupy.install(monkeypatch)
    m = GPT(SMALL, dtype="float32", seed=3, device="cuda")
    monkeypatch.setenv("GPTLITE_CUDA_GRAPHS", "0")
    eager = generate(m, SMALL_PROMPTS, 9, temperature=temperature, seed=11)
    assert not fake_cupy.GRAPHS
    monkeypatch.setenv("GPTLITE_CUDA_GRAPHS", "1")
    fake_cupy.reset_counts()
    graphed = generate(m, SMALL_PROMPTS, 9, temperature=temperature, seed=11)
    assert graphed == eager
    (g,) = fake_cupy.GRAPHS
    assert g.replays == 7  # steps 2..8: step 0 samples the prompt's logits, step 1 runs eagerly before the capture
    names = [r[0] for r in g.signature]
    assert names.count("fa_kv_append_f32") == SMALL.n_layer and any(n.startswith("fa_dec_part_f32") for n in names)
    # one host read per token (the B ids), none inside the replays
    assert fake_cupy.COUNTS["syncs"] <= 9 + 2
    # one row alone gives its batched tokens (padding masked on the device too)
    assert generate(m, SMALL_PROMPTS[1], 9, temperature=0) == generate(m, [SMALL_PROMPTS[1]], 9, temperature=0)[0]


def test_graphs_only_where_the_step_can_be_replayed(monkeypatch):
    """No graph for top-k/top-p (the row sort) or for too few tokens; and the
    stand-in's graph catches a step whose scalar arguments change between replays
    (the position passed from the host, as the eager decode does) or that reads
    the device."""
    import fake_cupy
    from gptlite.generate import SamplingConfig, sample_next_device

    cp = fake_cupy.install(monkeypatch)
    m = GPT(SMALL, dtype="float32", seed=3, device="cuda")
    generate(m, SMALL_PROMPTS, 9, temperature=1.0, top_k=5, seed=1)
    generate(m, SMALL_PROMPTS, 3, temperature=0)
    assert not fake_cupy.GRAPHS
    logits = cp.asarray(np.random.default_rng(0).standard_normal((2, SMALL.vocab_size)).astype(np.float32))
    cfg = SamplingConfig(temperature=1.0)
    counter = iter(range(100))
    g = fake_cupy._fake_capture(lambda: sample_next_device(logits, cfg, 7, next(counter)), m.backend, None)
    g.launch()
    with pytest.raises(RuntimeError, match="differs from the captured step"):
        g.launch()
    step_dev = cp.zeros(1, dtype=np.uint64)
    g = fake_cupy._fake_capture(lambda: sample_next_device(logits, cfg, 7, 0, step_dev=step_dev), m.backend, None)
    g.launch()
    g.launch()
    g = fake_cupy._fake_capture(lambda: float(logits.sum()), m.backend, None)
    with pytest.raises(RuntimeError, match="read the device"):
        g.launch()
