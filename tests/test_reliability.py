"""Fault injection and fuzzing: nothing lost, nothing crashes (issue 13).

Mutated vocabularies, safetensors headers and config.json are loaded in a
child process, so an abort (a Rust panic, a failed allocation) fails the test
instead of killing the test run; training is killed with SIGKILL and SIGTERM
at random points (checkpoint saves included) and must resume exactly; two
runs on one directory; a full disk where a small tmpfs can be mounted.
docs/reliability.md maps each guarantee to the test here that proves it.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlite.training import pretrain as T

sys.path.insert(0, str(Path(__file__).parent))
from conftest import child_env  # noqa: E402
from test_train import _cfg, _params_np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = child_env()
FUZZ = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# --- loading hostile files in a child process -------------------------------------------

LOADER = textwrap.dedent("""
    import json, sys
    kind, paths = sys.argv[1], json.loads(sys.argv[2])
    from gptlite.tokenizer.encoding import Tokenizer
    from gptlite.engine import checkpoint
    for p in paths:
        try:
            if kind == "tokenizer":
                Tokenizer.from_files(p).encode("hello world")
            elif kind == "safetensors":
                checkpoint.read_safetensors(p)
            else:
                checkpoint.load_params(p)
            print(json.dumps(["loaded", p, ""]))
        except (ValueError, OSError) as exc:
            print(json.dumps([type(exc).__name__, p, str(exc)]))
        except BaseException as exc:  # a bug: not an error a user can read and act on
            print(json.dumps(["BUG " + type(exc).__name__, p, str(exc)[:300]]))
""")


def _load_all(kind: str, paths: list) -> list:
    res = subprocess.run([sys.executable, "-c", LOADER, kind, json.dumps([str(p) for p in paths])],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 0, f"loader died (rc {res.returncode}): {res.stderr[-2000:]}"
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(out) == len(paths)
    for what, p, msg in out:
        assert not what.startswith("BUG"), f"{p}: {what}: {msg}"
        if what != "loaded":
            # the error names the file (for a model directory: the directory or a file in it)
            assert str(Path(p)) in msg or Path(p).name in msg, f"{what} without the file name: {msg}"
    return out


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op, pos, val in ops:
        if not b:
            break
        i = pos % len(b)
        if op == "flip":
            b[i] = val % 256
        elif op == "insert":
            b[i:i] = str(val).encode()
        elif op == "delete":
            del b[i:i + 1 + val % 64]
        elif op == "truncate":
            del b[i:]
    return bytes(b)


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]),
                               st.integers(0, 10**6), st.integers(0, 10**22)), min_size=1, max_size=4)


def _tiktoken_text(extra: list[tuple[bytes, int]]) -> str:
    rows = [(bytes([i]), i) for i in range(256)] + extra
    return "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in rows)


@FUZZ
@given(st.lists(MUTATIONS, min_size=4, max_size=8), st.lists(st.integers(0, 10**25), min_size=1, max_size=4))
def test_fuzzed_tiktoken_files_never_abort(tmp_path_factory, mutations, ranks):
    d = tmp_path_factory.mktemp("tk")
    base = _tiktoken_text([(b"ab", 256), (b"abc", 257), (b"  ", 258)]).encode()
    paths = []
    for k, ops in enumerate(mutations):
        p = d / f"m{k}.tiktoken"
        p.write_bytes(_mutate(base, ops))
        paths.append(p)
    for k, r in enumerate(ranks):  # an id far past the token count: ~2^32, 3e8 in a tiny file, 20 digits
        p = d / f"r{k}.tiktoken"
        p.write_text(_tiktoken_text([(b"ab", r)]))
        paths.append(p)
    out = _load_all("tokenizer", paths)
    for (what, p, msg), r in zip(out[len(mutations):], ranks):
        if r > 256 + (1 << 20):
            assert what == "ValueError", (r, what, msg)


def _gpt2_pair(d: Path):
    from gptlite.tokenizer.encoding import Tokenizer

    tok = Tokenizer.from_ranks({bytes([i]): i for i in range(256)} | {b"ab": 256, b" a": 257, b" ab": 258},
                               {"<|endoftext|>": 259})
    tok.save(d, format="gpt2")
    return (d / "encoder.json").read_bytes(), (d / "vocab.bpe").read_bytes()


@FUZZ
@given(st.lists(st.tuples(st.booleans(), MUTATIONS), min_size=4, max_size=8))
def test_fuzzed_gpt2_vocabularies_never_abort(tmp_path_factory, mutations):
    root = tmp_path_factory.mktemp("g2")
    enc, bpe = _gpt2_pair(root / "base")
    paths = []
    for k, (which, ops) in enumerate(mutations):
        d = root / f"m{k}"
        d.mkdir()
        (d / "encoder.json").write_bytes(_mutate(enc, ops) if which else enc)
        (d / "vocab.bpe").write_bytes(bpe if which else _mutate(bpe, ops))
        paths.append(d)
    _load_all("tokenizer", paths)


def test_truncated_vocab_bpe_is_an_error_naming_file_and_line(tmp_path, gpt2_dir):
    shutil.copy(gpt2_dir / "encoder.json", tmp_path)
    lines = (gpt2_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    (tmp_path / "vocab.bpe").write_text("\n".join(lines[:30000]), encoding="utf-8")
    [(what, _, msg)] = _load_all("tokenizer", [tmp_path])
    assert what == "ValueError"
    assert "encoder.json, line 1: token" in msg and "vocab.bpe truncated?" in msg


def test_huge_ids_from_the_api_are_value_errors():
    from gptlite.tokenizer.encoding import Tokenizer

    ranks = {bytes([i]): i for i in range(256)}
    for sp in (2**32 - 2, 300_000_000, 2**40, -1, 10**20):
        with pytest.raises(ValueError, match="out of range"):
            Tokenizer.from_ranks(ranks, {"<|x|>": sp})
    with pytest.raises(ValueError, match="out of range"):
        Tokenizer.from_ranks({**ranks, b"ab": 2**33})
    Tokenizer.from_ranks(ranks, {"<|x|>": 1000})  # a modest gap (as o200k_base has) is fine


def _tiny_model_dir(d: Path) -> Path:
    from gptlite.engine.checkpoint import save_model
    from gptlite.engine.model import GPT, GPTConfig

    save_model(GPT(GPTConfig(vocab_size=40, n_positions=8, n_embd=8, n_layer=1, n_head=2), seed=0), d)
    return d


@FUZZ
@given(st.lists(MUTATIONS, min_size=4, max_size=8))
def test_fuzzed_safetensors_headers_never_abort(tmp_path_factory, mutations):
    from gptlite.engine.checkpoint import WEIGHTS_NAME

    src = _tiny_model_dir(tmp_path_factory.mktemp("st")) / WEIGHTS_NAME
    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    paths = []
    for k, ops in enumerate(mutations):
        header = _mutate(data[8:8 + n], ops)
        p = src.parent / f"m{k}.safetensors"
        p.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + n:])
        paths.append(p)
    _load_all("safetensors", paths)


def test_hostile_safetensors_headers(tmp_path):
    def file(header: bytes, body: bytes = b"") -> Path:
        p = tmp_path / f"h{len(list(tmp_path.iterdir()))}.safetensors"
        p.write_bytes(len(header).to_bytes(8, "little") + header + body)
        return p

    deep = file(b"[" * 200_000 + b"]" * 200_000)
    huge = file(json.dumps({"w": {"dtype": "F32", "shape": [2**40, 2**40, 2**40], "data_offsets": [0, 0]}}).encode())
    out = _load_all("safetensors", [deep, huge])
    assert [w for w, _, _ in out] == ["ValueError", "ValueError"]
    assert "nested too deeply" in out[0][2] and "needs" in out[1][2]


CONFIG_VALUES = st.one_of(st.integers(-3, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                          st.none(), st.booleans(), st.lists(st.integers(), max_size=2))


@FUZZ
@given(st.lists(st.dictionaries(st.sampled_from(["vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                                                 "layer_norm_epsilon", "model_type", "activation_function"]),
                                CONFIG_VALUES, min_size=1, max_size=3), min_size=4, max_size=8))
def test_fuzzed_config_json_never_aborts(tmp_path_factory, edits):
    from gptlite.engine.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    root = tmp_path_factory.mktemp("cfg")
    base = _tiny_model_dir(root / "base")
    cfg = json.loads((base / CONFIG_NAME).read_text())
    paths = []
    for k, edit in enumerate(edits):
        d = root / f"m{k}"
        d.mkdir()
        os.link(base / WEIGHTS_NAME, d / WEIGHTS_NAME)
        (d / CONFIG_NAME).write_text(json.dumps({**cfg, **edit}))  # NaN / Infinity are what Python's json writes
        paths.append(d)
    for (what, p, msg), edit in zip(_load_all("model", paths), edits):
        eps = edit.get("layer_norm_epsilon", 1e-5)
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps > 0):
            assert what == "ValueError", (edit, what)  # never NaN logits from a model that "loaded"


@pytest.mark.parametrize("key,value,match", [
    ("layer_norm_epsilon", float("nan"), "layer_norm_epsilon must be a finite number > 0"),
    ("layer_norm_epsilon", -1e-5, "layer_norm_epsilon must be a finite number > 0"),
    ("layer_norm_epsilon", "x", "layer_norm_epsilon must be a number"),
    ("n_embd", 8.0, "n_embd must be an integer"),
])
def test_config_json_types_and_ranges(tmp_path, key, value, match):
    from gptlite.engine.checkpoint import CONFIG_NAME, load_params

    d = _tiny_model_dir(tmp_path)
    cfg = json.loads((d / CONFIG_NAME).read_text())
    cfg[key] = value
    (d / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match) as e:
        load_params(d)
    assert str(d / CONFIG_NAME) in str(e.value)


# --- trainer state, data shards ----------------------------------------------------------------

@pytest.mark.parametrize("field,value,match", [
    ("step", -5, "step must be >= 0"),
    ("step", "x", "step must be an integer"),
    ("adamw_t", 1.5, "adamw_t must be an integer"),
    ("adamw_t", 99, "adamw_t=99 is larger than step=2"),
    ("data", {"seed": 5}, "field 'data' must be"),
    ("data", [1, 2], "field 'data' must be"),
])
def test_corrupt_trainer_state_is_refused(tmp_path, field, value, match):
    cfg = _cfg(tmp_path, eval_batches=0)
    T.Trainer(cfg, log=lambda m: None).run(steps=2)
    p = Path(cfg.out_dir) / "ckpt" / T.STATE
    state = json.loads(p.read_text())
    state[field] = value
    p.write_text(json.dumps(state))
    with pytest.raises(T.TrainingError, match=match) as e:
        T.Trainer(cfg, resume=True, log=lambda m: None)
    assert str(p.parent) in str(e.value)


def test_out_of_vocabulary_id_in_a_shard_is_found_at_start(tmp_path):
    cfg = _cfg(tmp_path)
    train = Path(cfg.data_dir) / "train.bin"
    toks = np.fromfile(train, dtype="<u2")
    toks[-3] = 500  # late in the shard: a run would reach it only near its end
    toks.tofile(train)
    with pytest.raises(ValueError, match="train.bin: holds token id 500, outside the model's vocabulary of 96"):
        T.Trainer(cfg, log=lambda m: None)
    meta = json.loads((Path(cfg.data_dir) / "meta.json").read_text())
    meta["splits"]["train"]["max_id"] = 95  # what prepare recorded is trusted (no scan)
    (Path(cfg.data_dir) / "meta.json").write_text(json.dumps(meta))
    T.Trainer(cfg, log=lambda m: None)
    meta["splits"]["train"]["max_id"] = 96
    (Path(cfg.data_dir) / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds token id 96"):
        T.Trainer(cfg, log=lambda m: None)


def test_prepare_records_the_max_id(tmp_path, gpt2_dir):
    from gptlite.data import prepare

    src = tmp_path / "a.txt"
    src.write_text("hello world\n\nsecond document here\n\nand a third one\n", encoding="utf-8")
    meta = prepare([src], str(gpt2_dir), tmp_path / "p", val_fraction=0.0)
    ids = np.fromfile(tmp_path / "p" / "train.bin", dtype="<u2")
    assert meta["splits"]["train"]["max_id"] == int(ids.max())


def test_huge_vocab_size_is_a_one_line_error(tmp_path):
    cfg = _cfg(tmp_path, vocab_size=10**11)  # beyond any vocabulary: refused before allocating
    with pytest.raises(ValueError, match="vocab_size must be <= 16777216, got 100000000000"):
        T.Trainer(cfg, log=lambda m: None)
    cfg = _cfg(tmp_path, vocab_size=1 << 24, n_embd=1 << 15, n_head=1)  # allowed sizes, 2 TiB of weights
    with pytest.raises(T.TrainingError, match="not enough memory for a model with vocab_size=16777216"):
        T.Trainer(cfg, log=lambda m: None)


def test_ckpt_minutes_checkpoints_by_wall_time(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, eval_batches=0, ckpt_minutes=0.5)
    tr = T.Trainer(cfg, log=lambda m: None)
    clock = [0.0]
    monkeypatch.setattr(T.time, "monotonic", lambda: clock[0])
    saves = []
    real_save = tr.save

    def save():
        saves.append(tr.step)
        return real_save()

    tr.save = save
    real_step = tr.train_step

    def step():
        clock[0] += 11.0  # 11 s of "wall time" per step: 30 s pass during every third step
        return real_step()

    tr.train_step = step
    tr.run()
    assert saves == [3, 6, 8]  # by wall time, then the final one (ckpt_interval=100 never fires)
    with pytest.raises(ValueError, match="ckpt_minutes must be >= 0"):
        _cfg(tmp_path, ckpt_minutes=-1.0).validate()


# --- signals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_and_sigusr1_save_like_ctrl_c(tmp_path, sig):
    full = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "a")), log=lambda m: None).run()["losses"]
    logs = []
    tr = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "b")), log=logs.append)
    real_step = tr.train_step

    def step_then_signal():
        out = real_step()
        if tr.step == 3:
            os.kill(os.getpid(), sig)
        return out

    tr.train_step = step_then_signal
    from gptlite.runlock import Stopped

    with pytest.raises(Stopped) as e:
        tr.run()
    assert e.value.signum == sig
    assert any(f"interrupted ({signal.Signals(sig).name}): checkpoint saved at step 3" in m for m in logs)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    rest = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "b")), resume=True, log=lambda m: None).run()["losses"]
    assert full[3:] == rest


CHILD = textwrap.dedent("""
    import json, sys
    from gptlite.training import pretrain as T
    cfg = T.TrainConfig(**json.loads(sys.argv[1]))
    ck = T.find_checkpoint(cfg.out_dir) is not None  # none yet: a kill before the first save, start again
    tr = T.Trainer(cfg, resume=ck, overwrite=not ck, log=lambda m: print(m, file=sys.stderr))
    try:
        tr.run()
    except KeyboardInterrupt as exc:
        sys.exit(128 + getattr(exc, "signum", 2))
""")


def _metric_steps(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(x).get("step", 0) for x in lines if x.endswith("}")]
    return max(steps, default=0)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_at_random_points_resumes_exactly(tmp_path, sig):
    """A run checkpointing every step (so kills land inside saves too) is
    killed three times at random moments; each time the directory holds a
    loadable checkpoint, and the resumed run ends bit-identical to one that
    was never interrupted."""
    kw = dict(eval_batches=0, ckpt_interval=1, max_steps=24)
    straight = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "straight"), **kw), log=lambda m: None)
    straight.run()
    cfg = _cfg(tmp_path, **kw)
    out = Path(cfg.out_dir)
    rng = random.Random(1000 + sig)
    kills = 0
    for attempt in range(3):
        before = _metric_steps(out)
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(dataclasses.asdict(cfg))], env=ENV,
                                 stderr=subprocess.PIPE, text=True)
        target = before + rng.randint(1, 4)
        deadline = time.monotonic() + 60
        while _metric_steps(out) < target and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.03))  # somewhere in the next step or its checkpoint write
        child.send_signal(sig)
        _, err = child.communicate(timeout=60)
        if child.returncode == 0:
            break  # finished before the signal came
        kills += 1
        if sig == signal.SIGKILL:
            assert child.returncode == -signal.SIGKILL, err
        else:
            assert child.returncode == 128 + signal.SIGTERM, err
            assert "interrupted (SIGTERM): checkpoint saved at step" in err
        ck = T.find_checkpoint(out)
        assert ck is not None, err
        from gptlite.engine.checkpoint import load_model

        load_model(ck)  # loadable
        T.load_checkpoint_state(ck)
    assert kills >= 1
    again = T.Trainer(cfg, resume=T.find_checkpoint(out) is not None, log=lambda m: None)
    again.run()
    a, b = _params_np(straight), _params_np(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)


# --- concurrent runs -------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from gptlite.runlock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def _hold(path: Path):
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_two_runs_on_one_directory(tmp_path, capsys):
    from gptlite.cli import main
    from gptlite.runlock import RunLockedError

    cfg = _cfg(tmp_path, eval_batches=0)
    holder = _hold(Path(cfg.out_dir))
    out = Path(cfg.out_dir)
    out.mkdir()
    theirs = {"metrics.jsonl": '{"step": 1, "loss": 1.0}\n',  # the running holder's log and config
              "train_config.json": json.dumps({"data_dir": cfg.data_dir, "world_size": 1})}
    for name, text in theirs.items():
        (out / name).write_text(text)
    try:
        tr = T.Trainer(cfg, log=lambda m: None, overwrite=True)  # not even --overwrite gets past the lock
        with pytest.raises(RunLockedError, match=f"in use by another gptlite process \\(pid {holder.pid}"):
            tr.run()
        assert not (out / "ckpt").exists()
        assert {n: (out / n).read_text() for n in theirs} == theirs  # untouched by the refused run
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    tr.run(steps=2)
    # a run that started while the directory was empty must not overwrite a checkpoint written since
    late = T.Trainer(_cfg(tmp_path, eval_batches=0, out_dir=str(tmp_path / "r2")), log=lambda m: None)
    T.Trainer(_cfg(tmp_path, eval_batches=0, out_dir=str(tmp_path / "r2")), log=lambda m: None).run(steps=2)
    with pytest.raises(ValueError, match="r2 already holds a training run"):
        late.run()
    # nor may a --resume continue from a checkpoint that another run has replaced since it read it
    stale = T.Trainer(_cfg(tmp_path, eval_batches=0, out_dir=str(tmp_path / "r2")), resume=True, log=lambda m: None)
    T.Trainer(_cfg(tmp_path, eval_batches=0, out_dir=str(tmp_path / "r2")), resume=True, log=lambda m: None).run(steps=1)
    with pytest.raises(ValueError, match="another run saved a checkpoint since this one read it \\(step 2\\)"):
        stale.run()
    # tokenizer training: the same lock, one line from the CLI
    corpus = tmp_path / "c.txt"
    corpus.write_text("low lower lowest " * 50, encoding="utf-8")
    tok_out = tmp_path / "tok"
    holder = _hold(tok_out)
    try:
        rc = main(["tokenizer", "train", str(corpus), "--vocab-size", "270", "--out", str(tok_out), "--quiet"])
        assert rc == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and len(err.strip().splitlines()) == 1
        assert not tok_out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["tokenizer", "train", str(corpus), "--vocab-size", "270", "--out", str(tok_out), "--quiet"]) == 0


# --- fine-tuning never deletes what it did not create ----------------------------------------

@pytest.fixture(scope="module")
def ft_setup(tmp_path_factory):
    from gptlite.engine.model import GPT, GPTConfig
    from gptlite.tokenizer.encoding import Tokenizer

    tok = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, {"<|endoftext|>": 256})
    d = tmp_path_factory.mktemp("ftdata")
    rows = [{"text": "abc" * (1 + i % 3), "label": i % 2} for i in range(8)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return (lambda: GPT(GPTConfig(vocab_size=257, n_positions=16, n_embd=8, n_layer=1, n_head=2), seed=0)), tok, d / "train.jsonl"


def test_finetune_out_never_clobbers(tmp_path, ft_setup):
    from gptlite.runlock import OutDirError
    from gptlite.tasks import finetune as ft

    make, tok, train = ft_setup
    cfg = ft.FinetuneConfig(task="classification", epochs=1, batch_size=4, max_len=12)
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("precious")
    with pytest.raises(OutDirError, match="is not empty and is not a gptlite fine-tuned model.*notes.txt"):
        ft.finetune(make(), tok, train, config=cfg, out_dir=project, log=lambda m: None)
    with pytest.raises(OutDirError):  # not even with overwrite
        ft.finetune(make(), tok, train, config=cfg, out_dir=project, log=lambda m: None, overwrite=True)
    assert (project / "notes.txt").read_text() == "precious"
    out = tmp_path / "ft"
    ft.finetune(make(), tok, train, config=cfg, out_dir=out, log=lambda m: None)
    first = (out / ft.META_FILE).read_text()
    with pytest.raises(OutDirError, match="already holds a fine-tuned model: pass --resume .* --overwrite"):
        ft.finetune(make(), tok, train, config=cfg, out_dir=out, log=lambda m: None)
    assert (out / ft.META_FILE).read_text() == first
    (out / "notes.txt").write_text("mine")  # a user's file in the model directory
    ft.finetune(make(), tok, train, config=dataclasses_replace(cfg, epochs=2), out_dir=out, log=lambda m: None, overwrite=True)
    assert len(json.loads((out / ft.META_FILE).read_text())["history"]) == 2
    assert (out / "notes.txt").read_text() == "mine"  # carried into every new checkpoint


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_finetune_sigterm_saves_and_resumes(tmp_path, ft_setup):
    from gptlite.runlock import Stopped
    from gptlite.tasks import finetune as ft

    make, tok, train = ft_setup
    cfg = ft.FinetuneConfig(task="classification", epochs=2, batch_size=2, max_len=12)
    full = ft.finetune(make(), tok, train, config=cfg, out_dir=tmp_path / "a", log=lambda m: None)
    real = ft.loss_and_grads
    calls = []

    def then_sigterm(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    logs = []
    ft.loss_and_grads = then_sigterm
    try:
        with pytest.raises(Stopped):
            ft.finetune(make(), tok, train, config=cfg, out_dir=tmp_path / "b", log=logs.append)
    finally:
        ft.loss_and_grads = real
    assert any("interrupted (SIGTERM)" in m for m in logs)
    rest = ft.finetune(None, tok, train, config=cfg, out_dir=tmp_path / "b", log=lambda m: None, resume=True)
    assert [h["train_loss"] for h in rest.history] == [h["train_loss"] for h in full.history]


def test_finetune_ckpt_minutes_checkpoints_by_wall_time(tmp_path, ft_setup, monkeypatch):
    from gptlite.tasks import finetune as ft

    make, tok, train = ft_setup
    cfg = ft.FinetuneConfig(task="classification", epochs=2, batch_size=2, max_len=12, ckpt_minutes=0.5)
    clock = [0.0]
    monkeypatch.setattr(ft.time, "monotonic", lambda: clock[0])
    real_lg, real_save = ft.loss_and_grads, ft.Finetuned.save
    saves = []

    def step(*a, **k):
        clock[0] += 11.0  # 11 s of "wall time" per step: 30 s pass during every third step
        return real_lg(*a, **k)

    def save(self, path, tokenizer=None, resume=None, optimizer=None):
        saves.append((resume["epoch"], resume["step"]))
        return real_save(self, path, tokenizer, resume=resume, optimizer=optimizer)

    monkeypatch.setattr(ft, "loss_and_grads", step)
    monkeypatch.setattr(ft.Finetuned, "save", save)
    ft.finetune(make(), tok, train, config=cfg, out_dir=tmp_path / "ft", log=lambda m: None)
    # 4 steps an epoch: by wall time at steps 3 and 7, and at each epoch's end (steps 4, 8), which restarts the clock
    assert saves == [(0, 3), (1, 4), (1, 7), (2, 8)]
    saves.clear()
    ft.finetune(make(), tok, train, config=dataclasses_replace(cfg, ckpt_minutes=0.0), out_dir=tmp_path / "off",
                log=lambda m: None)
    assert saves == [(1, 4), (2, 8)]  # off: once per epoch
    with pytest.raises(ValueError, match="ckpt_minutes must be >= 0"):
        dataclasses_replace(cfg, ckpt_minutes=-1.0).validate()


def _ft_saved_step(out: Path) -> int:
    from gptlite.tasks import finetune as ft

    ck = ft.checkpoint_store(out).find()
    try:
        return json.loads((ck / ft.META_FILE).read_text())["resume"]["step"] if ck else 0
    except (OSError, ValueError, KeyError):  # replaced while being read
        return 0


def test_finetune_killed_at_random_points_resumes_exactly(tmp_path, ft_setup):
    """`gptlite finetune --ckpt-minutes` tiny enough to checkpoint after every
    step (so kills land inside saves, between the two renames of the swap too)
    is killed with SIGKILL three times; each time a loadable checkpoint remains,
    and `--resume` ends with weights bit-identical to an uninterrupted run."""
    from gptlite.cli import main
    from gptlite.engine.checkpoint import save_model
    from gptlite.tasks import finetune as ft

    make, tok, _ = ft_setup
    model_dir = save_model(make(), tmp_path / "model", tokenizer=tok)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": "abcd"[: 1 + i % 4] * (1 + i % 3), "label": i % 2}) + "\n" for i in range(24)))
    args = ["finetune", "--task", "classification", "--train", str(train), "--epochs", "2", "--batch-size", "2",
            "--max-len", "12", "--lr", "1e-3"]
    assert main(args + ["--model", str(model_dir), "--out", str(tmp_path / "straight"), "--json"]) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "gptlite"] + args + ["--out", str(out), "--ckpt-minutes", "1e-9", "--json"]
    rng = random.Random(7)
    kills = 0
    for attempt in range(3):
        before = _ft_saved_step(out)
        extra = ["--resume"] if ft.checkpoint_store(out).find() else ["--model", str(model_dir)]
        child = subprocess.Popen(cmd + extra, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        target = before + rng.randint(1, 4)
        deadline = time.monotonic() + 60
        while _ft_saved_step(out) < target and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))  # somewhere in the next step or its checkpoint write
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=60)
        if child.returncode == 0:
            break  # finished before the signal came
        assert child.returncode == -signal.SIGKILL, err
        kills += 1
        ck = ft.checkpoint_store(out).find()
        assert ck is not None, err
        loaded = ft.load_finetuned(out)  # loadable, through the previous checkpoint if the swap was cut short
        cfg = ft.FinetuneConfig(task="classification", epochs=2, batch_size=2, max_len=12, lr=1e-3)
        ft._resume_state(ck, loaded, cfg)
    assert kills >= 1
    if _ft_saved_step(out) < 24:
        assert main(args + ["--out", str(out), "--resume", "--json"]) == 0
    a, b = ft.load_finetuned(tmp_path / "straight"), ft.load_finetuned(out)
    assert not np.array_equal(a.model.params["h.0.mlp.c_fc.weight"], make().params["h.0.mlp.c_fc.weight"])  # it trained
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], b.model.params[k]), k
    for k in a.head:
        assert np.array_equal(a.head[k], b.head[k]), k
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert not list(tmp_path.glob(".killed.*"))  # no staging or old directories left beside it


# --- pre-training never deletes what it did not create --------------------------------------

def test_train_out_dir_never_clobbers(tmp_path, capsys):
    from gptlite.cli import main
    from gptlite.runlock import OutDirError

    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("precious")
    cfg = _cfg(tmp_path, eval_batches=0, out_dir=str(project), max_steps=2)
    for overwrite in (False, True):  # not even with overwrite
        with pytest.raises(OutDirError, match="is not empty and is not a gptlite training run.*notes.txt"):
            T.Trainer(cfg, overwrite=overwrite, log=lambda m: None)
    # a train_config.json that is not ours does not make the directory a run
    (project / "train_config.json").write_text('{"epochs": 3}')
    cli = ["train", "--config", "tiny", "--set", f"data.data_dir={cfg.data_dir}", "--set", f"run.out_dir={project}",
           "--set", "run.device=cpu", "--set", "train.max_steps=2", "--set", "train.eval_batches=0",
           "--set", "train.progress=false"]
    assert main(cli + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is not a gptlite training run" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt", "train_config.json"]
    assert (project / "notes.txt").read_text() == "precious" and (project / "train_config.json").read_text() == '{"epochs": 3}'
    # a run killed before its first checkpoint is still a run: --resume has nothing, --overwrite starts it again
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"data_dir": cfg.data_dir, "world_size": 1}))
    with pytest.raises(FileNotFoundError, match="stopped before its first checkpoint; --overwrite starts it again"):
        T.Trainer(_cfg(tmp_path, out_dir=str(run)), resume=True, log=lambda m: None)
    with pytest.raises(OutDirError, match="already holds a training run"):
        T.Trainer(_cfg(tmp_path, out_dir=str(run)), log=lambda m: None)
    with pytest.raises(OutDirError, match="give one of them"):
        T.Trainer(_cfg(tmp_path, out_dir=str(run)), resume=True, overwrite=True, log=lambda m: None)


def test_train_rerun_needs_resume_or_overwrite(tmp_path, capsys):
    from gptlite.cli import main
    from gptlite.runlock import OutDirError

    fresh = T.Trainer(_cfg(tmp_path, out_dir=str(tmp_path / "fresh")), log=lambda m: None).run()["losses"]
    cfg = _cfg(tmp_path, lr=1e-2)  # an earlier, different run in out_dir
    T.Trainer(cfg, log=lambda m: None).run()
    out = Path(cfg.out_dir)
    (out / "notes.txt").write_text("mine")  # a user's file inside the run directory
    state = (out / "ckpt" / T.STATE).read_text()
    metrics = (out / "metrics.jsonl").read_text()
    with pytest.raises(OutDirError, match="already holds a training run: pass --resume to continue it, --overwrite to replace it"):
        T.Trainer(_cfg(tmp_path), log=lambda m: None)
    cli = ["train", "--config", "tiny", "--set", f"data.data_dir={cfg.data_dir}", "--set", f"run.out_dir={out}",
           "--set", "run.device=cpu", "--set", "train.progress=false"]
    assert main(cli) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and len(err.strip().splitlines()) == 1
    assert (out / "ckpt" / T.STATE).read_text() == state and (out / "metrics.jsonl").read_text() == metrics
    # --overwrite: the run is replaced, trained from scratch (the same losses as in an empty directory)
    again = T.Trainer(_cfg(tmp_path), overwrite=True, log=lambda m: None)
    assert again.run()["losses"] == fresh
    assert (out / "notes.txt").read_text() == "mine"
    def logged(d):  # (step, loss, val_loss): the timing fields differ run to run
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]

    assert logged(out) == logged(tmp_path / "fresh")  # only the new run's lines
    assert json.loads((out / "ckpt" / T.STATE).read_text())["config"]["lr"] == 3e-3


# --- one-line errors from the CLI --------------------------------------------------------------

def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from gptlite.cli import main

    d = _tiny_model_dir(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "layer_norm_epsilon": float("nan")}))
    assert main(["generate", "--model", str(d), "hi"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "layer_norm_epsilon" in err and "Traceback" not in err
    enc = tmp_path / "bad.txt"
    enc.write_bytes(b"hello\n" * 5000 + b"\xff")
    assert main(["encode", "-t", str(tmp_path / "nope"), "-i", str(enc)]) == 2
    capsys.readouterr()


def test_encode_reports_the_bad_byte_offset_in_the_file(tmp_path, gpt2_dir, capsys):
    from gptlite.cli import main

    p = tmp_path / "bad.txt"
    p.write_bytes(b"hello\n" * 5000 + b"ok \xff rest")
    assert main(["encode", "-t", str(gpt2_dir), "-i", str(p), "--chunk-chars", "100", "-o", str(tmp_path / "o.txt")]) == 2
    assert "at byte 30003, line 5001" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    from gptlite.engine import backend

    if backend.cuda_available():
        pytest.skip("a GPU is present")
    from gptlite.cli import main

    d = _tiny_model_dir(tmp_path / "m")
    assert main(["generate", "--model", str(d), "--device", "cuda", "hi"]) == 2
    err = capsys.readouterr().err
    assert "device='cuda' requested" in err and len(err.strip().splitlines()) == 1


# --- a full disk ----------------------------------------------------------------------------

def test_full_disk_on_a_real_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or r.returncode})")
    try:
        cfg = _cfg(tmp_path, eval_batches=0, out_dir=str(mnt / "run"), n_embd=32)
        tr = T.Trainer(cfg, log=lambda m: None)
        tr.run(steps=1)
        state = json.loads((mnt / "run" / "ckpt" / T.STATE).read_text())
        filler = mnt / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill what is left
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        with pytest.raises(OSError, match="(?i)no space left"):
            tr.run(steps=1)
        filler.unlink()
        assert json.loads((mnt / "run" / "ckpt" / T.STATE).read_text()) == state  # the previous one intact
        T.Trainer(cfg, resume=True, log=lambda m: None).run(steps=1)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # lazily: a trainer may still hold its run lock there


# --- hub downloads ---------------------------------------------------------------------------

def test_garbage_hub_download_is_refused(monkeypatch, tmp_path):
    """A proxy's error page saved as model.safetensors by the hub client is an
    OSError naming the model, never a model that loads garbage. (Checksums of
    the files themselves are huggingface_hub's job: it verifies the hub's etag.)"""
    import types

    from gptlite.engine import checkpoint as ckpt

    src = _tiny_model_dir(tmp_path / "src")
    snap = tmp_path / "hub" / "snapshot"
    snap.mkdir(parents=True)

    def hf_hub_download(name, file):
        if not (src / file).exists():
            raise OSError(f"404 {file}")
        data = (src / file).read_bytes()
        if file == ckpt.WEIGHTS_NAME:
            data = b"<html><body>Access denied by your proxy</body></html>"
        (snap / file).write_bytes(data)
        return str(snap / file)

    hub = types.SimpleNamespace(hf_hub_download=hf_hub_download,
                                utils=types.SimpleNamespace(disable_progress_bars=lambda: None))
    monkeypatch.setattr(ckpt, "_hub", lambda: hub)
    with pytest.raises(OSError, match="not a valid model") as e:
        ckpt.download_model("gpt2")
    assert "gpt2" in str(e.value)
