"""The BPE trainer: exactness against the naive reference, round trips, bad input, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlite.tokenizer import bpe_train as trainer
from gptlite.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).parent))
import reference_trainer as ref  # noqa: E402

from conftest import CORPORA  # noqa: E402

BIG = CORPORA / "big.txt"


def _head(path: Path, n: int) -> str:
    """The first ~n bytes of a UTF-8 file, cut at a line end."""
    data = path.read_bytes()[:n]
    return data[: data.rfind(b"\n") + 1].decode("utf-8")


# --- exactness against the naive reference ------------------------------------------

def test_matches_reference_on_shared_corpus():
    text = _head(BIG, 200_000)
    counts = ref.count_words([text])
    assert trainer.count_pretokens(texts=[text]) == dict(counts)
    want, want_tokens = ref.train(counts, 500)
    got = trainer.train_bpe(texts=[text], vocab_size=256 + 500, special_tokens=())
    assert got.merges == want
    assert got.tokens == want_tokens
    assert len(got.tokens) == 256 + 500
    # counts are the pair counts at merge time: non-increasing is not guaranteed, positive is
    assert all(c >= 1 for c in got.counts)


def test_matches_reference_cl100k_multibyte():
    texts = [p.read_text(encoding="utf-8")[:3_000] for p in sorted((CORPORA / "lipsum").glob("*.txt"))]
    assert len(texts) >= 5
    counts = ref.count_words(texts, "cl100k")
    assert trainer.count_pretokens(texts=texts, pattern="cl100k") == dict(counts)
    want, _ = ref.train(counts, 200)
    got = trainer.train_bpe(texts=texts, vocab_size=256 + 200, special_tokens=(), pattern="cl100k")
    assert got.merges == want


ALPHABET = "aab  bc\n\t'sxyzAB01.,!-éß日本🙂\u00a0\r"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.text(alphabet=ALPHABET, max_size=60), min_size=1, max_size=6),
    n_new=st.integers(1, 60),
    min_frequency=st.integers(1, 3),
    pattern=st.sampled_from(["gpt2", "cl100k"]),
)
def test_matches_reference_hypothesis(texts, n_new, min_frequency, pattern):
    counts = ref.count_words(texts, pattern)
    if not counts:
        with pytest.raises(ValueError, match="empty corpus"):
            trainer.train_bpe(texts=texts, vocab_size=256 + n_new, special_tokens=(), pattern=pattern)
        return
    assert trainer.count_pretokens(texts=texts, pattern=pattern) == dict(counts)
    want, want_tokens = ref.train(counts, n_new, min_frequency)
    got = trainer.train_bpe(texts=texts, vocab_size=256 + n_new, special_tokens=(),
                            min_frequency=min_frequency, pattern=pattern)
    assert got.merges == want
    assert got.tokens == want_tokens
    # the word-count path gives the same
    got2 = trainer.train_bpe(word_counts=dict(counts), vocab_size=256 + n_new, special_tokens=(),
                             min_frequency=min_frequency)
    assert got2.merges == want


def test_tie_break_and_min_frequency():
    # (a,b) and (b,a) both occur twice: the smaller pair (97, 98) wins.
    r = trainer.train_bpe(word_counts={"ab": 2, "ba": 2, "cd": 1}, vocab_size=300, special_tokens=())
    assert r.merges[:2] == [(97, 98, 256), (98, 97, 257)]
    assert r.merges[2] == (99, 100, 258)
    assert len(r.merges) == 3  # nothing left to merge: stops early
    r = trainer.train_bpe(word_counts={"ab": 2, "ba": 2, "cd": 1}, vocab_size=300, special_tokens=(),
                          min_frequency=2)
    assert len(r.merges) == 2
    assert r.special_tokens == {}


def test_word_counts_bytes_keys_and_duplicates_sum():
    # str and bytes keys with the same bytes are one word; zero counts are ignored
    r = trainer.train_bpe(word_counts={b"ab": 2, "ab": 1, "ba": 2, "zz": 0, b"\xff\xfe": 1},
                          vocab_size=258, special_tokens=())
    assert r.merges == [(97, 98, 256), (98, 97, 257)]
    assert r.counts == [3, 2]


def test_overlapping_pairs_counted_and_merged_left_to_right():
    r = trainer.train_bpe(word_counts={"aaa": 1}, vocab_size=258, special_tokens=())
    # "aaa" holds (a,a) twice; merged left to right -> [aa, a] -> (aa, a)
    assert r.merges == [(97, 97, 256), (256, 97, 257)]
    assert r.counts == [2, 1]
    assert r.tokens[257] == b"aaa"


# --- counting API ------------------------------------------------------------------

def test_files_texts_and_shards_agree(tmp_path):
    text = _head(BIG, 120_000)
    lines = text.splitlines(keepends=True)
    half = len(lines) // 2
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(lines[:half]), encoding="utf-8")
    b.write_text("".join(lines[half:]), encoding="utf-8")
    whole = trainer.count_pretokens(texts=["".join(lines[:half]), "".join(lines[half:])])
    assert trainer.count_pretokens(files=[a, b]) == whole
    shards = [trainer.count_pretokens(files=a), trainer.count_pretokens(files=[str(b)])]
    assert trainer.merge_counts(shards) == whole
    kw = dict(vocab_size=256 + 200, special_tokens=("<|endoftext|>",))
    r1 = trainer.train_bpe(files=[a, b], **kw)
    r2 = trainer.train_bpe(texts=iter(["".join(lines[:half]), "".join(lines[half:])]), **kw)
    r3 = trainer.train_bpe(word_counts=trainer.merge_counts(shards), **kw)
    assert r1.merges == r2.merges == r3.merges
    assert r1.special_tokens == {"<|endoftext|>": 455}
    assert r1.stats["corpus_bytes"] == len(text.encode())


def test_large_file_chunked_parallel_and_deterministic(tmp_path):
    # > 1 MB so the file is cut into chunks counted on several threads
    text = _head(BIG, 2_600_000)
    p = tmp_path / "big.txt"
    p.write_text(text, encoding="utf-8")
    c1 = trainer.count_pretokens(files=p, num_threads=1)
    c2 = trainer.count_pretokens(files=p, num_threads=2)
    assert c1 == c2 == trainer.count_pretokens(texts=[text], num_threads=1)
    assert list(c1) == sorted(c1)  # reproducible order
    kw = dict(vocab_size=256 + 1000)
    m1 = trainer.train_bpe(files=p, num_threads=1, **kw).merges
    m2 = trainer.train_bpe(files=p, num_threads=2, **kw).merges
    assert m1 == m2


def test_deterministic_across_rayon_num_threads(tmp_path):
    script = (
        "import sys, json; from gptlite.tokenizer import bpe_train as trainer\n"
        f"r = trainer.train_bpe(files=[{str(BIG)!r}], vocab_size=256 + 300)\n"
        "print(json.dumps(r.merges))\n"
    )
    outs = []
    for n in ("1", "2"):
        env = dict(child_env(), RAYON_NUM_THREADS=n)
        outs.append(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                   capture_output=True, text=True).stdout)
    assert json.loads(outs[0]) == json.loads(outs[1])
    assert len(json.loads(outs[0])) == 300 - 1  # one id goes to <|endoftext|>


# --- round trips ---------------------------------------------------------------------

UNSEEN = ("The quick brown fox jumps over the lazy dog's back; ünïcödé, 日本語, emoji 🙂🙂 "
          "and numbers 1234567 — in 2026.\n\n  Indented   spaces\ttabs\r\nCRLF")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    text = _head(BIG, 300_000)
    tok_dir = tmp_path_factory.mktemp("tok")
    r = trainer.train_bpe(texts=[text], vocab_size=1000)
    tok = r.to_tokenizer(name="small")
    return r, tok, text, tok_dir


def test_tokenizer_encodes_like_training(trained):
    r, tok, text, _ = trained
    assert tok.n_vocab == 1000
    assert tok.eot_token == 999
    ids = tok.encode_ordinary(text)
    # the encoder's segmentation of the training text is the trainer's own
    assert len(ids) == r.stats["training_tokens"]
    for s in (text[:5000], UNSEEN, ""):
        assert tok.decode(tok.encode(s)) == s
    assert tok.encode("<|endoftext|>", allowed_special="all") == [999]


def test_round_trip_tiktoken_and_hf(trained):
    tiktoken = pytest.importorskip("tiktoken")
    import tiktoken.load
    pytest.importorskip("tokenizers")
    from gptlite.tokenizer.encoding import Tokenizer

    r, tok, text, d = trained
    tok.save(d, format="gpt2")
    tok.save(d, format="hf")
    (tk_path,) = tok.save(d, format="tiktoken")
    samples = [text[:20_000], UNSEEN]
    want = [tok.encode_ordinary(s) for s in samples]

    # gptlite reloads each format
    for path in (d / "encoder.json", d / "vocab.json", tk_path):
        again = Tokenizer.from_files(path)
        assert [again.encode_ordinary(s) for s in samples] == want
        assert again.eot_token == 999

    # tiktoken, from the GPT-2 files and from the rank file
    # Our byte tokens have ids 0-255 in byte order, not GPT-2's printable-first
    # order, so the data-gym loader must take single-byte ranks from encoder.json.
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(d / "vocab.bpe"), str(d / "encoder.json"),
                                                          clobber_one_byte_tokens=True)
    assert ranks == r.mergeable_ranks()
    assert tiktoken.load.load_tiktoken_bpe(str(tk_path)) == r.mergeable_ranks()
    enc = tiktoken.Encoding("small", pat_str=ref.PATTERNS["gpt2"], mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 999})
    assert [enc.encode_ordinary(s) for s in samples] == want
    assert enc.encode("<|endoftext|>", allowed_special="all") == [999]

    # HF tokenizers, from vocab.json + merges.txt with a ByteLevel pre-tokenizer
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    hf = HFTokenizer(models.BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    assert [hf.encode(s).ids for s in samples] == want
    assert hf.decode(want[1]) == UNSEEN


# --- bad input -----------------------------------------------------------------------

def test_bad_input(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty corpus"):
        trainer.train_bpe(files=[empty], vocab_size=300)
    with pytest.raises(ValueError, match="empty corpus"):
        trainer.train_bpe(texts=["", ""], vocab_size=300)
    with pytest.raises(ValueError, match="empty corpus"):
        trainer.train_bpe(word_counts={}, vocab_size=300)
    with pytest.raises(ValueError, match="no input"):
        trainer.train_bpe(vocab_size=300)
    with pytest.raises(ValueError, match=r"below 256 .* = 258"):
        trainer.train_bpe(texts=["abc"], vocab_size=257, special_tokens=("<a>", "<b>"))
    with pytest.raises(ValueError, match="duplicate special token '<a>'"):
        trainer.train_bpe(texts=["abc"], vocab_size=300, special_tokens=("<a>", "<a>"))
    with pytest.raises(ValueError, match="non-empty"):
        trainer.train_bpe(texts=["abc"], vocab_size=300, special_tokens=("",))
    with pytest.raises(ValueError, match="pattern"):
        trainer.train_bpe(texts=["abc"], vocab_size=300, pattern="gpt5")
    with pytest.raises(ValueError, match="vocab_size"):
        trainer.train_bpe(texts=["abc"], vocab_size="300")
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        trainer.train_bpe(files=[empty, missing], vocab_size=300)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        trainer.train_bpe(files=[tmp_path], vocab_size=300)
    with pytest.raises(ValueError, match=r"texts\[1\] is int, not str"):
        trainer.train_bpe(texts=["abc", 5], vocab_size=300)
    with pytest.raises(ValueError, match="not a single string"):
        trainer.train_bpe(texts="abc", vocab_size=300)
    with pytest.raises(ValueError, match="not a count"):
        trainer.train_bpe(word_counts={"ab": -1}, vocab_size=300)
    with pytest.raises(ValueError, match="too large"):
        trainer.train_bpe(word_counts={"ab": 2**62, "abc": 2**62}, vocab_size=300)
    with pytest.raises(ValueError, match="not str or bytes"):
        trainer.train_bpe(word_counts={5: 1}, vocab_size=300)
    with pytest.raises(ValueError, match="num_threads"):
        trainer.count_pretokens(texts=["a"], num_threads=0)
    with pytest.raises(ValueError, match="not a non-negative int"):
        trainer.merge_counts([{"a": 1}, {"a": "2"}])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file(tmp_path):
    p = tmp_path / "secret.txt"
    p.write_text("hello")
    p.chmod(0)
    with pytest.raises(PermissionError, match="secret.txt"):
        trainer.train_bpe(files=[p], vocab_size=300)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_read_error_is_oserror_naming_file():
    # opening succeeds, reading fails (EIO): works as root too
    with pytest.raises(OSError, match="/proc/self/mem: Input/output error"):
        trainer.count_pretokens(files=["/proc/self/mem"])


def test_invalid_utf8(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("hello world " * 10)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xc3\xa9 ok\n" * 1000 + b"abc \xff\xfe tail")
    offset = len(b"caf\xc3\xa9 ok\n" * 1000) + 4
    with pytest.raises(ValueError, match=rf"bad\.txt: not valid UTF-8 at byte offset {offset}\b"):
        trainer.train_bpe(files=[good, bad], vocab_size=300)
    with pytest.raises(ValueError, match=rf"byte offset {offset}\b"):
        trainer.count_pretokens(files=[bad])
    counts = trainer.count_pretokens(files=[bad], errors="replace")
    assert counts[" \ufffd\ufffd"] == 1
    assert counts == dict(ref.count_words([bad.read_bytes().decode("utf-8", errors="replace")]))
    r = trainer.train_bpe(files=[good, bad], vocab_size=300, errors="replace")
    fixed = [good.read_text(), bad.read_bytes().decode("utf-8", errors="replace")]
    assert r.merges == ref.train(ref.count_words(fixed), 300 - 257)[0]
    # a lone surrogate in a Python str cannot be UTF-8
    with pytest.raises(ValueError, match="surrogate"):
        trainer.train_bpe(texts=["ok", "bad \ud800"], vocab_size=300)


def test_progress_callback_and_interrupt():
    text = _head(BIG, 200_000)
    seen = []
    trainer.train_bpe(texts=[text], vocab_size=256 + 600,
                      progress=lambda phase, done, total: seen.append((phase, done, total)))
    phases = [s[0] for s in seen]
    assert phases[0] == "count" and phases[-1] == "merge"
    assert seen[-1][1:] == (599, 599)
    assert [s[1] for s in seen if s[0] == "merge"] == sorted(s[1] for s in seen if s[0] == "merge")

    class Stop(Exception):
        pass

    def stop(phase, done, total):
        if phase == "merge":
            raise Stop("user stop")

    with pytest.raises(Stop, match="user stop"):
        trainer.train_bpe(texts=[text], vocab_size=256 + 600, progress=stop)


# --- CLI -----------------------------------------------------------------------------

def test_cli_train(tmp_path, capsys):
    a = tmp_path / "a.txt"
    a.write_text(_head(BIG, 150_000), encoding="utf-8")
    b = CORPORA / "lipsum" / "Latin.txt"
    out = tmp_path / "tok"
    rc = cli_main(["tokenizer", "train", "--vocab-size", "700", "--out", str(out), "--special", "<|endoftext|>",
                   "--special", "<|pad|>", "--quiet", str(a), str(b)])
    assert rc == 0
    summary = capsys.readouterr().out
    assert "bytes/token on the training text" in summary and "unique" in summary
    assert sorted(f.name for f in out.iterdir()) == ["encoder.json", "tok.tiktoken", "tokenizer_train.json", "vocab.bpe"]
    from gptlite.tokenizer.encoding import Tokenizer

    tok = Tokenizer.from_files(out)
    assert tok.n_vocab == 700 and tok.special_tokens == {"<|endoftext|>": 698, "<|pad|>": 699}
    want = trainer.train_bpe(files=[a, b], vocab_size=700, special_tokens=("<|endoftext|>", "<|pad|>"))
    assert tok.mergeable_ranks == want.mergeable_ranks()
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temp dirs left
    # what the CLI wrote loads in tiktoken and HF tokenizers and encodes the same
    import tiktoken.load
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

    enc = tiktoken.Encoding("tok", pat_str=ref.PATTERNS["gpt2"],
                            mergeable_ranks=tiktoken.load.load_tiktoken_bpe(str(out / "tok.tiktoken")),
                            special_tokens=tok.special_tokens)
    hf = HFTokenizer(models.BPE.from_file(str(out / "encoder.json"), str(out / "vocab.bpe")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ids = tok.encode_ordinary(UNSEEN)
    assert enc.encode_ordinary(UNSEEN) == ids == hf.encode(UNSEEN).ids
    # the whole training text too, and `gptlite encode -t DIR` uses the trained tokenizer
    train_text = a.read_text(encoding="utf-8")
    assert enc.encode_ordinary(train_text) == tok.encode_ordinary(train_text) == hf.encode(train_text).ids
    n_bytes = a.stat().st_size + b.stat().st_size
    assert "700 = 256 bytes + 442 merges + 2 special" in summary and f"{n_bytes:,} bytes in 2 file(s)" in summary
    assert "counting" in summary and "merging" in summary
    capsys.readouterr()
    assert cli_main(["encode", "-t", str(out), UNSEEN]) == 0
    assert [int(x) for x in capsys.readouterr().out.split()] == tok.encode(UNSEEN)

    # user errors: one line, exit status 2, no output written
    bad_out = tmp_path / "bad"
    assert cli_main(["tokenizer", "train", "--vocab-size", "10", "--out", str(bad_out), "--quiet", str(a)]) == 2
    assert cli_main(["tokenizer", "train", "--vocab-size", "300", "--out", str(bad_out), "--quiet",
                     str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert "vocab_size 10 is below" in err and "nope.txt" in err
    assert not bad_out.exists()


def test_cli_interrupt_leaves_no_output(tmp_path, monkeypatch, capsys):
    a = tmp_path / "a.txt"
    a.write_text(_head(BIG, 100_000), encoding="utf-8")
    out = tmp_path / "tok"

    def interrupt(self, phase, done, total):
        if phase == "merge":
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.ProgressBar, "__call__", interrupt)
    assert cli_main(["tokenizer", "train", "--vocab-size", "900", "--out", str(out), str(a)]) == 130
    assert not out.exists()

    # interrupted while saving: the target directory is not created half-written
    from gptlite.tokenizer import encoding as tokmod

    monkeypatch.setattr(trainer.ProgressBar, "__call__", lambda self, *a: None)
    real_save = tokmod.Tokenizer.save

    def save_then_die(self, directory, format="gpt2"):
        if format == "tiktoken":
            raise KeyboardInterrupt
        return real_save(self, directory, format)

    monkeypatch.setattr(tokmod.Tokenizer, "save", save_then_die)
    assert cli_main(["tokenizer", "train", "--vocab-size", "900", "--out", str(out), str(a)]) == 130
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [a]

    # an existing --out: a finished run replaces the tokenizer files and keeps
    # the others; a run interrupted while saving leaves the old directory whole
    monkeypatch.setattr(tokmod.Tokenizer, "save", real_save)
    assert cli_main(["tokenizer", "train", "--vocab-size", "600", "--out", str(out), str(a)]) == 0
    (out / "notes.txt").write_text("mine")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert "tokenizer_train.json" in before
    # an earlier training's output is replaced only with --overwrite
    assert cli_main(["tokenizer", "train", "--vocab-size", "700", "--out", str(out), str(a)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert cli_main(["tokenizer", "train", "--vocab-size", "700", "--out", str(out), "--overwrite", str(a)]) == 0
    after = {f.name: f.read_bytes() for f in out.iterdir()}
    assert after.keys() == before.keys() and after["notes.txt"] == b"mine"
    assert after["vocab.bpe"] != before["vocab.bpe"]
    monkeypatch.setattr(tokmod.Tokenizer, "save", save_then_die)
    assert cli_main(["tokenizer", "train", "--vocab-size", "900", "--out", str(out), "--overwrite", str(a)]) == 130
    assert {f.name: f.read_bytes() for f in out.iterdir()} == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "tok"]


def test_cli_subprocess_help():
    r = subprocess.run([sys.executable, "-m", "gptlite.cli", "tokenizer", "train", "--help"],
                       capture_output=True, text=True, check=True)
    assert "--vocab-size" in r.stdout and "--special" in r.stdout


def test_progress_bar_draws_both_phases(tmp_path):
    """The real bar (not replaced): counting in MB, then merging in tokens, a line each."""
    import io

    a = tmp_path / "a.txt"
    a.write_text(_head(BIG, 60_000), encoding="utf-8")
    out = io.StringIO()
    bar = trainer.ProgressBar(stream=out)
    trainer.train_bpe(files=[a], vocab_size=400, progress=bar)
    bar.close()
    lines = out.getvalue().split("\n")
    count = [ln for ln in lines if "counting" in ln]
    merge = [ln for ln in lines if "merging" in ln]
    assert count and merge and out.getvalue().index("counting") < out.getvalue().index("merging")
    # the final draw of each phase is a full bar with done == total (tqdm's format)
    last_count = count[0].rstrip().split("\r")[-1]
    assert last_count.startswith("counting: 100%") and ("kB" in last_count or "MB" in last_count)
    last_merge = merge[0].rstrip().split("\r")[-1]
    assert last_merge.startswith("merging: 100%") and "143/143" in last_merge and "tokens" in last_merge  # 400 - 256 bytes - 1 special


def test_tokenizer_train_never_writes_over_a_directory_it_did_not_make(tmp_path, capsys):
    """A directory holding someone's own vocabulary (or anything else) is refused, even
    with --overwrite; a format not asked for again leaves with the earlier training."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("low lower lowest newer wider " * 40, encoding="utf-8")
    theirs = tmp_path / "gpt2-vocab"
    theirs.mkdir()
    (theirs / "vocab.bpe").write_text("#version: 0.2\nl o\n")
    (theirs / "encoder.json").write_text("{}")
    before = {f.name: f.read_bytes() for f in theirs.iterdir()}
    for extra in ([], ["--overwrite"]):
        assert cli_main(["tokenizer", "train", "--vocab-size", "280", "--out", str(theirs), "--quiet", *extra, str(corpus)]) == 2
        err = capsys.readouterr().err
        assert "is not empty and is not a gptlite trained tokenizer" in err and len(err.strip().splitlines()) == 1
        assert {f.name: f.read_bytes() for f in theirs.iterdir()} == before
    # a forged or broken record does not make a directory ours either
    (theirs / "tokenizer_train.json").write_text('{"kind": "something else", "files": ["vocab.bpe"]}')
    assert cli_main(["tokenizer", "train", "--vocab-size", "280", "--out", str(theirs), "--quiet", "--overwrite", str(corpus)]) == 2
    assert (theirs / "vocab.bpe").read_bytes() == before["vocab.bpe"]

    out = tmp_path / "mine"
    assert cli_main(["tokenizer", "train", "--vocab-size", "280", "--out", str(out), "--quiet",
                     "--format", "gpt2", "--format", "hf", str(corpus)]) == 0
    import json

    rec = json.loads((out / "tokenizer_train.json").read_text())
    assert rec["kind"] == "gptlite tokenizer train" and rec["vocab_size"] == 280
    assert sorted(rec["files"]) == sorted(f.name for f in out.iterdir() if f.name != "tokenizer_train.json")
    assert {"encoder.json", "vocab.bpe", "merges.txt", "vocab.json"} <= set(rec["files"])
    assert cli_main(["tokenizer", "train", "--vocab-size", "290", "--out", str(out), "--quiet", "--overwrite",
                     "--format", "gpt2", str(corpus)]) == 0
    assert sorted(f.name for f in out.iterdir()) == ["encoder.json", "tokenizer_train.json", "vocab.bpe"]
