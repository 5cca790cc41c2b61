"""Data parallelism: `mpiexec -n 2` runs of the real CLI against one process.

Each test launches MPI jobs as subprocesses with a timeout, so a hang fails
the test instead of stalling the suite.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gptlite.training import distributed as D
from gptlite.training import pretrain as T
from conftest import child_env
from test_train import _data_dir

ROOT = Path(__file__).resolve().parents[1]
# the mpich wheel puts mpiexec beside the interpreter, which may not be on PATH (an unactivated venv)
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(not (MPIEXEC and HAVE_MPI4PY), reason="needs mpiexec and mpi4py (pip install 'gptlite[mpi]')")


def _env():
    env = child_env()
    for var in D._SIZE_VARS + D._LAUNCHED_VARS + ("PMI_PORT",):  # a nested launch must not inherit ours
        env.pop(var, None)
    return env


def _run(n, args, timeout=240, script=None):
    """`python -m gptlite ARGS` (or a script) under `mpiexec -n n`, or plainly for n=0."""
    prog = [sys.executable, script] if script else [sys.executable, "-m", "gptlite"]
    cmd = ([MPIEXEC, "-n", str(n)] if n else []) + prog + [str(a) for a in args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _config(tmp_path, name, **over) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        _data_dir(tmp_path)
    train = dict(batch_size=2, block_size=16, batch_tokens=128, max_steps=20, eval_interval=10, eval_batches=3,
                 log_interval=1, ckpt_interval=100, progress=False)
    train.update(over)
    body = textwrap.dedent(f"""
        [run]
        out_dir = "{tmp_path / name}"
        device = "cpu"
        seed = 5
        [data]
        data_dir = "{data}"
        [model]
        n_layer = 2
        n_head = 2
        n_embd = 32
        n_positions = 32
        [optim]
        lr = 3e-3
        min_lr = 3e-4
        warmup_steps = 2
        """) + "[train]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in train.items())
    p = tmp_path / f"{name}.toml"
    p.write_text(body)
    return p


def _losses(run_dir: Path) -> dict:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k in ("loss", "val_loss"):
            if k in r:
                out[(r["step"], k)] = r[k]
    return out


def _close(a: dict, b: dict, rel=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) <= rel * abs(b[k]), (k, a[k], b[k])


def _ok(r):
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


# --- in-process pieces ------------------------------------------------------------
def test_single_process_world_does_not_import_mpi(monkeypatch):
    code = ("import sys; from gptlite.training import distributed as D; w = D.world(); "
            "print(w.size, w.rank, 'mpi4py' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["1", "0", "False"], r.stderr


def test_launched_size_from_the_environment(monkeypatch):
    for var in D._SIZE_VARS + D._LAUNCHED_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")  # a batch script's own process is not a launched rank
    assert D.launched_size() == 1
    monkeypatch.setenv("PMIX_RANK", "0")
    assert D.launched_size() == 0
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "8")
    assert D.launched_size() == 8


def test_launched_without_mpi4py_is_an_error_not_n_separate_runs(monkeypatch):
    monkeypatch.setattr(D, "_WORLD", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(RuntimeError, match="MPI launcher with 2 processes, but mpi4py is not installed"):
        D.world()


def test_shard_covers_every_item_once():
    for n in range(0, 9):
        for size in range(1, 5):
            parts = [D.shard(n, type("W", (), {"rank": r, "size": size})()) for r in range(size)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_threads_per_rank():
    w = type("W", (), {"local_size": 2})()
    assert D.threads_per_rank(w, affinity=16, cpus=16) == 8  # unbound: cores shared out
    assert D.threads_per_rank(w, affinity=4, cpus=16) == 4  # bound by the launcher: its own set
    assert D.threads_per_rank(type("W", (), {"local_size": 4})(), affinity=2, cpus=2) == 1


def test_flat_grads_are_views_and_accumulate_like_before():
    from gptlite.training import optim

    rng = np.random.default_rng(0)
    params = {"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32)}
    flat = D.FlatGrads(params)
    g1 = {k: rng.normal(size=p.shape).astype(np.float32) for k, p in params.items()}
    g2 = {k: rng.normal(size=p.shape).astype(np.float32) for k, p in params.items()}
    views = flat.zero()
    flat.add(g1, 0.5)
    flat.add(g2, 0.5)
    want = optim.accumulate(optim.accumulate(None, g1, 0.5), g2, 0.5)
    for k in params:
        assert np.array_equal(views[k], want[k])
        assert np.shares_memory(views[k], flat.buf)
    assert flat.buf.shape == (17,) and flat.buf.flags.c_contiguous
    with pytest.raises(ValueError, match="'b' has shape"):
        flat.add({"a": g1["a"], "b": np.zeros(4, np.float32)}, 1.0)


def test_world_size_not_dividing_accumulation_is_a_config_error(tmp_path, monkeypatch):
    fake = D.World()
    fake.size = 3
    monkeypatch.setattr(D, "_WORLD", fake)
    cfg = T.TrainConfig(out_dir=str(tmp_path / "run"), data_dir=str(_data_dir(tmp_path)), n_layer=1, n_head=2,
                        n_embd=16, n_positions=16, batch_size=2, block_size=16, batch_tokens=128, progress=False)
    with pytest.raises(ValueError, match=r"world size 3 does not divide the 4 gradient-accumulation"):
        T.Trainer(cfg)


def test_nccl_path_on_fake_cupy_one_rank(monkeypatch):
    """The NCCL code path (id, communicator, allReduce on the flat buffer's pointer) with one rank,
    on the NumPy stand-in for CuPy; a real GPU run is recorded in docs/benchmarks.md when one is lent."""
    import fake_cupy

    cp = fake_cupy.install(monkeypatch)
    w = D.World()
    params = {"a": cp.asarray(np.ones((2, 3), np.float32)), "b": cp.asarray(np.ones(4, np.float32))}
    flat = D.FlatGrads(params)
    flat.zero()
    flat.add({k: v * 2 for k, v in params.items()}, 0.5)
    assert w.use_gpu() == 0
    w.nccl().allreduce_sum(flat.buf)  # one rank: the sum is the buffer itself
    assert isinstance(flat.buf, fake_cupy.DeviceArray)
    assert np.array_equal(np.asarray(flat.buf), np.ones(10, np.float32))
    assert cp.cuda.nccl.calls == [(10, "float32", "sum")]
    with pytest.raises(ValueError, match="unsupported dtype"):
        w.nccl().allreduce_sum(cp.asarray(np.ones(3, np.int32)))


# --- under mpiexec -------------------------------------------------------------------
@needs_mpi
def test_two_ranks_match_one_process_and_resume_across_world_sizes(tmp_path):
    cfg1, cfg2 = _config(tmp_path, "one"), _config(tmp_path, "two")
    _ok(_run(0, ["train", "--config", cfg1]))
    r2 = _ok(_run(2, ["train", "--config", cfg2]))
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len([k for k in one if k[1] == "loss"]) == 20
    _close(two, one)
    assert json.loads((tmp_path / "two" / "train_config.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "one" / "train_config.json").read_text())["world_size"] == 1
    assert r2.stdout.count("checkpoint") == 1  # rank 0 reports; rank 1 is quiet
    # 2 -> 1 and 1 -> 2 processes halfway
    for first, then, name in ((2, 0, "a"), (0, 2, "b")):
        cfg = _config(tmp_path, name)
        _ok(_run(first, ["train", "--config", cfg, "--steps", "10"]))
        _ok(_run(then, ["train", "--config", cfg, "--resume"]))
        _close(_losses(tmp_path / name), one)
        assert json.loads((tmp_path / name / "train_config.json").read_text())["world_size"] == (then or 1)


@needs_mpi
def test_one_micro_batch_per_rank_is_bit_identical(tmp_path):
    """Two micro-batches on two ranks: each sum is of two numbers, whose float result does not
    depend on the order, so losses, eval losses and weights equal one process's exactly."""
    cfg1 = _config(tmp_path, "one", batch_tokens=64, eval_batches=2)
    cfg2 = _config(tmp_path, "two", batch_tokens=64, eval_batches=2)
    _ok(_run(0, ["train", "--config", cfg1]))
    _ok(_run(2, ["train", "--config", cfg2]))
    assert _losses(tmp_path / "one") == _losses(tmp_path / "two")
    a = (tmp_path / "one" / "ckpt" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "two" / "ckpt" / "model.safetensors").read_bytes()


@needs_mpi
def test_world_size_not_dividing_accumulation_under_mpiexec(tmp_path):
    cfg = _config(tmp_path, "odd", batch_tokens=96)  # 3 micro-batches of 2 x 16
    t0 = time.monotonic()
    r = _run(2, ["train", "--config", cfg], timeout=120)
    assert r.returncode != 0
    assert "world size 2 does not divide the 3 gradient-accumulation" in r.stderr
    assert not (tmp_path / "odd" / "ckpt").exists()
    assert time.monotonic() - t0 < 120


@needs_mpi
def test_raising_rank_aborts_the_job_with_its_error(tmp_path):
    cfg = _config(tmp_path, "boom", max_steps=200)
    script = tmp_path / "boom.py"
    script.write_text(textwrap.dedent("""
        import sys
        from gptlite.engine.model import GPT
        from gptlite.training import distributed
        from gptlite.cli import main

        calls = [0]
        orig = GPT.loss_and_grads
        def failing(self, *a, **k):
            calls[0] += 1
            if distributed.world().rank == 1 and calls[0] == 7:
                raise MemoryError("simulated out of memory on rank 1")
            return orig(self, *a, **k)
        GPT.loss_and_grads = failing
        sys.exit(main(sys.argv[1:]))
        """))
    r = _run(2, ["train", "--config", cfg], script=str(script), timeout=120)
    assert r.returncode != 0
    assert "rank 1/2 failed: MemoryError: simulated out of memory on rank 1" in r.stderr
    assert "MPI_Abort" in r.stderr or "aborting all 2 processes" in r.stderr


def _wait_for_steps(path: Path, n: int, proc, limit=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if path.exists() and sum(1 for x in path.read_text().splitlines() if '"loss"' in x) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended early: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError("no progress")


@needs_mpi
def test_killed_rank_ends_the_job(tmp_path):
    cfg = _config(tmp_path, "kill", max_steps=100000)
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "gptlite", "train", "--config", str(cfg)],
                            env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_steps(tmp_path / "kill" / "metrics.jsonl", 3, proc)
        victim = None
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"PMI_RANK=1" in env and str(cfg).encode() in cmd:
                victim = int(pid)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)  # a hang fails here
        assert proc.returncode != 0
        report = out + err
        # Two honest endings race: the launcher reports the dead rank, or rank 0's collective
        # fails first (the peer it reads from is gone) and MPICH aborts the job. Either way
        # the job ends, non-zero, saying why — never a hang or a silent exit.
        launcher_saw_it = "BAD TERMINATION" in report and "signal 9" in report
        survivor_saw_it = "Abort(" in report and "Fatal error in" in report
        assert launcher_saw_it or survivor_saw_it, report
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@needs_mpi
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_launcher_stops_all_ranks_with_a_checkpoint(tmp_path, sig):
    cfg = _config(tmp_path, "term", max_steps=100000, ckpt_interval=100000)
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "gptlite", "train", "--config", str(cfg)],
                            env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_steps(tmp_path / "term" / "metrics.jsonl", 3, proc)
        proc.send_signal(sig)  # mpiexec forwards it to every rank
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    state = json.loads((tmp_path / "term" / "ckpt" / "trainer_state.json").read_text())
    logged = max(k[0] for k in _losses(tmp_path / "term"))
    assert 3 <= state["step"] == logged, (state["step"], logged, err)
    assert f"interrupted ({signal.Signals(sig).name}): checkpoint saved" in err


@needs_mpi
def test_tokenizer_counts_sharded_over_ranks_give_the_same_tokenizer(tmp_path, corpora_dir):
    files = [corpora_dir / "tinyshakespeare.txt", corpora_dir / "big.txt"] + sorted((corpora_dir / "lipsum").glob("*.txt"))[:3]
    args = ["tokenizer", "train", *files, "--vocab-size", "600", "--quiet", "--format", "gpt2", "--format", "hf"]
    _ok(_run(0, args + ["--out", tmp_path / "one"]))
    r = _ok(_run(2, args + ["--out", tmp_path / "two"]))
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and "vocab.bpe" in names
    for n in names:
        assert (tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes(), n
    assert r.stdout.count("trained") == 1


@needs_mpi
def test_finetune_two_ranks_match_one_process(tmp_path, gpt2_dir):
    from gptlite.engine.checkpoint import save_model
    from gptlite.engine.model import GPT, GPTConfig

    tok_dir = gpt2_dir
    model = GPT(GPTConfig(vocab_size=50257, n_positions=32, n_embd=16, n_layer=1, n_head=2), seed=3)
    save_model(model, tmp_path / "base")
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(tok_dir / f, tmp_path / "base" / f)
    rng = np.random.default_rng(0)
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    with open(tmp_path / "train.jsonl", "w") as f:
        for _ in range(21):  # batches of 4: the last holds 1 example, so one rank gets none
            w = [words[i] for i in rng.integers(0, 6, size=4)]
            f.write(json.dumps({"text": " ".join(w), "label": "pos" if w.count("good") > w.count("bad") else "neg"}) + "\n")
    res = {}
    for n, name in ((0, "one"), (2, "two")):
        args = ["finetune", "--task", "classification", "--model", tmp_path / "base", "--train", tmp_path / "train.jsonl",
                "--valid", tmp_path / "train.jsonl", "--out", tmp_path / name, "--epochs", "2", "--batch-size", "4",
                "--lr", "1e-3", "--device", "cpu", "--json"]
        r = _ok(_run(n, args))
        lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
        assert len(lines) == 1  # rank 0 reports
        res[name] = json.loads(lines[0])["history"]
    def same(got, want):
        assert len(got) == len(want) == 2
        for a, b in zip(got, want):
            for k in ("train_loss", "train_task_loss", "train_lm_loss"):
                assert abs(a[k] - b[k]) <= 1e-5 * abs(b[k]), (k, a[k], b[k])
            assert a["valid_accuracy"] == b["valid_accuracy"]

    same(res["two"], res["one"])
    # Ctrl-C reaching rank 1 only, inside step 3: the ranks agree in step 4's reduction, stop
    # together, rank 0 saves mid-epoch; one process then resumes the 2-rank run
    script = tmp_path / "interrupt.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys
        from gptlite.tasks import finetune
        from gptlite.training import distributed
        from gptlite.cli import main

        calls = [0]
        orig = finetune.loss_and_grads
        def interrupting(*a, **k):
            calls[0] += 1
            if distributed.world().rank == 1 and calls[0] == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return orig(*a, **k)
        finetune.loss_and_grads = interrupting
        sys.exit(main(sys.argv[1:]))
        """))
    args[args.index("--out") + 1] = tmp_path / "cut"
    r = _run(2, args, script=str(script))
    assert r.returncode == 130 and r.stderr.count("gptlite: interrupted") == 2, r.stderr  # both ranks stopped
    saved = json.loads((tmp_path / "cut" / "finetune.json").read_text())["resume"]
    assert (saved["epoch"], saved["step"], saved["pos"]) == (0, 4, 16)
    r = _ok(_run(0, args + ["--resume"]))
    same(json.loads([x for x in r.stdout.splitlines() if x.startswith("{")][0])["history"], res["one"])


def test_flat_adamw_is_bit_identical_to_per_tensor_and_round_trips_state():
    from gptlite.engine.model import GPT, GPTConfig
    from gptlite.training import optim

    cfg = GPTConfig(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    a, b = GPT(cfg, seed=1), GPT(cfg, seed=1)
    flat = D.FlatGrads(b.params)
    pbuf = flat.adopt_params(b.params)
    assert all(np.shares_memory(v, pbuf) for v in b.params.values())
    assert flat.n_decay == sum(v.size for v in b.params.values() if v.ndim == 2)
    oa = optim.AdamW(a.params, optim.AdamWConfig(lr=1e-2, weight_decay=0.1))
    ob = optim.AdamW(b.params, optim.AdamWConfig(lr=1e-2, weight_decay=0.1))
    ob.use_flat(flat)
    rng = np.random.default_rng(0)
    for step in range(3):
        x = rng.integers(0, 64, size=(2, 16))
        y = rng.integers(0, 64, size=(2, 16))
        _, ga = a.loss_and_grads(x, y)
        _, gb = b.loss_and_grads(x, y)
        flat.zero()
        flat.add(gb, 1.0)
        oa.step(ga, 1e-2)
        ob.step(flat.views, 1e-2)
        for k in a.params:
            assert np.array_equal(a.params[k], b.params[k]), (step, k)
    sd = ob.state_dict()
    for k in a.params:
        assert np.array_equal(sd["tensors"][f"m.{k}"], oa.state_dict()["tensors"][f"m.{k}"])
    c = GPT(cfg, seed=1)
    fc = D.FlatGrads(c.params)
    fc.adopt_params(c.params)
    oc = optim.AdamW(c.params, optim.AdamWConfig(lr=1e-2, weight_decay=0.1))
    oc.use_flat(fc)
    oc.load_state_dict(sd)
    assert np.shares_memory(oc.m["wte.weight"], oc._flat[2]) and np.array_equal(oc._flat[3][: fc.size], ob._flat[3])
    with pytest.raises(ValueError, match="not views of the layout"):
        optim.AdamW(a.params).use_flat(flat)


def test_nccl_missing_library_is_a_clear_error(monkeypatch):
    import types

    import fake_cupy

    cp = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(cp.cuda, "nccl", types.SimpleNamespace(available=False))
    with pytest.raises(RuntimeError, match="cannot load NCCL.*nvidia-nccl-cu12"):
        D.World().nccl()
