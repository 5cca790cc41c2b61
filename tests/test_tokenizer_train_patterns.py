"""Training with every pre-tokenization pattern the encoder knows (o200k above all):
the naive reference, tiktoken, streamed files, saved files and the CLI agree."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gptlite import _core
from gptlite.cli import main as cli_main
from gptlite.tokenizer import bpe_train as trainer
from gptlite.tokenizer.encoding import Tokenizer

sys.path.insert(0, str(Path(__file__).parent))
import reference_trainer as ref  # noqa: E402
from conftest import CORPORA  # noqa: E402

tiktoken = pytest.importorskip("tiktoken")

# Cased words, contractions in both cases ("DON'T", "they'Re"), '/' after
# punctuation, CR/LF, digits, marks (Hindi), scripts without case (Chinese).
MIXED = ("The QUICK Brown fox's DON'T they'Re we'LL McDonald's iPhone HTTPRequest x//y a/b\r\n"
         "!!\n/usr/bin 12345 6789\n\n  tabs\tand  spaces ÉCOLE École ǅungla\n")


def _head(path: Path, n: int) -> str:
    data = path.read_bytes()[:n]
    return data[: data.rfind(b"\n") + 1].decode("utf-8")


def _texts() -> list:
    texts = [_head(CORPORA / "big.txt", 40_000), MIXED * 20]
    texts += [_head(CORPORA / "lipsum" / f"{lang}.txt", 4_000) for lang in ("Hindi", "Chinese", "Russian", "Latin")]
    return texts


def test_patterns_come_from_the_core():
    names = [name for name, _tk, _re in _core.patterns()]
    assert trainer.PATTERNS == tuple(names) and {"gpt2", "cl100k", "o200k"} <= set(names)
    assert set(ref.PATTERNS) == set(names)
    with pytest.raises(ValueError, match="o200k"):  # the message lists the core's names
        trainer.train_bpe(texts=["x"], vocab_size=300, pattern="nope")
    with pytest.raises(ValueError, match="'o200k'"):
        _core.count_pretokens(texts=["x"], pattern="nope")


def test_reference_uses_tiktokens_o200k_pattern(tmp_path, monkeypatch):
    """The oracle's o200k pattern is tiktoken's own pat_str (not ours)."""
    import hashlib
    import shutil

    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    shutil.copy(CORPORA.parent / "openai" / "o200k_base.tiktoken", tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert ref.PATTERNS["o200k"] == tiktoken.get_encoding("o200k_base")._pat_str


@pytest.mark.parametrize("pattern", ["o200k", "cl100k", "gpt2"])
def test_training_matches_reference(pattern):
    texts = _texts()
    counts = ref.count_words(texts, pattern)
    assert trainer.count_pretokens(texts=texts, pattern=pattern) == dict(counts)
    n_new = 300 if pattern == "o200k" else 120
    want, want_tokens = ref.train(counts, n_new)
    got = trainer.train_bpe(texts=texts, vocab_size=256 + n_new, special_tokens=(), pattern=pattern)
    assert got.merges == want
    assert got.tokens == want_tokens
    assert got.pattern == pattern


def test_o200k_pieces_differ_from_cl100k():
    """The o200k counts are not cl100k's in disguise: case splits and suffixed contractions."""
    o = trainer.count_pretokens(texts=[MIXED], pattern="o200k")
    c = trainer.count_pretokens(texts=[MIXED], pattern="cl100k")
    assert " DON'T" in o and " they'Re" in o and " Mc" in o and "Donald's" in o and "!!\n/" in o
    assert " DON" in c and "'T" in c and " McDonald" in c and "!!\n" in c


@pytest.fixture(scope="module")
def o200k_trained():
    return trainer.train_bpe(texts=_texts(), vocab_size=256 + 400, special_tokens=("<|endoftext|>",),
                             pattern="o200k")


def test_o200k_tokenizer_encodes_like_tiktoken(o200k_trained):
    tok = o200k_trained.to_tokenizer()
    assert tok.pattern == "o200k"
    enc = tiktoken.Encoding("trained-o200k", pat_str=ref.PATTERNS["o200k"],
                            mergeable_ranks=o200k_trained.mergeable_ranks(),
                            special_tokens=dict(o200k_trained.special_tokens))
    docs = _texts() + [_head(CORPORA / "lipsum" / f"{lang}.txt", 20_000) for lang in ("Arabic", "Emoji", "Korean")]
    docs += [_head(CORPORA / "wikitext-2" / "valid.txt", 60_000), "HELLO'S World'd ǅX ʰa \u0301b !\u0301! x/\n/"]
    for d in docs:
        ids = tok.encode_ordinary(d)
        assert ids == enc.encode_ordinary(d)
        assert tok.decode(ids) == d
    assert tok.encode("a<|endoftext|>B", allowed_special="all") == enc.encode("a<|endoftext|>B", allowed_special="all")


@pytest.mark.parametrize("fmt", ["gpt2", "hf"])
def test_saved_files_record_the_pattern(tmp_path, o200k_trained, fmt):
    tok = o200k_trained.to_tokenizer(name="t")
    tok.save(tmp_path, format=fmt)
    merges = tmp_path / ("vocab.bpe" if fmt == "gpt2" else "merges.txt")
    assert merges.read_text(encoding="utf-8").splitlines()[0] == "#version: 0.2 pattern: o200k"
    back = Tokenizer.from_files(tmp_path)
    assert back.pattern == "o200k"
    text = MIXED + _head(CORPORA / "lipsum" / "Hindi.txt", 5_000)
    assert back.encode_ordinary(text) == tok.encode_ordinary(text)
    assert back.mergeable_ranks == tok.mergeable_ranks and back.special_tokens == tok.special_tokens
    # asking for the pattern the files name is fine; another one is refused, naming the file
    assert Tokenizer.from_files(tmp_path, pattern="o200k").pattern == "o200k"
    with pytest.raises(ValueError, match=r"merges.txt|vocab.bpe") as e:
        Tokenizer.from_files(tmp_path, pattern="gpt2")
    assert "'o200k'" in str(e.value)
    if fmt == "hf":  # HF tokenizers reads the header line as the version line it skips
        hf = pytest.importorskip("tokenizers")
        hf_tok = hf.Tokenizer(hf.models.BPE.from_file(str(tmp_path / "vocab.json"), str(merges)))
        assert len(hf_tok.get_vocab()) == tok.n_vocab
        for word in ("the", "Which", "Project", "Gutenberg", "Holmes"):  # ASCII: GPT-2's byte map is the identity
            assert hf_tok.encode(word).ids == tok.encode_ordinary(word), word


def test_gpt2_pattern_files_name_no_pattern(tmp_path, gpt2_dir):
    """GPT-2-pattern files stay GPT-2's (byte-identical), and load with GPT-2's pattern."""
    tok = Tokenizer.from_files(gpt2_dir)
    tok.save(tmp_path, format="gpt2")
    assert (tmp_path / "vocab.bpe").read_bytes() == (gpt2_dir / "vocab.bpe").read_bytes()
    assert Tokenizer.from_files(tmp_path).pattern == "gpt2"
    # files naming no pattern take any one asked for
    assert Tokenizer.from_files(tmp_path, pattern="o200k").pattern == "o200k"


def test_unknown_pattern_in_file_is_refused(tmp_path, o200k_trained):
    o200k_trained.to_tokenizer().save(tmp_path, format="gpt2")
    bpe = tmp_path / "vocab.bpe"
    bpe.write_text(bpe.read_text(encoding="utf-8").replace("pattern: o200k", "pattern: o300k", 1), encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.bpe, line 1: unknown pre-tokenization pattern \"o300k\""):
        Tokenizer.from_files(tmp_path)


def test_pickle_keeps_the_pattern(o200k_trained):
    import pickle

    tok = o200k_trained.to_tokenizer()
    back = pickle.loads(pickle.dumps(tok))
    assert back.pattern == "o200k" and back.encode_ordinary(MIXED) == tok.encode_ordinary(MIXED)


def test_streamed_training_equals_in_memory_o200k(tmp_path):
    """Files are counted in blocks and ~1 MB chunks cut by the safe-cut rule:
    the counts, and so the merges, are those of the whole text at once."""
    text = (CORPORA / "big.txt").read_text(encoding="utf-8") + (MIXED * 2000)
    for lang in ("Hindi", "Chinese", "Arabic"):
        text += (CORPORA / "lipsum" / f"{lang}.txt").read_text(encoding="utf-8")
    assert len(text.encode()) > 3 * 2**20  # several chunks
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    whole = trainer.count_pretokens(texts=[text], pattern="o200k")
    for threads in (1, 2):
        assert trainer.count_pretokens(files=[path], pattern="o200k", num_threads=threads) == whole
    streamed = trainer.train_bpe(files=[path], vocab_size=256 + 300, special_tokens=(), pattern="o200k",
                                 num_threads=2)
    in_memory = trainer.train_bpe(word_counts=whole, vocab_size=256 + 300, special_tokens=(), pattern="o200k")
    assert streamed.merges == in_memory.merges and streamed.tokens == in_memory.tokens
    # the pattern reaches the file path (cl100k's pieces differ)
    assert trainer.count_pretokens(files=[path], pattern="cl100k") != whole


def test_cli_train_o200k(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(_texts()), encoding="utf-8")
    out = tmp_path / "tok"
    rc = cli_main(["tokenizer", "train", "--pattern", "o200k", "--vocab-size", "500", "--out", str(out),
                   "--quiet", str(corpus)])
    assert rc == 0
    assert "trained o200k byte-level BPE" in capsys.readouterr().out
    tok = Tokenizer.from_files(out)
    assert tok.pattern == "o200k"
    want = trainer.train_bpe(files=[corpus], vocab_size=500, pattern="o200k")
    assert tok.mergeable_ranks == want.mergeable_ranks()
    # `gptlite encode -t DIR` encodes with the recorded pattern, streamed
    rc = cli_main(["encode", "-t", str(out), "-i", str(corpus), "--chunk-chars", "997"])
    assert rc == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert ids == want.to_tokenizer().encode_ordinary(corpus.read_bytes().decode("utf-8"))  # CR kept


def test_cli_tiktoken_only_notes_the_pattern(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(MIXED * 10, encoding="utf-8")
    rc = cli_main(["tokenizer", "train", "--pattern", "o200k", "--vocab-size", "300", "--format", "tiktoken",
                   "--out", str(tmp_path / "tok"), "--quiet", str(corpus)])
    assert rc == 0
    assert "pattern='o200k'" in capsys.readouterr().out


def test_cli_pattern_choices_are_the_cores(capsys):
    with pytest.raises(SystemExit):
        cli_main(["tokenizer", "train", "--pattern", "nope", "--vocab-size", "300", "--out", "x", "y"])
    err = capsys.readouterr().err
    assert all(name in err for name in trainer.PATTERNS)
