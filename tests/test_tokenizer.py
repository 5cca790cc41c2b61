"""The GPT-2 encoder: exactness against the reference and tiktoken, API, bad input."""
from __future__ import annotations

import json
import pickle
import threading

import numpy as np
import pytest

import gptlite.tokenizer.encoding as _tokmod
from gptlite import _core
from gptlite.tokenizer.encoding import Tokenizer

ORIG_DOWNLOAD = _tokmod._download


# --- exactness on every document of every shared corpus -----------------------------
def test_corpora_match_reference_and_tiktoken(gpt2_tokenizer, reference_gpt2, tiktoken_gpt2, corpus_docs):
    assert len(corpus_docs) >= 10, sorted(corpus_docs)
    n_docs = n_tokens = 0
    for name, docs in corpus_docs.items():
        ours = gpt2_tokenizer.encode_ordinary_batch(docs, num_threads=2)
        theirs = tiktoken_gpt2.encode_ordinary_batch(docs, num_threads=1)
        for i, (doc, a, b) in enumerate(zip(docs, ours, theirs)):
            if a != b:
                pytest.fail(f"{name} document {i}: differs from tiktoken: {doc[:200]!r}")
            ref = reference_gpt2.encode(doc)
            if a != ref:
                pytest.fail(f"{name} document {i}: differs from the reference: {doc[:200]!r}")
            n_tokens += len(a)
        n_docs += len(docs)
    assert n_docs > 10_000 and n_tokens > 2_000_000


def test_decode_roundtrips_corpora(gpt2_tokenizer, corpus_docs):
    for name, docs in corpus_docs.items():
        text = "\n\n".join(docs[:300])
        assert gpt2_tokenizer.decode(gpt2_tokenizer.encode_ordinary(text)) == text, name


def test_known_ids(gpt2_tokenizer):
    tok = gpt2_tokenizer
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.n_vocab == 50257
    assert tok.eot_token == 50256
    assert tok.special_tokens == {"<|endoftext|>": 50256}
    assert tok.pattern == "gpt2"
    assert tok.token_bytes(15496) == b"Hello"
    assert tok.token_bytes(50256) == b"<|endoftext|>"
    assert tok.encode("") == []
    assert tok.decode([]) == ""


# --- special tokens, as tiktoken ---------------------------------------------------------
def test_special_tokens_like_tiktoken(gpt2_tokenizer, tiktoken_gpt2):
    tok, tk = gpt2_tokenizer, tiktoken_gpt2
    text = "a<|endoftext|>b <|endoftext|><|endoftext|> c"
    with pytest.raises(ValueError, match="disallowed special token '<\\|endoftext\\|>'"):
        tok.encode(text)
    for kwargs in [dict(allowed_special="all"), dict(allowed_special={"<|endoftext|>"}), dict(disallowed_special=())]:
        assert tok.encode(text, **kwargs) == tk.encode(text, **kwargs), kwargs
    assert tok.encode(text, allowed_special="all").count(50256) == 3
    assert 50256 not in tok.encode(text, disallowed_special=())
    assert tok.encode_ordinary(text) == tk.encode_ordinary(text)
    with pytest.raises(ValueError):
        tok.encode_batch(["fine", text])
    assert tok.encode_batch(["x", text], allowed_special="all") == [tk.encode("x"), tk.encode(text, allowed_special="all")]
    assert list(tok.encode_to_numpy(text, allowed_special="all")) == tk.encode(text, allowed_special="all")


# --- decoding ----------------------------------------------------------------------------
def test_decode_partial_utf8(gpt2_tokenizer):
    tok = gpt2_tokenizer
    assert tok.decode_bytes(tok.encode("é")) == "é".encode()
    first_byte = tok.mergeable_ranks[b"\xc3"]  # half of "é"
    assert tok.decode([first_byte]) == "\ufffd"
    assert tok.decode([first_byte, tok.mergeable_ranks[b"\xa9"]]) == "é"
    with pytest.raises(UnicodeDecodeError):
        tok.decode([first_byte], errors="strict")
    assert tok.decode([first_byte], errors="ignore") == ""


def test_decode_bytes_is_concatenation(gpt2_tokenizer):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, gpt2_tokenizer.n_vocab, size=2000).tolist()
    assert gpt2_tokenizer.decode_bytes(ids) == b"".join(gpt2_tokenizer.token_bytes(i) for i in ids)
    assert gpt2_tokenizer.decode_bytes(np.array(ids, dtype=np.int64)) == gpt2_tokenizer.decode_bytes(ids)
    assert gpt2_tokenizer.decode_bytes(tuple(ids[:5])) == gpt2_tokenizer.decode_bytes(ids[:5])


def test_encode_to_numpy(gpt2_tokenizer):
    text = "The quick brown fox. " * 50
    arr = gpt2_tokenizer.encode_to_numpy(text)
    assert arr.dtype == np.uint16 and arr.flags.writeable
    assert arr.tolist() == gpt2_tokenizer.encode(text)


# --- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize("ids, exc, words", [
    ([15496, 50257], ValueError, ["50257", "position 1"]),
    ([1, 2, -1], ValueError, ["-1", "position 2"]),
    ([1, 10**30], ValueError, [str(10**30), "position 1"]),
    ([1, "2"], TypeError, ["position 1", "str"]),
    ([1.5], TypeError, ["position 0", "float"]),
    ([None], TypeError, ["position 0"]),
    ("abc", TypeError, ["str"]),
    (b"abc", TypeError, ["bytes"]),
    (5, TypeError, ["int"]),
])
def test_bad_ids(gpt2_tokenizer, ids, exc, words):
    for f in (gpt2_tokenizer.decode, gpt2_tokenizer.decode_bytes):
        with pytest.raises(exc) as info:
            f(ids)
        for w in words:
            assert w in str(info.value)


def test_bad_token_bytes(gpt2_tokenizer):
    with pytest.raises(ValueError, match="50257"):
        gpt2_tokenizer.token_bytes(50257)
    with pytest.raises(ValueError, match="-3"):
        gpt2_tokenizer.token_bytes(-3)
    with pytest.raises(TypeError):
        gpt2_tokenizer.token_bytes("a")


@pytest.mark.parametrize("method", ["encode", "encode_ordinary", "encode_to_numpy", "split"])
def test_bytes_where_str_expected(gpt2_tokenizer, method):
    with pytest.raises(TypeError, match="must be str, not bytes"):
        getattr(gpt2_tokenizer, method)(b"hello")
    with pytest.raises(TypeError, match="must be str, not int"):
        getattr(gpt2_tokenizer, method)(3)


def test_batch_type_errors(gpt2_tokenizer):
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, not bytes"):
        gpt2_tokenizer.encode_ordinary_batch(["a", b"b"])
    with pytest.raises(TypeError, match="sequence of str"):
        gpt2_tokenizer.encode_ordinary_batch("abc")


def test_lone_surrogates_like_tiktoken(gpt2_tokenizer, tiktoken_gpt2):
    for s in ["a\ud800b", "\udfff", "x \ud83d\ude00 \ud83d"]:
        assert gpt2_tokenizer.encode(s) == tiktoken_gpt2.encode(s)
        assert gpt2_tokenizer.encode_ordinary_batch([s]) == [tiktoken_gpt2.encode_ordinary(s)]


def test_batch_with_a_bad_text_deep_inside(gpt2_tokenizer, tiktoken_gpt2):
    """Helpers already encoding when a late text fails to convert: right answer or a clear error."""
    texts = [f"document {i} text" for i in range(5000)]
    texts[3777] = "lone \ud800 surrogate"
    want = [tiktoken_gpt2.encode_ordinary(t) for t in texts]
    for n in (2, 3):
        assert gpt2_tokenizer.encode_ordinary_batch(texts, num_threads=n) == want
    texts[4999] = b"bytes"
    with pytest.raises(TypeError, match=r"texts\[4999\] must be str, not bytes"):
        gpt2_tokenizer.encode_ordinary_batch(texts, num_threads=2)


def test_concurrent_batches_share_the_pool(gpt2_tokenizer):
    texts = [f"text number {i} " * (i % 7 + 1) for i in range(3000)]
    want = [gpt2_tokenizer.encode_ordinary(t) for t in texts]
    results = {}

    def work(k):
        results[k] = gpt2_tokenizer.encode_ordinary_batch(texts, num_threads=2)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k] == want for k in range(4))


# --- vocabulary files --------------------------------------------------------------------
def _texts(corpus_docs):
    return [d for docs in corpus_docs.values() for d in docs[:40]] + ["héllo wörld 👍🏽 <|endoftext|>"]


@pytest.mark.parametrize("fmt", ["gpt2", "hf", "tiktoken"])
def test_save_load_roundtrip(tmp_path, gpt2_tokenizer, corpus_docs, fmt):
    paths = gpt2_tokenizer.save(tmp_path, format=fmt)
    assert all(p.exists() for p in paths)
    again = Tokenizer.from_files(tmp_path)
    assert again.n_vocab == gpt2_tokenizer.n_vocab
    assert again.special_tokens == gpt2_tokenizer.special_tokens
    texts = _texts(corpus_docs)
    assert again.encode_ordinary_batch(texts) == gpt2_tokenizer.encode_ordinary_batch(texts)
    # each file of the pair also works as the argument
    assert Tokenizer.from_files(paths[-1]).encode("hi there") == gpt2_tokenizer.encode("hi there")


def test_saved_gpt2_files_match_official(tmp_path, gpt2_tokenizer, gpt2_dir):
    gpt2_tokenizer.save(tmp_path)
    assert json.loads((tmp_path / "encoder.json").read_text()) == json.loads((gpt2_dir / "encoder.json").read_text())
    assert (tmp_path / "vocab.bpe").read_text().split("\n")[1:] == (gpt2_dir / "vocab.bpe").read_text().split("\n")[1:]


def test_hf_tokenizers_load_our_files(tmp_path, gpt2_tokenizer, corpus_docs):
    tokenizers = pytest.importorskip("tokenizers")
    gpt2_tokenizer.save(tmp_path, format="hf")
    model = tokenizers.models.BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tokenizers.decoders.ByteLevel()
    texts = [d for docs in corpus_docs.values() for d in docs[:30]]
    got = [e.ids for e in hf.encode_batch(texts)]
    assert got == gpt2_tokenizer.encode_ordinary_batch(texts)


def test_tiktoken_file_loads_in_tiktoken(tmp_path, gpt2_tokenizer, tiktoken_gpt2):
    import tiktoken.load

    (path,) = gpt2_tokenizer.save(tmp_path, format="tiktoken")
    ranks = tiktoken.load.load_tiktoken_bpe(str(path))
    assert ranks == tiktoken_gpt2._mergeable_ranks
    assert gpt2_tokenizer.mergeable_ranks == ranks


def test_from_ranks_matches(gpt2_tokenizer, tiktoken_gpt2, corpus_docs):
    tok = Tokenizer.from_ranks(tiktoken_gpt2._mergeable_ranks, {"<|endoftext|>": 50256})
    texts = _texts(corpus_docs)
    assert tok.encode_ordinary_batch(texts) == gpt2_tokenizer.encode_ordinary_batch(texts)


def _copy_pair(src, dst, enc=None, bpe=None):
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "encoder.json").write_bytes(enc if enc is not None else (src / "encoder.json").read_bytes())
    (dst / "vocab.bpe").write_bytes(bpe if bpe is not None else (src / "vocab.bpe").read_bytes())
    return dst


def test_malformed_gpt2_files(tmp_path, gpt2_dir):
    enc = (gpt2_dir / "encoder.json").read_bytes()
    bpe = (gpt2_dir / "vocab.bpe").read_bytes()
    cases = {
        "badjson": (enc[:-2] + b",,}", None, "encoder.json, line 1: bad JSON"),
        "dup": (enc.replace(b'"!": 0,', b'"!": 0, "!": 7,', 1), None, 'encoder.json, line 1: duplicate token "!"'),
        "dupid": (enc.replace(b'"\\"": 1,', b'"\\"": 0,', 1), None, "share id 0"),
        "nonint": (enc.replace(b'"!": 0,', b'"!": "zero",', 1), None, "not a non-negative integer"),
        "header": (None, b"version 0.2\n" + bpe.split(b"\n", 1)[1], "vocab.bpe, line 1: expected a '#version' header"),
        "unknown": (None, bpe.replace(b"\n\xc4\xa0 t\n", b"\n\xc4\xa0 zzqq\n", 1), 'vocab.bpe, line 2: merge names unknown symbol "zzqq"'),
        "fields": (None, bpe.replace(b"\n\xc4\xa0 t\n", b"\n\xc4\xa0 t x\n", 1), "vocab.bpe, line 2: expected two symbols"),
        "utf8": (None, bpe.replace(b"\n\xc4\xa0 t\n", b"\n\xff t\n", 1), "vocab.bpe, line 2: not valid UTF-8"),
        "utf8json": (b'{"\xff": 1}', None, "encoder.json, line 1: not valid UTF-8"),
        "result": (None, bpe.replace(b"\n\xc4\xa0 t\n", b"\n\xc4\xa0 \xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\xc4\xa0\n", 1), "vocab.bpe, line 2"),
    }
    for name, (e, b, msg) in cases.items():
        d = _copy_pair(gpt2_dir, tmp_path / name, e, b)
        with pytest.raises(ValueError) as info:
            Tokenizer.from_files(d)
        assert msg in str(info.value), (name, str(info.value))
        assert str(d) in str(info.value), name


def test_missing_files(tmp_path, gpt2_dir):
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        Tokenizer.from_files(tmp_path)
    (tmp_path / "encoder.json").write_bytes((gpt2_dir / "encoder.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="vocab.bpe"):
        Tokenizer.from_files(tmp_path / "encoder.json")
    with pytest.raises(FileNotFoundError, match="nope.tiktoken"):
        Tokenizer.from_files(tmp_path / "nope.tiktoken")
    with pytest.raises(FileNotFoundError):
        _core.CoreBPE.from_gpt2_files(str(tmp_path / "x.json"), str(tmp_path / "y.bpe"), "gpt2")


def test_malformed_tiktoken(tmp_path, gpt2_tokenizer):
    (path,) = gpt2_tokenizer.save(tmp_path, format="tiktoken")
    lines = path.read_bytes().split(b"\n")
    bad = {
        "b64": (lines[:3] + [b"!!!! 3"] + lines[4:], "line 4: bad base64"),
        "rank": (lines[:3] + [lines[3].split()[0] + b" x"] + lines[4:], "line 4: bad rank"),
        "dup": (lines[:3] + [lines[2]] + lines[4:], "line 4: duplicate token (first on line 3)"),
        "utf8": (lines[:3] + [b"\xff\xfe 3"] + lines[4:], "line 4: not valid UTF-8"),
        "missingbyte": (lines[1:], "lacks the single-byte token"),
    }
    for name, (content, msg) in bad.items():
        p = tmp_path / f"{name}.tiktoken"
        p.write_bytes(b"\n".join(content))
        with pytest.raises(ValueError) as info:
            Tokenizer.from_files(p)
        assert msg in str(info.value) and str(p) in str(info.value), (name, str(info.value))


def test_bad_pattern_and_ranks():
    with pytest.raises(ValueError, match="unknown pre-tokenization pattern"):
        Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, pattern="nope")
    with pytest.raises(ValueError, match="lacks the single-byte token 0x00"):
        Tokenizer.from_ranks({bytes([i]): i for i in range(1, 256)})
    with pytest.raises(ValueError, match="special token"):
        Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, {"<s>": 3})


# --- gpt2(): env override, cache, offline error ---------------------------------------
def test_gpt2_constructor(tmp_path, monkeypatch, gpt2_dir):
    monkeypatch.setenv("GPTLITE_GPT2_DIR", str(gpt2_dir))
    assert Tokenizer.gpt2().encode("Hello world") == [15496, 995]
    monkeypatch.delenv("GPTLITE_GPT2_DIR")
    # a cache dir holding the right files is used without any download
    cache = _copy_pair(gpt2_dir, tmp_path / "cache")
    monkeypatch.setattr("gptlite.tokenizer.encoding._download", lambda url: pytest.fail(f"downloaded {url}"))
    assert Tokenizer.gpt2(cache_dir=cache).n_vocab == 50257
    # XDG_CACHE_HOME is honoured; files are downloaded, checked, and written
    import gptlite.tokenizer.encoding as mod

    fetched = []

    def fake_download(url):
        fetched.append(url)
        return (gpt2_dir / url.rsplit("/", 1)[1]).read_bytes()

    monkeypatch.setattr(mod, "_download", fake_download)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Tokenizer.gpt2().encode("Hello") == [15496]
    assert (tmp_path / "xdg/gptlite/gpt2/vocab.bpe").exists() and len(fetched) == 2
    # corrupted download: sha256 mismatch
    monkeypatch.setattr(mod, "_download", lambda url: b"garbage")
    with pytest.raises(RuntimeError, match="sha256"):
        Tokenizer.gpt2(cache_dir=tmp_path / "other")
    # offline: a clear message naming the override
    monkeypatch.setattr(mod, "_download", ORIG_DOWNLOAD)

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(mod.urllib.request, "urlopen", no_network)
    with pytest.raises(RuntimeError, match="GPTLITE_GPT2_DIR"):
        Tokenizer.gpt2(cache_dir=tmp_path / "offline")


# --- pickling and threads ------------------------------------------------------------
def test_pickle(gpt2_tokenizer):
    again = pickle.loads(pickle.dumps(gpt2_tokenizer))
    text = "Pickled tokenizers <|endoftext|> work."
    assert again.encode(text, allowed_special="all") == gpt2_tokenizer.encode(text, allowed_special="all")
    assert again.n_vocab == gpt2_tokenizer.n_vocab and again.name == gpt2_tokenizer.name


def test_threads_share_one_tokenizer(gpt2_tokenizer, corpus_docs):
    docs = [d for docs in corpus_docs.values() for d in docs[:50]]
    want = [gpt2_tokenizer.encode_ordinary(d) for d in docs]
    results = {}

    def work(k):
        results[k] = [gpt2_tokenizer.encode_ordinary(d) for d in docs[k::4]]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert results[k] == want[k::4]
    for n in (1, 2, 3, 8):
        assert gpt2_tokenizer.encode_ordinary_batch(docs, num_threads=n) == want


# --- pathological inputs -------------------------------------------------------------
PATHOLOGICAL = {
    "one_letter": lambda n: "a" * n,
    "one_emoji": lambda n: "😀" * (n // 4),
    "no_spaces": lambda n: ("abcdefghijklmnopqrstuvwxyz0123456789" * (n // 36 + 1))[:n].replace("0", "").replace("9", "é"),
    "digits": lambda n: "7" * n,
    "spaces": lambda n: " " * n,
    "newlines": lambda n: "\n" * n,
    "mixed_ws": lambda n: (" \t\r\n" * (n // 4)),
    "punct": lambda n: "!?" * (n // 2),
}


@pytest.mark.parametrize("kind", sorted(PATHOLOGICAL))
def test_pathological_match_tiktoken(gpt2_tokenizer, tiktoken_gpt2, kind):
    text = PATHOLOGICAL[kind](20_000)
    ids = gpt2_tokenizer.encode_ordinary(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2_tokenizer.decode(ids) == text


@pytest.mark.parametrize("kind", ["one_letter", "one_emoji", "no_spaces"])
def test_pathological_1mb(gpt2_tokenizer, kind):
    text = PATHOLOGICAL[kind](1_000_000)
    ids = gpt2_tokenizer.encode_ordinary(text)
    assert gpt2_tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())


def test_split_patterns():
    assert _core.split("Hello  world's", "gpt2") == ["Hello", " ", " world", "'s"]
    assert _core.split("HELLO'S 12345", "cl100k") == ["HELLO", "'S", " ", "123", "45"]
    with pytest.raises(ValueError, match="pattern"):
        _core.split("x", "nope")


def test_loads_files_written_by_hf_tokenizers(tmp_path, gpt2_tokenizer, gpt2_dir):
    tokenizers = pytest.importorskip("tokenizers")
    model = tokenizers.models.BPE.from_file(str(gpt2_dir / "encoder.json"), str(gpt2_dir / "vocab.bpe"))
    model.save(str(tmp_path))  # vocab.json + merges.txt
    tok = Tokenizer.from_files(tmp_path)
    text = "Files written by HF tokenizers <|endoftext|> load too."
    assert tok.encode(text, allowed_special="all") == gpt2_tokenizer.encode(text, allowed_special="all")
