"""gptlite's CuPy code paths, run on a NumPy stand-in for CuPy (tests/fake_cupy.py).

The real GPU tests (marked ``gpu``) need CUDA and skip without it; these run
everywhere and check that every ``xp is cupy`` branch — the fused-kernel call
sites, attention, cross-entropy, embedding scatter-add, KV-cache decoding,
generation, AdamW and the training loop's device handling — computes what
the NumPy path computes.
"""
from __future__ import annotations

import numpy as np
import pytest

import fake_cupy
from gptlite.engine import ops
from gptlite.training import optim
from gptlite.generate import generate
from gptlite.engine.model import GPT, GPTConfig

CFG = {
    "gpt2": GPTConfig(n_layer=2, n_embd=32, n_head=4, n_positions=40, vocab_size=97),
    "gpt2-erf": GPTConfig(n_layer=2, n_embd=32, n_head=4, n_positions=40, vocab_size=97, activation_function="gelu"),
    "gpt1": GPTConfig(n_layer=2, n_embd=32, n_head=4, n_positions=40, vocab_size=97, layout="gpt1"),
}


def _host(a):
    return np.array(a).view(np.ndarray)


@pytest.mark.parametrize("T", [7, 24])  # short (stacked products) and long (per-head tasks on NumPy)
def test_ops_on_fake_cupy_match_numpy(monkeypatch, T):
    rng = np.random.default_rng(0)
    B, C, H, V = 2, 16, 4, 11
    x = rng.standard_normal((B * T, C))
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    R = rng.standard_normal((B * T, C))
    qkv = rng.standard_normal((B * T, 3 * C))
    idx = rng.integers(0, V, (B, T))
    wte, wpe = rng.standard_normal((V, C)), rng.standard_normal((T, C))
    logits = rng.standard_normal((B, T, V))
    targets = idx.copy()
    targets[0, 0] = -1

    def run():
        out = {}
        y, c = ops.layernorm_forward(x_, w_, b_)
        out["ln"] = (y,) + tuple(ops.layernorm_backward(R_, c))
        for kind in ("gelu_new", "gelu"):
            y, c = ops.gelu_forward(x_, kind)
            out[kind] = (y, ops.gelu_backward(R_, c))
        y, c = ops.attention_forward(qkv_, H, B, T)
        out["attn"] = (y, ops.attention_backward(R_, c))
        _, c = ops.embedding_forward(idx_, wte_, wpe_)
        out["emb"] = ops.embedding_backward(R_.reshape(B, T, C), c)
        loss, c = ops.cross_entropy_forward(logits_, targets_)
        out["ce"] = (np.array(loss), ops.cross_entropy_backward(c))
        a = logits_.reshape(-1, V).copy()
        out["softmax"] = (ops.softmax_inplace(a),)
        return out

    x_, w_, b_, R_, qkv_, idx_, wte_, wpe_, logits_, targets_ = x, w, b, R, qkv, idx, wte, wpe, logits, targets
    want = run()
    cp = fake_cupy.install(monkeypatch)
    x_, w_, b_, R_, qkv_, idx_, wte_, wpe_, logits_, targets_ = (
        cp.asarray(a) for a in (x, w, b, R, qkv, idx, wte, wpe, logits, targets))
    assert ops.xp_of(x_) is cp
    got = run()
    for key, arrays in want.items():
        for i, (a, g) in enumerate(zip(arrays, got[key])):
            assert isinstance(g, (fake_cupy.DeviceArray, float, np.floating)) or key == "ce", (key, i, type(g))
            np.testing.assert_allclose(_host(g), a, rtol=1e-10, atol=1e-12, err_msg=f"{key}[{i}]")


@pytest.mark.parametrize("name", list(CFG))
def test_model_on_fake_cupy_matches_numpy(monkeypatch, name):
    cfg = CFG[name]
    rng = np.random.default_rng(1)
    idx = rng.integers(0, cfg.vocab_size, (3, 21))
    targets = rng.integers(0, cfg.vocab_size, (3, 21))
    cpu = GPT(cfg, dtype="float64", seed=3, device="cpu")
    loss, grads = cpu.loss_and_grads(idx, targets)
    logits = cpu.logits(idx)
    opt = optim.AdamW(cpu.params, optim.AdamWConfig(lr=1e-3, weight_decay=0.1))
    clipped = {k: g.copy() for k, g in grads.items()}  # clipping scales in place
    norm = optim.clip_grads(clipped, 0.5)
    opt.step(clipped, 1e-3)
    stepped = {k: v.copy() for k, v in cpu.params.items()}
    prompt = [int(t) for t in idx[0, :5]]
    gen = generate(GPT(cfg, dtype="float64", seed=3, device="cpu"), [prompt, prompt[:3]], 6, temperature=0)

    cp = fake_cupy.install(monkeypatch)
    gpu = GPT(cfg, dtype="float64", seed=3, device="cuda")
    assert gpu.xp is cp and isinstance(gpu.params["wte.weight"], fake_cupy.DeviceArray)
    gloss, ggrads = gpu.loss_and_grads(idx, targets)
    assert abs(gloss - loss) <= 1e-10 * abs(loss)
    for k, g in grads.items():
        assert isinstance(ggrads[k], fake_cupy.DeviceArray), k
        np.testing.assert_allclose(_host(ggrads[k]), g, rtol=1e-9, atol=1e-12, err_msg=k)
    kv = gpu.kv_cache(3, 24)
    dec = [gpu.decode(idx[:, :18], kv)] + [gpu.decode(idx[:, t:t + 1], kv) for t in range(18, 21)]
    np.testing.assert_allclose(_host(np.concatenate([_host(d) for d in dec], axis=1)), logits, rtol=1e-9, atol=1e-10)
    gopt = optim.AdamW(gpu.params, optim.AdamWConfig(lr=1e-3, weight_decay=0.1))
    gnorm = optim.clip_grads(ggrads, 0.5)
    assert abs(float(gnorm) - float(norm)) <= 1e-9 * float(norm)
    gopt.step(ggrads, 1e-3)
    for k, v in stepped.items():
        np.testing.assert_allclose(_host(gpu.params[k]), v, rtol=1e-9, atol=1e-12, err_msg=k)
    ggen = generate(GPT(cfg, dtype="float64", seed=3, device="cuda"), [prompt, prompt[:3]], 6, temperature=0)
    assert ggen == gen


def test_training_loop_on_fake_cupy(monkeypatch, tmp_path):
    """`gptlite train`'s loop with device="cuda": the same losses as on the CPU
    (float64), checkpoints written from device arrays, exact resume."""
    import test_train as tt
    from gptlite.training import pretrain as T

    cpu = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "cpu"), dtype="float64"), log=lambda m: None).run()["losses"]
    fake_cupy.install(monkeypatch)
    straight = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "a"), device="cuda", dtype="float64"), log=lambda m: None)
    assert straight.device == "cuda"
    full = straight.run()["losses"]
    np.testing.assert_allclose(full, cpu, rtol=1e-9)
    first = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "b"), device="cuda", dtype="float64"), log=lambda m: None)
    part1 = first.run(steps=4)["losses"]
    second = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "b"), device="cuda", dtype="float64"), resume=True,
                       log=lambda m: None)
    assert full == part1 + second.run()["losses"]


def test_finetune_and_evaluation_on_fake_cupy(monkeypatch, tmp_path, gpt2_dir):
    """GPT-1 fine-tuning (head, special tokens, dropout, both losses) and the
    zero-shot evaluations give the CPU's figures on the CuPy path (float64)."""
    import json

    from gptlite.tasks import evaluate as ev
    from gptlite.tasks import finetune as ft
    from gptlite.tokenizer.encoding import Tokenizer

    tok = Tokenizer.from_files(gpt2_dir)
    words = ["apple", "river", "stone", "cloud", "table", "green", "light", "sound"]
    rows = [{"text": f"the {w} was {v}", "label": i % 2} for i, (w, v) in enumerate(zip(words * 2, words[::-1] * 2))]
    data = tmp_path / "cls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    choices = [{"context": f"the {w} is", "choices": [words[(i + k) % 8] for k in range(3)], "label": i % 3}
               for i, w in enumerate(words)]
    cdata = tmp_path / "ch.jsonl"
    cdata.write_text("".join(json.dumps(r) + "\n" for r in choices))
    text = " ".join(f"the {w} was {v}." for w, v in zip(words, words[::-1])) * 3

    def run(device):
        def model():
            return GPT(GPTConfig(vocab_size=50257, n_positions=48, n_embd=16, n_layer=1, n_head=2), seed=0,
                       dtype="float64", device=device)

        cfg = ft.FinetuneConfig(task="classification", epochs=2, batch_size=4, max_len=16, lr=1e-3)
        res = ft.finetune(model(), tok, data, data, cfg, log=lambda s: None)
        pred, _ = res.finetuned.predict(data)
        ppl = ev.perplexity(model(), tok, text=text, context=16, stride=8)
        ch = ev.choice(model(), tok, cdata)
        return ([h["train_loss"] for h in res.history], [h["valid_accuracy"] for h in res.history], list(pred),
                ppl.total_nats, ch.predictions, np.array(ch.scores))

    want = run("cpu")
    fake_cupy.install(monkeypatch)
    got = run("cuda")
    np.testing.assert_allclose(got[0], want[0], rtol=1e-9)
    assert got[1:3] == want[1:3]
    assert abs(got[3] - want[3]) <= 1e-9 * abs(want[3])
    assert got[4] == want[4]
    np.testing.assert_allclose(got[5], want[5], rtol=1e-9)


def test_every_cuda_kernel_source_is_shipped_and_named(monkeypatch):
    """Each kernel kernels.py knows has its .cu file, non-empty, the wheel includes
    the folder, and an unknown name is refused by name."""
    import pathlib

    from gptlite.engine import kernels

    for name in list(kernels._ELEMENTWISE) + list(kernels._RAW):
        assert kernels.source(name).strip(), name
    assert "softmax_f32" in kernels.source("softmax_rows")
    pyproject = (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert "engine/cuda/*.cu" in pyproject
    fake_cupy.install(monkeypatch)
    with pytest.raises(KeyError, match="unknown CUDA kernel 'no_such_kernel'"):
        kernels.kernel("no_such_kernel")
    assert kernels.kernel("gelu_tanh_fwd") is kernels.kernel("gelu_tanh_fwd")  # compiled once


def test_training_float32_on_fake_cupy_one_sync_per_step(monkeypatch, tmp_path):
    """float32 training on the CuPy path (fused LayerNorm, chunked head + CE,
    device-side clip and one AdamW launch) follows the CPU's losses at float32
    precision, turns TF32 on, reads the device once per step, and skips a
    non-finite step on the device."""
    import test_train as tt
    from gptlite.training import pretrain as T

    cpu = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "cpu"), batch_tokens=32), log=lambda m: None).run()["losses"]
    cp = fake_cupy.install(monkeypatch)
    tr = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "a"), device="cuda", batch_tokens=32), log=lambda m: None)
    assert tr.model.dtype == np.float32
    linalg = cp._core._routines_linalg
    assert linalg.compute_types[np.dtype(np.float32)] == linalg.COMPUTE_TYPE_TF32
    gpu = tr.run()["losses"]
    np.testing.assert_allclose(gpu, cpu, rtol=2e-5)
    fake_cupy.reset_counts()
    st = tr.train_step()
    assert fake_cupy.COUNTS["syncs"] == 1 and st["finite"], fake_cupy.SYNC_SITES
    # a poisoned parameter: the flag is raised on the device and the update skipped there
    tr.model.params["wpe.weight"][0, 0] = np.nan
    t_before, p_before = tr.opt.t, tr.model.params["h.0.mlp.c_fc.weight"].copy()
    st = tr.train_step()
    assert not st["finite"] and tr.opt.t == t_before
    np.testing.assert_array_equal(tr.model.params["h.0.mlp.c_fc.weight"], p_before)
    T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "b"), device="cuda", tf32=False), log=lambda m: None)
    assert linalg.compute_types[np.dtype(np.float32)] == linalg.COMPUTE_TYPE_FP32


def test_training_batches_upload_on_a_side_stream_during_the_previous_step(monkeypatch, tmp_path):
    """Batch k+1 is copied from pinned memory on a side stream while step k runs: each
    step after the first finds its batch uploaded, waits for it on the device only, and
    still reads the device once; the losses are the CPU's (float64); a bad id in a
    prefetched batch is still refused before any device value is read."""
    import test_train as tt
    from gptlite.engine.backend import Uploaded
    from gptlite.training import pretrain as T

    cpu = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "cpu"), dtype="float64", batch_tokens=64),
                    log=lambda m: None).run()["losses"]
    fake_cupy.install(monkeypatch)
    tr = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "a"), device="cuda", dtype="float64", batch_tokens=64),
                   log=lambda m: None)
    assert tr.cfg.grad_accum == 2
    np.testing.assert_allclose(tr.run()["losses"], cpu, rtol=1e-9)
    B, T_ = tr.cfg.batch_size, tr.cfg.block_size
    fake_cupy.reset_counts()
    k = tr.batches.position
    assert any(s.k == k for s in tr.prefetch.slots)  # the next micro-batch was already on its way
    tr.train_step()
    # this step's micro-batches were found prefetched; what it uploaded is the next ones, on the side stream
    assert fake_cupy.UPLOADS and all(side for _, side in fake_cupy.UPLOADS)
    assert [shape for shape, _ in fake_cupy.UPLOADS] == [(B, T_)] * 2 * tr.cfg.grad_accum  # x and y of each
    assert len(fake_cupy.WAITS) >= 2 and fake_cupy.COUNTS["syncs"] == 1, fake_cupy.SYNC_SITES
    x, y = tr.prefetch.batch(tr.batches.position)
    assert isinstance(x, Uploaded) and np.array_equal(x.host, tr.batches.batch(tr.batches.position)[0])
    np.testing.assert_array_equal(np.asarray(x.dev), x.host)
    bad = x.host.copy()
    bad[1, 2] = tr.model.config.vocab_size + 5
    fake_cupy.reset_counts()
    with pytest.raises(ValueError, match=r"token id \d+ at position \(batch 1, time 2\)"):
        tr.model.loss_and_grads(Uploaded(bad, x.dev), y)
    assert fake_cupy.COUNTS["syncs"] == 0


def test_training_reads_the_device_only_at_log_eval_and_checkpoint_steps(monkeypatch, tmp_path):
    """On the GPU the loop leaves each step's loss, norm and flag on the device and reads
    them at log/eval/checkpoint steps, all pending steps in one transfer: 12 steps logged
    every 4 make 3 reads of step figures, not 12; losses, metrics and the non-finite
    accounting are the CPU's."""
    import json

    import test_train as tt
    from gptlite.training import pretrain as T

    kw = dict(dtype="float64", max_steps=12, log_interval=4, eval_interval=12, eval_batches=0, ckpt_interval=100)
    cpu = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "cpu"), **kw), log=lambda m: None).run()["losses"]
    fake_cupy.install(monkeypatch)
    tr = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "gpu"), device="cuda", **kw), log=lambda m: None)
    fake_cupy.reset_counts()
    gpu = tr.run()["losses"]
    np.testing.assert_allclose(gpu, cpu, rtol=1e-9)
    step_reads = [site for site in fake_cupy.SYNC_SITES if site[0] == "step.py"]
    assert len(step_reads) == 3, fake_cupy.SYNC_SITES
    recs = [json.loads(x) for x in (tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (tmp_path / "cpu" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [r["step"] for r in want] == [4, 8, 12]
    np.testing.assert_allclose([r["loss"] for r in recs], [r["loss"] for r in want], rtol=1e-9)
    assert [r["tokens"] for r in recs] == [r["tokens"] for r in want]
    # non-finite steps found at the next read: skipped on the device, accounted in order
    bad = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "bad"), device="cuda", max_bad_steps=3, **kw),
                    log=lambda m: None)
    real = bad.model.loss_and_grads

    def poisoned(x, y, *a, **k):
        loss, grads = real(x, y, *a, **k)
        return (loss * np.nan if bad.step >= 5 else loss), grads

    bad.model.loss_and_grads = poisoned
    with pytest.raises(T.TrainingError, match="stopped at step 8: 3 consecutive steps"):
        bad.run()
    assert bad.opt.t == 5  # AdamW's count on the device: steps 1-5 applied, 6-8 skipped


def test_a_stop_between_log_steps_accounts_for_the_pending_steps_and_resumes_exactly(monkeypatch, tmp_path):
    """A stop (Ctrl-C, SIGTERM) at step 6 of a run logging every 4: the steps still on
    the device are read and accounted before the checkpoint, and the resumed run ends
    with the losses of an uninterrupted one."""
    import test_train as tt
    from gptlite.training import pretrain as T

    kw = dict(dtype="float64", max_steps=10, log_interval=4, eval_interval=100, eval_batches=0, ckpt_interval=100)
    fake_cupy.install(monkeypatch)
    full = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "full"), device="cuda", **kw), log=lambda m: None).run()["losses"]
    tr = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "cut"), device="cuda", **kw), log=lambda m: None)
    step = tr.train_step

    def stop_after_six(*a, **k):
        st = step(*a, **k)
        if tr.step == 6:
            tr.request_stop()
        return st

    tr.train_step = stop_after_six
    with pytest.raises(KeyboardInterrupt):
        tr.run()
    assert tr.step == 6 and T.find_checkpoint(tr.out) is not None
    rest = T.Trainer(tt._cfg(tmp_path, out_dir=str(tmp_path / "cut"), device="cuda", **kw), resume=True,
                     log=lambda m: None).run()["losses"]
    assert len(rest) == 4
    np.testing.assert_array_equal(rest, full[6:])


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", list(CFG))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradients_written_straight_into_the_flat_buffer(monkeypatch, device, name, dtype):
    """loss_and_grads(grads_out=the flat buffer's views): every gradient is the view
    itself (nothing left for FlatGrads.add to copy), with the same bits as fresh arrays."""
    from gptlite.engine.backend import to_numpy
    from gptlite.training.distributed import FlatGrads

    if device == "cuda":
        fake_cupy.install(monkeypatch)
    model = GPT(CFG[name], device=device, dtype=dtype, seed=3)
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 97, (3, 11)), rng.integers(0, 97, (3, 11))
    loss, fresh = model.loss_and_grads(x, y)
    flat = FlatGrads(model.params)
    views = flat.zero()
    loss2, direct = model.loss_and_grads(x, y, grads_out=views)
    assert float(loss2) == float(loss)
    for k in model.params:
        assert direct[k] is views[k], k
        np.testing.assert_array_equal(to_numpy(direct[k]), to_numpy(fresh[k]), err_msg=k)
    before = to_numpy(flat.buf).copy()
    flat.add(direct, 1.0)  # nothing to copy
    np.testing.assert_array_equal(to_numpy(flat.buf), before)
    with pytest.raises(ValueError, match="is the buffer itself"):
        flat.add(direct, 0.5)


def _fused_launches():
    return {k: v for k, v in fake_cupy.KERNEL_LAUNCHES.items() if k != "gl_sumsq"}


@pytest.mark.parametrize("name", list(CFG))
def test_model_float32_cupy_path_uses_the_fused_kernels_and_matches_numpy(monkeypatch, name):
    """float32, the training dtype: the CuPy path's loss and every gradient equal
    the NumPy path's to float32 precision, one loss_and_grads reads nothing back
    from the device, and the fused kernels are what runs: bias+GELU (tanh) with its
    column-sum bias gradient, LayerNorm with the projection's bias and the residual
    add folded into its forward and the residual gradient into its backward, flash attention
    (one forward and three backward launches per layer), one softmax/cross-entropy
    launch per chunk of rows, the deterministic embedding backward."""
    cfg = CFG[name]
    rng = np.random.default_rng(2)
    idx = rng.integers(0, cfg.vocab_size, (3, 21))
    targets = rng.integers(0, cfg.vocab_size, (3, 21))
    targets[1, :4] = -1  # ignored rows: no loss, no gradient
    cpu = GPT(cfg, dtype="float32", seed=3, device="cpu")
    loss, grads = cpu.loss_and_grads(idx, targets)
    cp = fake_cupy.install(monkeypatch)
    gpu = GPT(cfg, dtype="float32", seed=3, device="cuda")
    assert gpu.backend.is_gpu and type(gpu.backend.kernels).__name__ == "CudaKernels"
    fake_cupy.reset_counts()
    gloss, ggrads = gpu.loss_and_grads(idx, targets)
    assert fake_cupy.COUNTS["syncs"] == 0, fake_cupy.SYNC_SITES
    assert isinstance(gloss, cp.ndarray) and gloss.shape == () and gloss.dtype == np.float32
    assert abs(float(gloss) - loss) <= 2e-6 * abs(loss)
    for k, g in grads.items():
        assert ggrads[k].dtype == np.float32, k
        np.testing.assert_allclose(_host(ggrads[k]), g, rtol=1e-4, atol=2e-6 * max(1.0, float(np.abs(g).max())),
                                   err_msg=k)
    L = cfg.n_layer
    n_ln = 2 * L + (cfg.layout == "gpt2")  # + ln_f
    want = {"gl_ln_fwd_f32": n_ln, "gl_ln_bwd_dx_f32": n_ln, "gl_ln_bwd_dwdb_f32": n_ln,
            "gl_ce_fwd_bwd_f32": 1, "gl_embed_bwd_f32": 1,
            # flash attention (head size 8: the d32 instantiation), no softmax over a T x T matrix
            "fa_fwd_f32_d32": L, "fa_bwd_pre_f32": L, "fa_bwd_dkdv_f32_d32": L, "fa_bwd_dq_f32_d32": L}
    if cfg.activation_function == "gelu_new":
        want.update({"gl_bias_gelu_fwd_f32": L, "gl_gelu_bwd_f32": L, "gl_colsum_f32": L})
    assert _fused_launches() == want


def _step_launches(monkeypatch, n_layer, layout):
    fake_cupy.install(monkeypatch)
    cfg = GPTConfig(n_layer=n_layer, n_embd=32, n_head=4, n_positions=40, vocab_size=97, layout=layout)
    m = GPT(cfg, dtype="float32", seed=0, device="cuda")
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 97, (3, 21)), rng.integers(0, 97, (3, 21))
    m.loss_and_grads(idx, targets)  # first call builds the kernel caches
    fake_cupy.reset_counts()
    m.loss_and_grads(idx, targets)
    return fake_cupy.COUNTS["launches"], fake_cupy.COUNTS["syncs"]


@pytest.mark.parametrize("layout,per_layer,fixed", [("gpt2", 29, 14), ("gpt1", 31, 11)])
def test_launches_per_layer_on_the_stand_in(monkeypatch, layout, per_layer, fixed):
    """What the stand-in counts of one loss_and_grads (custom kernels plus NumPy
    calls on device arrays): per layer and outside the layers. Before the fused
    bias+GELU and bias+residual+LayerNorm were wired in it was 48 per layer (both
    layouts) and 20 / 17 outside, and 41 / 43 per layer before flash attention
    replaced the materialised scores (their matmuls, scale, mask add, softmax and
    softmax backward); a change that adds launches must update this."""
    one, s1 = _step_launches(monkeypatch, 1, layout)
    two, s2 = _step_launches(monkeypatch, 2, layout)
    assert (two - one, one - (two - one)) == (per_layer, fixed)
    assert s1 == s2 == 0


def test_backend_is_chosen_once_and_handed_to_the_ops(monkeypatch):
    """The model's backend reaches every op: on both devices no op looks up the
    backend of an array (attention included: the model hands it its backend,
    which chooses flash or the materialised scores)."""
    from gptlite.engine import backend, ops as ops_mod

    assert backend.get_backend("cpu") is backend.CPU and backend.CPU.kernels is backend.CPU.kernels
    with pytest.raises(ValueError, match="unknown device 'cuda:x'"):
        backend.get_backend("cuda:x")
    callers = []
    real = ops_mod.backend_of

    def spy(a):
        import sys

        callers.append(sys._getframe(1).f_code.co_name)
        return real(a)

    monkeypatch.setattr(ops_mod, "backend_of", spy)
    cfg = CFG["gpt2"]
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 97, (2, 9)), rng.integers(0, 97, (2, 9))
    for device in ("cpu", "cuda"):
        if device == "cuda":
            cp = fake_cupy.install(monkeypatch)
        m = GPT(cfg, dtype="float32", device=device)
        callers.clear()
        m.loss_and_grads(idx, targets)
        m.logits(idx)
        assert callers == [], callers
    assert backend.get_backend("cuda") is m.backend and backend.backend_of(m.params["wte.weight"]) is m.backend
    two = backend.get_backend("cuda:1")
    assert two.index == 1 and two.device == "cuda:1" and two.xp is cp and two is not m.backend
    fake_cupy.DEVICES_USED.clear()
    on_one = GPT(cfg, dtype="float32", device="cuda:1")
    assert on_one.backend is two and fake_cupy.DEVICES_USED == [1]  # made current before the weights go up
