"""Token shards: prepare round trip, deterministic split, reproducible sampler, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gptlite import data


@pytest.fixture(scope="module")
def tok(gpt2_dir):
    from gptlite.tokenizer.encoding import Tokenizer

    return Tokenizer.from_files(gpt2_dir)


def _docs_of(tokens: np.ndarray, eot: int) -> list[list[int]]:
    """Split a token stream at <|endoftext|> (each document starts with one)."""
    out, cur = [], None
    for t in tokens.tolist():
        if t == eot:
            if cur is not None:
                out.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur is not None:
        out.append(cur)
    return out


def test_prepare_round_trip_jsonl(tmp_path, tok, corpora_dir):
    texts = [json.loads(line)["text"] for line in (corpora_dir / "lambada_test.jsonl").read_text().splitlines()[:50]]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)) + "\n")
    meta = data.prepare([src], tok, tmp_path / "out", val_fraction=0.2, seed=7)
    assert meta["dtype"] == "uint16" and meta["splits"]["val"]["documents"] == 10
    assert meta["splits"]["train"]["documents"] == 40
    recovered = []
    for split in ("train", "val"):
        td = data.TokenData(tmp_path / "out", split)
        assert len(td) == meta["splits"][split]["tokens"]
        assert td.tokens[0] == tok.eot_token
        recovered += [tok.decode(d) for d in _docs_of(np.asarray(td.tokens), tok.eot_token)]
    assert sorted(recovered) == sorted(texts)
    # the saved tokenizer is the one used
    from gptlite.tokenizer.encoding import Tokenizer

    again = Tokenizer.from_files(tmp_path / "out" / "tokenizer")
    assert again.encode_ordinary(texts[0]) == tok.encode_ordinary(texts[0])


def test_prepare_is_deterministic_and_seeded(tmp_path, tok):
    files = []
    for i in range(12):
        f = tmp_path / f"doc{i}.txt"
        f.write_text(f"Document number {i}. " * (i + 1))
        files.append(f)
    data.prepare(files, tok, tmp_path / "a", val_fraction=0.25, seed=1)
    data.prepare(files, tok, tmp_path / "b", val_fraction=0.25, seed=1)
    data.prepare(files, tok, tmp_path / "c", val_fraction=0.25, seed=2)
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / split).read_bytes() == (tmp_path / "b" / split).read_bytes()
    assert (tmp_path / "a" / "val.bin").read_bytes() != (tmp_path / "c" / "val.bin").read_bytes()


def test_single_file_tail_split(tmp_path, tok, corpora_dir):
    text = (corpora_dir / "tinyshakespeare.txt").read_text()[:20000]
    f = tmp_path / "s.txt"
    f.write_text(text)
    meta = data.prepare([f], tok, tmp_path / "out", val_fraction=0.1)
    assert meta["split_method"] == "tail"
    tr = np.asarray(data.TokenData(tmp_path / "out", "train").tokens)
    va = np.asarray(data.TokenData(tmp_path / "out", "val").tokens)
    n = len(tr) + len(va) - 1  # the val split starts with its own <|endoftext|>
    assert abs(len(va) - 1 - 0.1 * n) <= 1
    assert tok.decode(list(tr[1:]) + list(va[1:])) == text


def test_token_dtype():
    assert data.token_dtype(50257) == np.uint16 and data.token_dtype(65536) == np.uint16
    assert data.token_dtype(100277) == np.uint32


def _fake_dir(tmp_path, n=1000, vocab=100):
    d = tmp_path / "fake"
    d.mkdir()
    toks = (np.arange(n) % vocab).astype("<u2")
    (d / "train.bin").write_bytes(toks.tobytes())
    (d / "val.bin").write_bytes(toks[:100].tobytes())
    (d / "meta.json").write_text(json.dumps({
        "format": "gptlite-tokens", "version": 1, "dtype": "uint16", "n_vocab": vocab, "eot_token": 0,
        "tokenizer": {"dir": "tokenizer"},
        "splits": {"train": {"file": "train.bin", "tokens": n, "documents": 1},
                   "val": {"file": "val.bin", "tokens": 100, "documents": 1}}}))
    return d


def test_batches_reproducible_and_resumable(tmp_path):
    d = _fake_dir(tmp_path, vocab=5000)  # token value == its position in the stream
    td = data.TokenData(d, "train")
    a = data.Batches(td, 4, 16, seed=3)
    seq = [a.next() for _ in range(5)]
    for x, y in seq:
        assert x.shape == y.shape == (4, 16) and x.dtype == np.int64
        assert np.array_equal(x[:, 1:], y[:, :-1])
        assert np.all(y - x == 1)  # consecutive tokens of the stream
    b = data.Batches(td, 4, 16, seed=3)
    b.load_state(a.state() | {"position": 2})
    assert all(np.array_equal(p, q) for p, q in zip(b.next(), seq[2]))
    assert np.array_equal(data.Batches(td, 4, 16, seed=3).batch(4)[0], seq[4][0])
    other = data.Batches(td, 4, 16, seed=4).batch(0)[0]
    assert not np.array_equal(other, seq[0][0])
    starts = np.concatenate([data.Batches(td, 64, 16, seed=s).batch(0)[0][:, 0] for s in range(20)])
    assert starts.max() > 900 - 17 and starts.min() < 50  # windows cover the whole stream


def test_bad_inputs(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.prepare([tmp_path / "nope.txt"], tok, tmp_path / "o")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        data.prepare([empty], tok, tmp_path / "o")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        data.prepare([bad], tok, tmp_path / "o")
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"nofield.jsonl:1: no 'text' field"):
        data.prepare([nofield], tok, tmp_path / "o")
    ok = tmp_path / "ok.txt"
    ok.write_text("hello world " * 50)
    with pytest.raises(ValueError, match="val_fraction"):
        data.prepare([ok], tok, tmp_path / "o", val_fraction=1.5)
    with pytest.raises(FileNotFoundError, match="gptlite prepare"):
        data.TokenData(tmp_path, "train")
    d = _fake_dir(tmp_path)
    with pytest.raises(ValueError, match="fewer than one window"):
        data.Batches(data.TokenData(d, "val"), 2, 200)
    (d / "train.bin").write_bytes(b"\0" * 10)  # truncated
    with pytest.raises(ValueError, match="train.bin: 10 bytes"):
        data.TokenData(d, "train")
    with pytest.raises(ValueError, match="no split 'test'"):
        data.TokenData(d, "test")
    assert not (tmp_path / "o" / "meta.json").exists()
