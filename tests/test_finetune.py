"""GPT-1 fine-tuning: hand-written gradients vs a PyTorch reference of the same
head and losses, the input transformations, bad input, and an end-to-end run."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gptlite.tasks import finetune as ft  # noqa: E402
from gptlite.tasks.datasets import DatasetError, read_records, FINETUNE_SCHEMAS  # noqa: E402

V0 = 61  # base vocabulary of the gradient-check model; specials are 61, 62, 63
IDS = {"start": V0, "delim": V0 + 1, "extract": V0 + 2}


def _ints(s: str) -> list[int]:
    return [int(t) for t in s.split()]


# ---------------------------------------------------------------------------------
# gradients vs PyTorch (float64)
@pytest.fixture(scope="module", params=["gpt2", "gpt1"])
def pair(request, tmp_path_factory):
    """(gptlite float64 model, HF float64 model) with the same weights, V0 + 3 tokens."""
    from gptlite.engine.checkpoint import load_model

    torch.manual_seed(1)
    kw = dict(vocab_size=V0 + 3, n_positions=32, n_embd=16, n_layer=2, n_head=2,
              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if request.param == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw))
    else:
        hf = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**kw))
    hf = hf.double().eval()
    d = tmp_path_factory.mktemp(f"hf_{request.param}")
    hf.save_pretrained(d, safe_serialization=True)
    model = load_model(d, device="cpu", dtype="float64")
    assert model.config.layout == request.param
    return model, hf


def _examples(task: str, rng) -> list[ft.Example]:
    """Random token records of varying length through the real input transformations."""
    exs = []
    for i in range(5):
        def words(lo=2, hi=9):
            return " ".join(str(t) for t in rng.integers(0, V0, size=rng.integers(lo, hi)))
        if task == "classification":
            data, y = {"text": words()}, i % 3
        elif task == "entailment":
            data, y = {"premise": words(), "hypothesis": words()}, i % 3
        elif task == "similarity":
            data, y = {"text_a": words(), "text_b": words()}, i % 2
        else:
            data, y = {"context": words(), "choices": [words(1, 4) for _ in range(3)]}, i % 3
        seqs, _ = ft.transform(task, data, _ints, IDS, 32)
        exs.append(ft.Example(seqs, y, i + 1, False))
    return exs


def torch_reference(hf, idx, pos, tgt, labels, W, b, mask, task, n_seq, lm_coef):
    """The same head and losses in PyTorch autograd -> (loss, {param name: grad})."""
    F = torch.nn.functional
    for p in hf.parameters():
        p.grad = None
    W = torch.tensor(W, requires_grad=True)
    b = torch.tensor(b, requires_grad=True)
    hid = hf.transformer(input_ids=torch.tensor(idx)).last_hidden_state  # (N,T,C)
    N, T, C = hid.shape
    h = hid[torch.arange(N), torch.tensor(pos)]
    if task == "similarity":
        h = h.view(N // n_seq, n_seq, C).sum(1)
    if mask is not None:
        h = h * torch.tensor(mask)
    z = h @ W + b
    if task == "choice":
        z = z.view(N // n_seq, n_seq)
    loss = F.cross_entropy(z, torch.tensor(labels))
    if lm_coef:
        logits = hf.lm_head(hid)
        loss = loss + lm_coef * F.cross_entropy(logits.reshape(N * T, -1), torch.tensor(tgt).reshape(-1), ignore_index=-1)
    loss.backward()
    names = {"tokens_embed.weight": "wte.weight", "positions_embed.weight": "wpe.weight"}
    grads = {}
    for name, p in hf.named_parameters():
        if name.startswith("transformer."):
            n = name[len("transformer."):]
            grads[names.get(n, n)] = p.grad.numpy()
    grads["head.weight"] = W.grad.numpy()
    grads["head.bias"] = b.grad.numpy()
    return loss.item(), grads


@pytest.mark.parametrize("task", ["classification", "entailment", "similarity", "choice"])
@pytest.mark.parametrize("lm_coef,dropout", [(0.5, False), (0.0, False), (0.5, True)])
def test_grads_match_torch(pair, task, lm_coef, dropout):
    model, hf = pair
    rng = np.random.default_rng(hash((task, lm_coef, dropout)) % 2**32)
    exs = _examples(task, rng)
    n_seq = len(exs[0].seqs)
    K = 1 if task == "choice" else (2 if task == "similarity" else 3)
    batch = ft.collate(exs, np)
    C = model.config.n_embd
    head = {"head.weight": rng.normal(0, 0.3, (C, K)), "head.bias": rng.normal(0, 0.1, K)}
    rows = len(exs) * n_seq if task == "choice" else len(exs)
    mask = ft.dropout_mask((rows, C), 0.1, rng, np, np.float64) if dropout else None
    total, task_loss, lm_loss, grads = ft.loss_and_grads(model, head, batch, task, lm_coef, mask, n_seq)
    want_loss, want = torch_reference(hf, *[np.asarray(a) for a in batch], head["head.weight"], head["head.bias"],
                                      mask, task, n_seq, lm_coef)
    assert total == pytest.approx(want_loss, rel=1e-12)
    assert set(grads) == set(want)
    for name, g in want.items():
        np.testing.assert_allclose(grads[name], g, rtol=1e-9, atol=1e-12, err_msg=name)
    # the special tokens' embedding rows are trained
    assert np.abs(grads["wte.weight"][IDS["extract"]]).sum() > 0


def test_dropout_mask_is_seeded_and_scaled():
    a = ft.dropout_mask((64, 32), 0.1, np.random.default_rng(3), np, np.float32)
    b = ft.dropout_mask((64, 32), 0.1, np.random.default_rng(3), np, np.float32)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {np.float32(0.0), np.float32(1 / 0.9)}
    assert 0.05 < (a == 0).mean() < 0.15
    assert ft.dropout_mask((4, 4), 0.0, np.random.default_rng(0), np, np.float32) is None


# ---------------------------------------------------------------------------------
# input transformations, special tokens
def test_transformations_layout():
    s, d, e = V0, V0 + 1, V0 + 2
    assert ft.transform("classification", {"text": "1 2 3"}, _ints, IDS, 32) == ([[s, 1, 2, 3, e]], False)
    assert ft.transform("entailment", {"premise": "1 2", "hypothesis": "3"}, _ints, IDS, 32) == ([[s, 1, 2, d, 3, e]], False)
    assert ft.transform("similarity", {"text_a": "1 2", "text_b": "3"}, _ints, IDS, 32) == (
        [[s, 1, 2, d, 3, e], [s, 3, d, 1, 2, e]], False)
    # choice answers are encoded with a leading space: " 5" -> _ints works the same
    assert ft.transform("choice", {"context": "1 2", "choices": ["5", "6 7"]}, _ints, IDS, 32) == (
        [[s, 1, 2, d, 5, e], [s, 1, 2, d, 6, 7, e]], False)


def test_truncation_rule():
    long_a = " ".join(map(str, range(1, 21)))  # 20 tokens
    short_b = "30 31 32"
    # max_len 12: 3 specials, 9 for text; b keeps its 3, a gets 6 (cut at its END)
    (seq,), cut = ft.transform("entailment", {"premise": long_a, "hypothesis": short_b}, _ints, IDS, 12)
    assert cut and len(seq) == 12
    assert seq == [V0, 1, 2, 3, 4, 5, 6, V0 + 1, 30, 31, 32, V0 + 2]
    # both long: split evenly (water-filling), the first field takes the odd token
    (seq,), _ = ft.transform("entailment", {"premise": long_a, "hypothesis": long_a}, _ints, IDS, 10)
    assert seq == [V0, 1, 2, 3, 4, V0 + 1, 1, 2, 3, V0 + 2]
    # choice: the context loses tokens at its START (the end, next to the answer, is kept)
    seqs, cut = ft.transform("choice", {"context": long_a, "choices": ["40", "41"]}, _ints, IDS, 8)
    assert cut and seqs[0] == [V0, 17, 18, 19, 20, V0 + 1, 40, V0 + 2]
    with pytest.raises(ValueError, match="max_len"):
        ft.transform("entailment", {"premise": "1", "hypothesis": "2"}, _ints, IDS, 4)


def test_add_special_tokens():
    from gptlite.engine.model import GPT, GPTConfig

    m = GPT(GPTConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2), seed=0)
    m2, ids = ft.add_special_tokens(m, seed=0)
    assert ids == {"start": 50, "delim": 51, "extract": 52}
    assert m2.config.vocab_size == 53 and m2.params["wte.weight"].shape == (53, 32)
    np.testing.assert_array_equal(m2.params["wte.weight"][:50], m.params["wte.weight"])
    new = m2.params["wte.weight"][50:]
    assert 0.01 < new.std() < 0.03 and abs(new.mean()) < 0.01
    logits = m2.logits(np.array([[1, 50, 51, 52]]))
    assert logits.shape == (1, 4, 53)


# ---------------------------------------------------------------------------------
# datasets and bad input
def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class _Tok:  # a tokenizer stand-in for the dataset tests: tokens are the integers in the text
    encode_ordinary = staticmethod(_ints)


def test_labels_outside_label_set_report_line(tmp_path):
    tr = read_records(_write(tmp_path / "tr.jsonl", [{"text": "1", "label": "pos"}, {"text": "2", "label": "neg"}]),
                      FINETUNE_SCHEMAS["classification"])
    va = read_records(_write(tmp_path / "va.jsonl", [{"text": "1", "label": "pos"}, {"text": "2", "label": "meh"}]),
                      FINETUNE_SCHEMAS["classification"])
    labels = ft.label_set("classification", tr)
    assert labels == ["neg", "pos"]
    with pytest.raises(DatasetError, match=r"va.jsonl:2: label 'meh' is not in the label set"):
        ft.encode_dataset("classification", va, _Tok, IDS, 16, labels)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ft.label_set("classification", read_records(_write(tmp_path / "one.jsonl", [{"text": "1", "label": 0}]),
                                                    FINETUNE_SCHEMAS["classification"]))
    ch = read_records(_write(tmp_path / "ch.jsonl", [{"context": "1", "choices": ["2", "3"], "label": 1},
                                                     {"context": "1", "choices": ["2", "3", "4"], "label": 0}]),
                      FINETUNE_SCHEMAS["choice"])
    with pytest.raises(DatasetError, match=r"ch.jsonl:2: 3 choices, earlier records have 2"):
        ft.encode_dataset("choice", ch, _Tok, IDS, 16, None)


def test_csv_and_malformed_lines(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('premise,hypothesis,label\n"1 2",3,0\n"4, 5",6,1\n7,8\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"d.csv:4: fewer cells"):
        read_records(p, FINETUNE_SCHEMAS["entailment"])
    ds = read_records(p, FINETUNE_SCHEMAS["entailment"], skip_bad=True)
    assert [r.data["label"] for r in ds.records] == [0, 1] and ds.records[1].data["premise"] == "4, 5"
    assert ds.skipped[0][0] == 4
    c = tmp_path / "c.csv"
    c.write_text("context,choice_0,choice_1,label\nhello,a,b,1\n", encoding="utf-8")
    assert read_records(c, FINETUNE_SCHEMAS["choice"]).records[0].data["choices"] == ["a", "b"]
    j = _write(tmp_path / "j.jsonl", [{"text": "1", "label": 0}])
    with open(j, "a", encoding="utf-8") as f:
        f.write('{"text": 2, "label": 1}\n')
    with pytest.raises(DatasetError, match=r"j.jsonl:2: key 'text': expected a string"):
        read_records(j, FINETUNE_SCHEMAS["classification"])
    (tmp_path / "e.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(DatasetError, match="empty"):
        read_records(tmp_path / "e.jsonl", FINETUNE_SCHEMAS["classification"])


def test_metrics():
    m = ft.metrics(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1]), 2)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert "f1" not in ft.metrics(np.array([0, 1, 2]), np.array([0, 1, 1]), 3)


# ---------------------------------------------------------------------------------
# end to end: a tiny GPT-2-vocabulary model, real tokenizer, CLI, checkpoint round trip
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, gpt2_dir):
    from gptlite.engine.checkpoint import save_model
    from gptlite.engine.model import GPT, GPTConfig

    d = tmp_path_factory.mktemp("tiny")
    m = GPT(GPTConfig(vocab_size=50257, n_positions=48, n_embd=32, n_layer=1, n_head=2), seed=0)
    save_model(m, d)
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copy(gpt2_dir / f, d / f)
    return d


@pytest.fixture(scope="module")
def corpus_sets(tmp_path_factory, corpora_dir):
    """Which corpus does a line come from: Shakespeare (0) or WikiText (1)."""
    shakes = [ln for ln in (corpora_dir / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines() if len(ln) > 30]
    wiki = [ln.strip() for ln in (corpora_dir / "wikitext-2" / "valid.txt").read_text(encoding="utf-8").splitlines()
            if len(ln.strip()) > 30 and not ln.strip().startswith("=")]
    rows = [{"text": t[:200], "label": 0} for t in shakes[:40]] + [{"text": t[:200], "label": 1} for t in wiki[:40]]
    rng = np.random.default_rng(0)
    rng.shuffle(rows)
    d = tmp_path_factory.mktemp("corpus")
    return _write(d / "train.jsonl", rows[:56]), _write(d / "valid.jsonl", rows[56:])


def test_finetune_cli_end_to_end(tiny_dir, corpus_sets, tmp_path, capsys):
    from gptlite.cli import main

    train, valid = corpus_sets
    out = tmp_path / "ft"
    rc = main(["finetune", "--task", "classification", "--train", str(train), "--valid", str(valid),
               "--model", str(tiny_dir), "--out", str(out), "--epochs", "3", "--batch-size", "8",
               "--lr", "2e-3", "--max-len", "24", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    hist = res["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert res["truncated_train"] > 0  # 200-character lines do not fit 24 tokens
    assert all(0.0 <= h["valid_accuracy"] <= 1.0 and "valid_f1" in h for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["valid_accuracy"] > 0.7  # the two corpora are easy to tell apart
    # the checkpoint: model with 3 more tokens, head, metadata; it predicts what it reported
    loaded = ft.load_finetuned(out)
    assert loaded.model.config.vocab_size == 50257 + 3
    assert loaded.special_tokens == {"start": 50257, "delim": 50258, "extract": 50259}
    _, m = loaded.predict(valid)
    assert m["accuracy"] == pytest.approx(hist[-1]["valid_accuracy"])
    # continuing from the fine-tuned checkpoint keeps its tokens and head
    rc = main(["finetune", "--task", "classification", "--train", str(train), "--model", str(out),
               "--out", str(tmp_path / "ft2"), "--epochs", "1", "--batch-size", "28", "--max-len", "24", "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["history"][-1]["epoch"] == 4


def test_finetune_cli_bad_label(tiny_dir, corpus_sets, tmp_path, capsys):
    from gptlite.cli import main

    train, _ = corpus_sets
    bad = _write(tmp_path / "v.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 7}])
    rc = main(["finetune", "--task", "classification", "--train", str(train), "--valid", str(bad),
               "--model", str(tiny_dir), "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "v.jsonl:2: label 7 is not in the label set" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_finetune_choice_and_similarity_api(tiny_dir, tmp_path):
    """The multi-sequence tasks through finetune()/predict(): K choices, two orders."""
    from gptlite.engine.checkpoint import load_model, load_tokenizer

    tok = load_tokenizer(tiny_dir)
    words = ["apple", "river", "stone", "cloud", "table", "green"]
    rows = [{"context": f"the {w} is", "choices": [words[(i + k) % 6] for k in range(3)], "label": i % 3}
            for i, w in enumerate(words * 3)]
    p = _write(tmp_path / "ch.jsonl", rows)
    cfg = ft.FinetuneConfig(task="choice", epochs=1, batch_size=6, max_len=16)
    res = ft.finetune(load_model(tiny_dir), tok, p, p, cfg, log=lambda s: None)
    pred, m = res.finetuned.predict(p)
    assert pred.shape == (18,) and set(pred) <= {0, 1, 2}
    assert m["accuracy"] == pytest.approx(res.history[-1]["valid_accuracy"])
    sims = [{"text_a": a, "text_b": b, "label": int(a[0] == b[0])} for a in words for b in words]
    p2 = _write(tmp_path / "sim.jsonl", sims)
    res2 = ft.finetune(load_model(tiny_dir), tok, p2, p2, ft.FinetuneConfig(task="similarity", epochs=1, max_len=16),
                       log=lambda s: None)
    assert res2.finetuned.labels == ["0", "1"] and "valid_f1" in res2.history[-1]


def test_finetune_cli_random_init(tiny_dir, corpus_sets, tmp_path, capsys):
    """--random-init: the pre-trained model's shape with fresh GPT-2-init weights
    (seeded), the baseline of the docs' table; refused for a fine-tuned checkpoint."""
    from gptlite.engine.checkpoint import load_model
    from gptlite.cli import main
    from gptlite.engine.model import GPT

    train, _ = corpus_sets
    out = tmp_path / "rand"
    rc = main(["finetune", "--task", "classification", "--train", str(train), "--model", str(tiny_dir),
               "--out", str(out), "--epochs", "1", "--batch-size", "56", "--max-len", "24", "--lr", "1e-12",
               "--random-init", "--seed", "4", "--json"])
    assert rc == 0
    capsys.readouterr()
    got = ft.load_finetuned(out).model.params
    pre = load_model(tiny_dir)
    fresh = GPT(pre.config, seed=4).params
    for name in ("h.0.attn.c_attn.weight", "h.0.mlp.c_fc.weight", "wpe.weight"):
        np.testing.assert_allclose(got[name], fresh[name], atol=1e-6)  # lr 1e-12: still the init
        assert not np.allclose(got[name], pre.params[name], atol=1e-3)
    rc = main(["finetune", "--task", "classification", "--train", str(train), "--model", str(out),
               "--out", str(tmp_path / "x"), "--random-init"])
    assert rc == 2 and "fine-tuned checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("stop_after", [3, 7])  # mid-epoch, and right at the end of epoch 1 (7 steps/epoch)
def test_ctrl_c_saves_and_resume_is_exact(tiny_dir, corpus_sets, tmp_path, monkeypatch, stop_after):
    """Ctrl-C saves model, head, optimizer, RNG and the position in the epoch;
    resuming gives the same losses and weights as a run never interrupted."""
    import signal

    from gptlite.engine.checkpoint import load_model, load_tokenizer

    train, valid = corpus_sets
    tok = load_tokenizer(tiny_dir)
    cfg = ft.FinetuneConfig(task="classification", epochs=2, batch_size=8, max_len=24, lr=1e-3)
    straight = ft.finetune(load_model(tiny_dir), tok, train, valid, cfg, out_dir=tmp_path / "a", log=lambda s: None)

    real = ft.loss_and_grads
    calls = []

    def interrupt_at_k(*a, **kw):
        calls.append(1)
        if len(calls) == stop_after:
            signal.raise_signal(signal.SIGINT)  # handled: the step finishes, then the loop saves and stops
        return real(*a, **kw)

    monkeypatch.setattr(ft, "loss_and_grads", interrupt_at_k)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(load_model(tiny_dir), tok, train, valid, cfg, out_dir=tmp_path / "b", log=lambda s: None)
    monkeypatch.setattr(ft, "loss_and_grads", real)
    meta = json.loads((tmp_path / "b" / ft.META_FILE).read_text())
    assert meta["resume"]["step"] == stop_after
    resumed = ft.finetune(None, None, train, valid, cfg, out_dir=tmp_path / "b", log=lambda s: None, resume=True)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert [h["valid_accuracy"] for h in resumed.history] == [h["valid_accuracy"] for h in straight.history]
    a, b = ft.load_finetuned(tmp_path / "a"), ft.load_finetuned(tmp_path / "b")
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], b.model.params[k]), k
    for k in a.head:
        assert np.array_equal(a.head[k], b.head[k]), k
    # a finished run cannot be resumed, nor one with other settings
    with pytest.raises(ValueError, match="already finished"):
        ft.finetune(None, None, train, valid, cfg, out_dir=tmp_path / "b", log=lambda s: None, resume=True)
    other = dataclasses.replace(cfg, lr=2e-3, epochs=3)
    with pytest.raises(ValueError, match="different configuration: epochs 2 -> 3, lr 0.001 -> 0.002"):
        ft.finetune(None, None, train, valid, other, out_dir=tmp_path / "b", log=lambda s: None, resume=True)


def test_finetune_cli_resume(tiny_dir, corpus_sets, tmp_path, capsys):
    from gptlite.cli import main

    train, valid = corpus_sets
    args = ["finetune", "--task", "classification", "--train", str(train), "--valid", str(valid),
            "--out", str(tmp_path / "ft"), "--batch-size", "8", "--max-len", "24", "--json"]
    assert main(args + ["--epochs", "1", "--model", str(tiny_dir)]) == 0
    capsys.readouterr()
    assert main(args + ["--epochs", "1", "--resume"]) == 2  # finished: nothing to resume
    assert "already finished" in capsys.readouterr().err
    assert main(args + ["--epochs", "2", "--resume"]) == 2  # other settings
    assert "different configuration: epochs 1 -> 2" in capsys.readouterr().err
    assert main(["finetune", "--task", "classification", "--train", str(train), "--out", str(tmp_path / "none"),
                 "--resume"]) == 2
    assert "none" in capsys.readouterr().err


@pytest.fixture
def mini(tmp_path):
    """A byte-level tokenizer, a one-layer model and 12 labelled records."""
    from gptlite.engine.model import GPT, GPTConfig
    from gptlite.tokenizer.encoding import Tokenizer

    tok = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, {"<|endoftext|>": 256})
    rows = [{"text": "abc" * (1 + i % 3) + "d" * (i % 2), "label": i % 2} for i in range(12)]
    return (lambda: GPT(GPTConfig(vocab_size=257, n_positions=16, n_embd=8, n_layer=1, n_head=2), seed=0)), tok, \
        _write(tmp_path / "train.jsonl", rows)


def test_finetune_takes_the_shared_step(mini, tmp_path, monkeypatch):
    """Fine-tuning's update is training/step.py's, as pre-training's: one flat
    buffer for weights and head, and a step whose gradient is not finite is
    skipped (AdamW's count stays) instead of writing NaN into the weights."""
    from gptlite.training import step as S

    make, tok, train = mini
    cfg = ft.FinetuneConfig(task="classification", epochs=1, batch_size=4, max_len=12, lr=1e-3)
    made = []
    real_init = S.Update.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(S.Update, "__init__", spy)
    real = ft.loss_and_grads
    calls = []

    def poisoned_second(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        if len(calls) == 2:
            out[3]["head.bias"] = out[3]["head.bias"] * np.nan
        return out

    monkeypatch.setattr(ft, "loss_and_grads", poisoned_second)
    logs = []
    res = ft.finetune(make(), tok, train, config=cfg, out_dir=tmp_path / "ft", log=logs.append)
    [update] = made
    assert update.opt.t == 2  # 3 steps, the second skipped
    assert any("step 2: non-finite loss or gradient" in m and "update skipped" in m for m in logs)
    fin = res.finetuned
    assert all(np.isfinite(v).all() for v in list(fin.model.params.values()) + list(fin.head.values()))
    # the model and the head are views of the update's one weight buffer
    assert all(np.shares_memory(v, update.flat.params_buf) for v in list(fin.model.params.values()) + list(fin.head.values()))
    assert json.loads((tmp_path / "ft" / ft.META_FILE).read_text())["resume"]["adamw_t"] == 2


def test_checkpoint_of_an_earlier_version_resumes(mini, tmp_path):
    """A fine-tuning checkpoint written before ckpt_minutes existed (no such key in
    its saved config, no header in optimizer.safetensors) resumes exactly."""
    import signal

    from gptlite.engine.checkpoint import read_safetensors, write_safetensors

    make, tok, train = mini
    cfg = ft.FinetuneConfig(task="classification", epochs=2, batch_size=4, max_len=12, lr=1e-3)
    straight = ft.finetune(make(), tok, train, config=cfg, out_dir=tmp_path / "a", log=lambda s: None)
    real = ft.loss_and_grads
    calls = []

    def interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    ft.loss_and_grads = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            ft.finetune(make(), tok, train, config=cfg, out_dir=tmp_path / "b", log=lambda s: None)
    finally:
        ft.loss_and_grads = real
    meta_path = tmp_path / "b" / ft.META_FILE
    meta = json.loads(meta_path.read_text())
    del meta["resume"]["config"]["ckpt_minutes"]
    meta_path.write_text(json.dumps(meta))
    opt = tmp_path / "b" / ft.OPTIM_FILE
    write_safetensors(opt, {k: np.array(v) for k, v in read_safetensors(opt).items()})  # no metadata, as before
    resumed = ft.finetune(None, tok, train, config=dataclasses.replace(cfg, ckpt_minutes=5.0), out_dir=tmp_path / "b",
                          log=lambda s: None, resume=True)  # ckpt_minutes may differ: the updates do not
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    a, b = ft.load_finetuned(tmp_path / "a"), ft.load_finetuned(tmp_path / "b")
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], b.model.params[k]), k
