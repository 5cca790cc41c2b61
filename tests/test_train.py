"""The pre-training loop: parity with PyTorch, exact resume, atomic checkpoints, bad input, CLI."""
from __future__ import annotations

import dataclasses
import errno
import json
import struct
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gptlite.training import pretrain as T
from gptlite.data import Batches, TokenData

VOCAB = 96


def _data_dir(tmp_path, n=6000, vocab=VOCAB, seed=0):
    """A prepared-data directory of random tokens (with a little structure to learn)."""
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, vocab, size=n)
    keep = rng.random(n) < 0.2
    toks = np.empty(n, dtype="<u2")
    toks[0] = 1
    for i in range(1, n):  # a Markov chain: mostly t -> (7t + 3) mod V, sometimes a random token
        toks[i] = noise[i] if keep[i] else (int(toks[i - 1]) * 7 + 3) % vocab
    cut = int(n * 0.9)
    (d / "train.bin").write_bytes(toks[:cut].tobytes())
    (d / "val.bin").write_bytes(toks[cut:].tobytes())
    (d / "tokenizer").mkdir(exist_ok=True)
    (d / "meta.json").write_text(json.dumps({
        "format": "gptlite-tokens", "version": 1, "dtype": "uint16", "n_vocab": vocab, "eot_token": 0,
        "tokenizer": {"dir": "tokenizer"},
        "splits": {"train": {"file": "train.bin", "tokens": cut, "documents": 1},
                   "val": {"file": "val.bin", "tokens": n - cut, "documents": 1}}}))
    return d


def _cfg(tmp_path, **kw) -> T.TrainConfig:
    base = dict(out_dir=str(tmp_path / "run"), data_dir=str(_data_dir(tmp_path)), n_layer=2, n_head=2, n_embd=32,
                n_positions=32, batch_size=2, block_size=16, batch_tokens=64, max_steps=8, eval_interval=4,
                eval_batches=2, log_interval=1, ckpt_interval=100, lr=3e-3, min_lr=3e-4, warmup_steps=2,
                progress=False, seed=5)
    base.update(kw)
    return T.TrainConfig(**base)


def _params_np(trainer):
    from gptlite.engine.backend import to_numpy

    return {k: to_numpy(v).copy() for k, v in trainer.model.params.items()}


# --- parity with PyTorch ----------------------------------------------------------------
def test_ten_adamw_steps_match_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ref = transformers.GPT2LMHeadModel(hf_cfg).float()
    init_dir = tmp_path / "init"
    ref.save_pretrained(init_dir, safe_serialization=True)
    cfg = _cfg(tmp_path, init_from=str(init_dir), max_steps=10, eval_batches=0, grad_clip=0.5,
               weight_decay=0.1, lr=1e-2, min_lr=1e-3, warmup_steps=3)
    tr = T.Trainer(cfg, log=lambda m: None)
    ours = tr.run()["losses"]

    decay = [p for n, p in ref.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in ref.named_parameters() if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    # the reference's schedule written out here, not gptlite's Schedule: linear
    # warmup to the peak over 3 steps, then cosine to min_lr at max_steps
    def sched(step):
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + np.cos(np.pi * frac))

    assert [sched(i) for i in range(10)] == pytest.approx([tr.schedule(i) for i in range(10)], rel=1e-12)
    batches = Batches(TokenData(cfg.data_dir, "train"), cfg.batch_size, cfg.block_size, seed=cfg.seed)
    ref.train()
    theirs = []
    for step in range(cfg.max_steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.grad_accum):
            x, y = batches.next()
            logits = ref(torch.tensor(x)).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), torch.tensor(y).reshape(-1))
            (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
        torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.grad_clip)
        for g in opt.param_groups:
            g["lr"] = sched(step)
        opt.step()
        theirs.append(total)
    assert cfg.grad_accum == 2
    assert len(ours) == 10
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    assert theirs[-1] < theirs[0] - 0.1  # it actually trained
    sd = {k.removeprefix("transformer."): v.detach().numpy() for k, v in ref.state_dict().items()}
    for k, v in _params_np(tr).items():
        np.testing.assert_allclose(v, sd[k], atol=2e-4, err_msg=k)


# --- exact resume -------------------------------------------------------------------------
def test_resume_is_bit_identical(tmp_path):
    straight = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "a")), log=lambda m: None)
    full = straight.run()["losses"]
    first = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "b")), log=lambda m: None)
    part1 = first.run(steps=4)["losses"]
    second = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "b")), resume=True, log=lambda m: None)
    assert second.step == 4 and second.batches.position == 4 * 2
    part2 = second.run()["losses"]
    assert full == part1 + part2  # bit-identical floats
    pa, pb = _params_np(straight), _params_np(second)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    ma = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("loss"), r.get("val_loss")) for r in ma] == [(r["step"], r.get("loss"), r.get("val_loss")) for r in mb]
    # the checkpoint is a model directory the loader reads, with the tokenizer-free data we used
    from gptlite.engine.checkpoint import load_model

    m = load_model(tmp_path / "a" / "ckpt")
    assert np.array_equal(m.params["wte.weight"], pa["wte.weight"])


def test_ctrl_c_saves_and_resumes_exactly(tmp_path):
    full = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "a")), log=lambda m: None).run()["losses"]
    tr = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "b")), log=lambda m: None)
    real_step = tr.train_step

    def step_then_sigint():
        out = real_step()
        if tr.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler defers it to the step boundary
        return out

    tr.train_step = step_then_sigint
    with pytest.raises(KeyboardInterrupt):
        tr.run()
    state = json.loads((tmp_path / "b" / "ckpt" / T.STATE).read_text())
    assert state["step"] == 3
    rest = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "b")), resume=True, log=lambda m: None).run()["losses"]
    assert full[3:] == rest


# --- checkpoint atomicity ------------------------------------------------------------------
KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, json
    from gptlite.training import pretrain as T
    from gptlite.engine import checkpoint
    cfg = T.TrainConfig(**json.loads(sys.argv[1]))
    tr = T.Trainer(cfg, resume=True, log=lambda m: None)
    tr.run(steps=1)                      # one more step, not yet saved
    where = sys.argv[2]
    if where == "mid-write":
        real = checkpoint.write_safetensors
        def half(path, tensors, metadata=None, dtype=None):
            with open(path, "wb") as f:
                f.write(b"\\x10\\x00\\x00")   # a few bytes of a header, then death
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.write_safetensors = half
    else:
        real = os.replace
        calls = []
        def replace(a, b):
            real(a, b)
            calls.append(b)
            if str(b).endswith("ckpt.old"):   # between the two renames of the swap
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace             # (the os module: the checkpoint store renames through it)
    tr.save()
""")


@pytest.mark.parametrize("where", ["mid-write", "mid-swap"])
def test_checkpoint_write_killed_leaves_previous_loadable(tmp_path, where):
    cfg = _cfg(tmp_path, eval_batches=0)
    tr = T.Trainer(cfg, log=lambda m: None)
    tr.run(steps=2)
    before = _params_np(tr)
    # the child resumes, trains one step (saves at the end of run()), then is killed in the next save
    res = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(dataclasses.asdict(cfg)), where], capture_output=True, text=True)
    assert res.returncode == -signal.SIGKILL, res.stderr
    ck = T.find_checkpoint(cfg.out_dir)
    assert ck is not None
    if where == "mid-swap":
        assert ck.name == "ckpt.old"
    state = json.loads((ck / T.STATE).read_text())
    assert state["step"] == 3  # the checkpoint from the child's completed run(), not the killed save
    again = T.Trainer(cfg, resume=True, log=lambda m: None)
    assert again.step == 3
    assert not all(np.array_equal(before[k], v) for k, v in _params_np(again).items())
    again.run(steps=1)
    assert not list((tmp_path / "run").glob(".*tmp*"))  # leftovers cleaned up by the next save
    assert T.find_checkpoint(cfg.out_dir).name == "ckpt"


def test_full_disk_keeps_previous(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, eval_batches=0)
    tr = T.Trainer(cfg, log=lambda m: None)
    tr.run(steps=2)
    from gptlite.engine import checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_safetensors", full)
    with pytest.raises(OSError, match="no space left on device.*previous checkpoint .*ckpt is kept"):
        tr.save()
    monkeypatch.undo()
    assert not list((tmp_path / "run").glob(".*tmp*"))
    assert json.loads((tmp_path / "run" / "ckpt" / T.STATE).read_text())["step"] == 2
    T.Trainer(cfg, resume=True, log=lambda m: None)  # still loadable


# --- non-finite steps ------------------------------------------------------------------------
def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    cfg = _cfg(tmp_path, max_bad_steps=3, ckpt_interval=2, eval_batches=0)
    tr = T.Trainer(cfg, log=lambda m: None)
    real = tr.model.loss_and_grads
    bad_from = {"step": 4}
    calls = {"n": 0}

    def maybe_nan(x, y, *a, **k):
        loss, grads = real(x, y, *a, **k)
        calls["n"] += 1
        if tr.step == 2:  # one poisoned step (its gradients), then recovery
            grads["wte.weight"][0, 0] = np.nan
        if tr.step >= bad_from["step"]:
            loss = float("nan")
        return loss, grads

    tr.model.loss_and_grads = maybe_nan
    with pytest.raises(T.TrainingError, match="3 consecutive steps with non-finite.*last good checkpoint: .*ckpt"):
        tr.run()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in recs if r.get("event") == "skipped_nonfinite"]
    assert skipped == [3, 5, 6, 7]
    assert tr.opt.t == 3  # updates at steps 1, 2, 4 only
    assert all(np.isfinite(v).all() for v in _params_np(tr).values())
    state = json.loads((tmp_path / "run" / "ckpt" / T.STATE).read_text())
    assert state["step"] == 4


# --- config --------------------------------------------------------------------------------
def test_config_errors(tmp_path):
    good = tmp_path / "c.toml"
    good.write_text('[run]\nout_dir = "x"\n[data]\ndata_dir = "d"\n[model]\nn_layer = 1\n[optim]\nlr = 1e-3\n')
    cfg = T.load_config(good, ["train.max_steps=7", "schedule=linear", "optim.grad_clip=0", "out_dir=y"])
    assert (cfg.max_steps, cfg.schedule, cfg.grad_clip, cfg.out_dir, cfg.model.n_layer) == (7, "linear", 0.0, "y", 1)
    cases = {
        '[model]\nn_layers = 2\n': "unknown key 'n_layers' in \\[model\\]",
        '[modle]\nn_layer = 2\n': "unknown section \\[modle\\]",
        '[train]\nbatch_size = "8"\n': "batch_size must be an integer",
        '[optim\nlr = 1\n': "invalid TOML",
    }
    for text, msg in cases.items():
        p = tmp_path / "bad.toml"
        p.write_text(text)
        with pytest.raises(ValueError, match=msg):
            T.load_config(p)
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        T.load_config(good, ["nope=1"])
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        T.load_config(tmp_path / "missing.toml")
    impossible = {
        "block_size": (64, "block_size=64 is longer than the model's n_positions=32"),
        "batch_tokens": (100, "batch_tokens=100 is not a multiple of batch_size\\*block_size=32"),
        "n_head": (3, "n_embd=32 is not divisible by n_head=3"),
        "schedule": ("step", "schedule must be one of"),
        "min_lr": (1.0, "min_lr must be in"),
    }
    for key, (value, msg) in impossible.items():
        with pytest.raises(ValueError, match=msg):
            _cfg(tmp_path, **{key: value}).validate()


def test_resume_errors(tmp_path):
    cfg = _cfg(tmp_path, eval_batches=0)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        T.Trainer(cfg, resume=True)
    T.Trainer(cfg, log=lambda m: None).run(steps=1)
    with pytest.raises(ValueError, match="already holds a training run: pass --resume .* --overwrite"):
        T.Trainer(cfg)
    with pytest.raises(ValueError, match="has n_embd=32 but the config asks for n_embd=64"):
        T.Trainer(_cfg(tmp_path, eval_batches=0, n_embd=64), resume=True)
    with pytest.raises(FileNotFoundError, match="gptlite prepare"):
        T.Trainer(_cfg(tmp_path, data_dir=str(tmp_path / "nowhere")))


def test_model_config_is_the_engines_gptconfig_nested(tmp_path):
    import dataclasses as dc

    from gptlite.engine.model import GPTConfig

    cfg = T.TrainConfig()
    assert isinstance(cfg.model, GPTConfig)
    # every GPTConfig field is a [model] key, today's and any added later
    assert set(T.SECTIONS["model"]) == {f.name for f in dc.fields(GPTConfig)}
    p = tmp_path / "c.toml"
    p.write_text('[data]\ndata_dir = "d"\n[model]\nn_layer = 1\nactivation_function = "gelu"\nlayer_norm_epsilon = 1e-6\n'
                 'n_inner = 48\n')
    cfg = T.load_config(p, ["model.n_embd=16", "n_head=2", "model.n_positions=32", "train.block_size=16"])
    m = cfg.model
    assert (m.n_layer, m.n_embd, m.n_head, m.activation_function, m.layer_norm_epsilon, m.n_inner) == (1, 16, 2, "gelu", 1e-6, 48)
    cfg.validate()
    # the nested config round-trips through asdict (train_config.json, trainer_state.json) and flat keys are shorthand
    assert T.TrainConfig(**dc.asdict(cfg)) == cfg
    assert T.TrainConfig(n_layer=3, n_inner=0) == T.TrainConfig(model=T.ModelConfig(n_layer=3))
    assert T.TrainConfig().model.n_inner is None  # 0 in TOML: 4 * n_embd, GPTConfig's None
    resolved = T.TrainConfig(vocab_size=0).model.resolve(96)
    assert type(resolved) is GPTConfig and resolved.vocab_size == 96 and resolved.d_ff == 4 * 256
    # the shipped presets read as before
    tiny = T.load_config("tiny")
    assert (tiny.model.n_layer, tiny.model.n_head, tiny.model.n_embd, tiny.model.n_positions, tiny.model.vocab_size,
            tiny.batch_tokens) == (2, 2, 32, 64, 0, 256)
    for name in T.presets():
        T.load_config(name)
    # model errors are one-line config errors, raised by validate(), not while the file is read
    bad = {"activation_function": ("'relu'", "activation_function must be one of"),
           "layer_norm_epsilon": ("-1.0", "config: layer_norm_epsilon must be a finite number > 0"),
           "n_layer": ("0", "config: n_layer must be >= 1, got 0"),
           "vocab_size": ("-1", "config: vocab_size must be >= 0, got -1"),
           "layout": ("'gpt3'", "config: layout must be gpt2 or gpt1")}
    for key, (value, msg) in bad.items():
        c = T.apply_overrides(cfg, [f"model.{key}={value}"])
        with pytest.raises(ValueError, match=msg) as e:
            c.validate()
        assert "\n" not in str(e.value) and str(e.value).startswith("config: ")
    with pytest.raises(ValueError, match="layer_norm_epsilon must be a number"):
        T.apply_overrides(cfg, ["model.layer_norm_epsilon=big"])


def test_activation_and_epsilon_reach_the_model(tmp_path):
    cfg = _cfg(tmp_path, eval_batches=0, max_steps=2, activation_function="gelu", layer_norm_epsilon=1e-3, n_inner=48)
    tr = T.Trainer(cfg, log=lambda m: None)
    mc = tr.model.config
    assert (mc.activation_function, mc.layer_norm_epsilon, mc.d_ff, mc.vocab_size) == ("gelu", 1e-3, 48, VOCAB)
    tr.run()
    saved = json.loads((tmp_path / "run" / "ckpt" / "config.json").read_text())
    assert (saved["activation_function"], saved["layer_norm_epsilon"], saved["n_inner"]) == ("gelu", 1e-3, 48)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["model"]["activation_function"] == "gelu"
    # resuming or continuing a model with another activation is refused, naming the field
    with pytest.raises(ValueError, match="has activation_function='gelu' but the config asks for activation_function='gelu_new'"):
        T.Trainer(_cfg(tmp_path, eval_batches=0, max_steps=4, n_inner=48, layer_norm_epsilon=1e-3), resume=True,
                  log=lambda m: None)
    with pytest.raises(ValueError, match="init_from model .* has layer_norm_epsilon=0.001 but the config asks for layer_norm_epsilon=1e-05"):
        T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "b"), init_from=str(tmp_path / "run" / "ckpt"),
                       activation_function="gelu", n_inner=48), log=lambda m: None)
    # the field is used, not only stored: the same run with the default activation ends elsewhere
    # (at a fresh init the two GELUs differ by ~1e-6 in the loss: compare the weights)
    def weights(name, **kw):
        tr = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / name), eval_batches=0, max_steps=2, n_inner=48, **kw),
                       log=lambda m: None)
        tr.run()
        return _params_np(tr)["h.0.mlp.c_fc.weight"]

    assert not np.array_equal(weights("c1", activation_function="gelu"), weights("c2"))
    assert np.array_equal(weights("c3", activation_function="gelu"), weights("c4", activation_function="gelu"))


def test_checkpoint_with_the_old_flat_config_resumes(tmp_path):
    """Checkpoints written before the model config was nested (flat n_layer ... in
    trainer_state.json's config, optimizer.safetensors as before) resume exactly."""
    full = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "a")), log=lambda m: None).run()["losses"]
    T.Trainer(_cfg(tmp_path), log=lambda m: None).run(steps=4)
    st_path = tmp_path / "run" / "ckpt" / T.STATE
    st = json.loads(st_path.read_text())
    flat = {k: v for k, v in st["config"].items() if k != "model"}
    flat.update({k: st["config"]["model"][k] for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "layout")})
    flat["n_inner"] = 0
    st_path.write_text(json.dumps({**st, "config": flat}))
    (tmp_path / "run" / "train_config.json").write_text(json.dumps({**flat, "world_size": 1}))
    rest = T.Trainer(_cfg(tmp_path), resume=True, log=lambda m: None).run()["losses"]
    assert full[4:] == rest


# --- CLI end to end ------------------------------------------------------------------------
def test_cli_prepare_train_resume_plot(tmp_path, corpora_dir, gpt2_dir, capsys):
    from gptlite.cli import main

    src = tmp_path / "shakes.txt"
    src.write_text((corpora_dir / "tinyshakespeare.txt").read_text()[:30000])
    assert main(["prepare", str(src), "-o", str(tmp_path / "tok"), "--tokenizer", str(gpt2_dir)]) == 0
    assert "train" in capsys.readouterr().out
    conf = tmp_path / "tiny.toml"
    conf.write_text(textwrap.dedent(f"""
        [run]
        out_dir = "{tmp_path / 'run'}"
        [data]
        data_dir = "{tmp_path / 'tok'}"
        [model]
        n_layer = 1
        n_head = 2
        n_embd = 16
        n_positions = 32
        [train]
        batch_size = 2
        block_size = 16
        max_steps = 6
        eval_interval = 3
        eval_batches = 1
        log_interval = 1
        progress = false
        [optim]
        lr = 1e-2
        warmup_steps = 1
        min_lr = 1e-3
    """))
    assert main(["train", "--config", str(conf), "--steps", "3"]) == 0
    assert main(["train", "--config", str(conf)]) == 2  # refuses to overwrite without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--config", str(conf), "--resume"]) == 0
    assert "step 6" in capsys.readouterr().out
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens_per_s"] > 0 for r in recs if "loss" in r)
    assert main(["plot", str(tmp_path / "run")]) == 0
    png = (tmp_path / "run" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert 600 <= w <= 2000 and 300 <= h <= 1200, (w, h)
    assert main(["train", "--config", str(conf), "--set", "model.n_positions=8", "--resume"]) == 2
    assert "block_size=16 is longer" in capsys.readouterr().err
    from gptlite.engine.checkpoint import load_model

    load_model(tmp_path / "run" / "ckpt")
    assert (tmp_path / "run" / "ckpt" / "encoder.json").exists()
    capsys.readouterr()
    assert main(["val-loss", "--model", str(tmp_path / "run" / "ckpt"), "--data", str(tmp_path / "tok")]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["tokens"] > 0 and rep["bytes"] > rep["tokens"]
    assert rep["bits_per_byte"] == pytest.approx(rep["loss_nats_per_token"] * rep["tokens"] / (np.log(2) * rep["bytes"]))
    assert main(["export", str(tmp_path / "run" / "ckpt"), str(tmp_path / "exported")]) == 0
    m16 = load_model(tmp_path / "exported")
    m32 = load_model(tmp_path / "run" / "ckpt")
    np.testing.assert_allclose(m16.params["wte.weight"], m32.params["wte.weight"], rtol=1e-3, atol=1e-4)
    assert (tmp_path / "exported" / "model.safetensors").stat().st_size < 0.6 * (tmp_path / "run" / "ckpt" / "model.safetensors").stat().st_size


def test_evaluate_split_unigram_baseline(tmp_path):
    """The baseline is the training unigram cross-entropy on val targets; a trained model beats it."""
    cfg = _cfg(tmp_path, max_steps=30, eval_batches=0, log_interval=10)
    tr = T.Trainer(cfg, log=lambda m: None)
    before = T.evaluate_split(tr.model, cfg.data_dir, block_size=16)
    tr.run()
    rep = T.evaluate_split(tr.model, cfg.data_dir, block_size=16)
    train = np.fromfile(tmp_path / "data" / "train.bin", dtype="<u2").astype(np.int64)
    val = np.fromfile(tmp_path / "data" / "val.bin", dtype="<u2").astype(np.int64)
    n = (len(val) - 1) // 16 * 16
    p = (np.bincount(train, minlength=VOCAB) + 1.0) / (len(train) + VOCAB)
    assert rep["unigram_nats_per_token"] == pytest.approx(-np.log(p[val[1:n + 1]]).mean(), rel=1e-9)
    assert rep["tokens"] == n and rep["bytes"] is None  # no tokenizer files in this fake data dir
    assert before["loss_nats_per_token"] > rep["unigram_nats_per_token"] > rep["loss_nats_per_token"]


def test_metrics_flops_and_mfu(tmp_path):
    """metrics.jsonl: FLOP/s = tokens/s x (6N + 12 L C T), MFU = FLOP/s / peak_flops."""
    from gptlite.engine.model import GPT

    cfg = _cfg(tmp_path, peak_flops=1e9, max_steps=4, log_interval=2)
    tr = T.Trainer(cfg, log=lambda m: None)
    tr.run()
    n_no_wpe = GPT.num_parameters(tr.model, non_embedding=True)
    fpt = 6.0 * n_no_wpe + 12.0 * cfg.model.n_layer * cfg.model.n_embd * cfg.block_size
    assert tr.flops_per_token == fpt == tr.model.flops_per_token(cfg.block_size)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("tokens_per_s")]
    assert train_rows
    for r in train_rows:
        assert r["flops_per_s"] == pytest.approx(r["tokens_per_s"] * fpt, rel=1e-9)
        assert r["mfu"] == pytest.approx(r["flops_per_s"] / 1e9, rel=1e-9)
    no_peak = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "b"), max_steps=2, log_interval=1), log=lambda m: None)
    no_peak.run()
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert all(r.get("mfu") is None for r in rows if r.get("tokens_per_s"))


def test_progress_lines_with_eta(tmp_path, capsys):
    """progress=True: a line per logged step (not a terminal) with loss, lr, tokens/s and ETA."""
    T.Trainer(_cfg(tmp_path, progress=True, max_steps=4, log_interval=2), log=lambda m: None).run()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines][:2] == ["2/4", "4/4"]
    assert all("loss " in ln and "lr " in ln and "tok/s" in ln and "| ETA " in ln for ln in lines)
    assert lines[-1].endswith("| ETA 0m00s")  # nothing left after the last step (a log gets no bar drawing)


def test_plot_draws_loss_against_steps_and_tokens(tmp_path, monkeypatch):
    from gptlite.training import plot

    recs = [{"step": s, "loss": 5.0 - 0.1 * s, "tokens": 512 * s} for s in range(1, 11)]
    recs[4]["val_loss"], recs[9]["val_loss"] = 4.7, 4.2
    recs.append({"event": "resume", "step": 10})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    series = plot.loss_series(plot.read_metrics(tmp_path))
    fig = plot.loss_figure(series)
    by_steps, by_tokens = fig.axes
    assert by_steps.get_xlabel() == "optimizer step" and by_tokens.get_xlabel() == "tokens seen"
    assert by_steps.get_title() and by_tokens.get_title() and fig.get_suptitle()
    train_s, val_s = by_steps.lines
    assert list(train_s.get_xdata()) == list(range(1, 11))
    assert list(train_s.get_ydata()) == [r["loss"] for r in recs[:10]]
    assert list(val_s.get_xdata()) == [5, 10] and list(val_s.get_ydata()) == [4.7, 4.2]
    assert list(by_tokens.lines[0].get_xdata()) == [512 * s for s in range(1, 11)]
    out = plot.plot_run(tmp_path)
    assert out == tmp_path / "loss.png" and out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="no such directory"):
        plot.plot_run(tmp_path, tmp_path / "missing" / "x.png")
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'gptlite\[plot\]'"):
        plot.plot_run(tmp_path)
