"""`gptlite encode` / `gptlite decode`."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gptlite import cli


@pytest.fixture(autouse=True)
def _gpt2_env(monkeypatch, gpt2_dir):
    monkeypatch.setenv("GPTLITE_GPT2_DIR", str(gpt2_dir))


def run(capsysbinary, *argv):
    rc = cli.main(list(argv))
    out, err = capsysbinary.readouterr()
    return rc, out, err.decode()


def test_show_ids_and_boundaries(capsysbinary):
    rc, out, _ = run(capsysbinary, "encode", "Hello world, it's 2024! 👍", "--show")
    assert rc == 0
    lines = out.decode().splitlines()
    assert lines[:2] == ["15496 'Hello'", "995 ' world'"]
    assert any(line.startswith("338 ") for line in lines)  # 's
    assert any("b'" in line for line in lines)  # the emoji's partial-UTF-8 tokens as bytes


def test_encode_decode_text(capsysbinary):
    rc, out, _ = run(capsysbinary, "encode", "Hello world")
    assert (rc, out) == (0, b"15496 995\n")
    rc, out, _ = run(capsysbinary, "decode", "15496", "995")
    assert (rc, out) == (0, b"Hello world")


@pytest.mark.parametrize("fmt", ["npy", "u16", "u32", "text"])
def test_streaming_equals_in_memory(tmp_path, capsysbinary, gpt2_tokenizer, corpora_dir, fmt):
    src = corpora_dir / "tinyshakespeare.txt"
    text = src.read_text(encoding="utf-8")[:200_000] + "  tail\r\n\t end  "
    inp = tmp_path / "in.txt"
    inp.write_bytes(text.encode("utf-8"))
    out = tmp_path / f"ids.{fmt}"
    # tiny chunks: the input is cut hundreds of times
    rc, _, err = run(capsysbinary, "encode", "-i", str(inp), "-o", str(out), "--format", fmt, "--chunk-chars", "997")
    assert rc == 0, err
    want = gpt2_tokenizer.encode(text)
    if fmt == "npy":
        got = np.load(out)
        assert got.dtype == np.uint16
    elif fmt == "text":
        got = np.array(out.read_text().split(), dtype=np.int64)
    else:
        got = np.frombuffer(out.read_bytes(), dtype="<u2" if fmt == "u16" else "<u4")
    assert got.tolist() == want
    back = tmp_path / "back.txt"
    rc, _, err = run(capsysbinary, "decode", "-i", str(out), "-o", str(back), "--format", fmt, "--chunk-ids", "101")
    assert rc == 0, err
    assert back.read_bytes() == inp.read_bytes()


def test_streaming_cut_cases(tmp_path, capsysbinary, gpt2_tokenizer):
    # cut candidates next to whitespace runs, contractions, specials, CR/LF, digits
    text = ("x  y's  'll\t z\r\n  12345 678 !!  ?? \u3000 a\u00a0 b <|endoftext|> c " * 300)
    inp = tmp_path / "in.txt"
    inp.write_text(text, encoding="utf-8", newline="")
    for chunk in ("1", "7", "64"):
        out = tmp_path / f"o{chunk}.npy"
        rc, _, err = run(capsysbinary, "encode", "-i", str(inp), "-o", str(out), "--ordinary", "--chunk-chars", chunk)
        assert rc == 0, err
        assert np.load(out).tolist() == gpt2_tokenizer.encode_ordinary(text), chunk
    out = tmp_path / "special.npy"
    rc, _, err = run(capsysbinary, "encode", "-i", str(inp), "-o", str(out), "--allow-special", "--chunk-chars", "5")
    assert rc == 0, err
    assert np.load(out).tolist() == gpt2_tokenizer.encode(text, allowed_special="all")


def test_cli_errors(tmp_path, capsysbinary):
    rc, _, err = run(capsysbinary, "encode", "a <|endoftext|> b")
    assert rc == 2 and "special token '<|endoftext|>'" in err and "--allow-special" in err
    rc, _, err = run(capsysbinary, "decode", "1", "99999")
    assert rc == 2 and "99999" in err and "position 1" in err
    rc, _, err = run(capsysbinary, "decode", "1", "x2")
    assert rc == 2 and "not an integer" in err
    rc, _, err = run(capsysbinary, "encode", "-i", str(tmp_path / "missing.txt"))
    assert rc == 2 and "missing.txt" in err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe bad")
    rc, _, err = run(capsysbinary, "encode", "-i", str(bad))
    assert rc == 2 and "bad.txt: not valid UTF-8" in err
    rc, _, err = run(capsysbinary, "encode", "x", "-t", str(tmp_path))
    assert rc == 2 and "no tokenizer files" in err
    odd = tmp_path / "odd.u16"
    odd.write_bytes(b"\x01\x00\x02")
    rc, _, err = run(capsysbinary, "decode", "-i", str(odd), "--format", "u16")
    assert rc == 2 and "multiple of 2" in err
    # a failed run leaves no partial output file
    out = tmp_path / "never.npy"
    rc, _, err = run(capsysbinary, "encode", "a <|endoftext|>", "-o", str(out))
    assert rc == 2 and not out.exists() and not list(tmp_path.glob(".never*"))


def test_decode_position_is_global(tmp_path, capsysbinary):
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(["11"] * 250 + ["70000"]))
    rc, _, err = run(capsysbinary, "decode", "-i", str(ids), "--chunk-ids", "100")
    assert rc == 2 and "70000" in err and "position 250" in err, err


def test_stdin_stdout_subprocess(gpt2_dir):
    env = {"GPTLITE_GPT2_DIR": str(gpt2_dir), "PATH": "/usr/bin:/bin"}
    enc = subprocess.run([sys.executable, "-m", "gptlite.cli", "encode"], input="Hello world\n".encode(),
                         capture_output=True, env=env, check=True)
    assert enc.stdout == b"15496 995 198\n"
    dec = subprocess.run([sys.executable, "-m", "gptlite.cli", "decode"], input=enc.stdout,
                         capture_output=True, env=env, check=True)
    assert dec.stdout == b"Hello world\n"


def test_offline_message(tmp_path, monkeypatch, capsysbinary):
    import gptlite.tokenizer.encoding as mod

    monkeypatch.delenv("GPTLITE_GPT2_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(mod.urllib.request, "urlopen", no_network)
    rc, _, err = run(capsysbinary, "encode", "hi")
    assert rc == 2 and "GPTLITE_GPT2_DIR" in err and "Traceback" not in err


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k", "o200k"])
def test_stream_cuts_keep_ids_for_every_pattern(gpt2_dir, pattern):
    # (alphabet: every kind of cut candidate - whitespace after letters, digits,
    # punctuation and whitespace; CR/LF before letters; U+001C which Python
    # counts as whitespace and the patterns do not; contractions; a special)
    """Every re-cut stream of tricky text encodes to the whole text's ids."""
    from gptlite.tokenizer.encoding import Tokenizer

    tok = Tokenizer.from_files(gpt2_dir, pattern=pattern)
    rng = np.random.default_rng(0)
    alphabet = list("ab Z9.,!'/\t\n\r ") + ["'S", "É", "ǅ", "\u3000", "\u00a0", "日", "本", "語", "。", "\u0301", "👍", "\x1c", "'s", "'ll", "<|endoftext|>"]
    for trial in range(30):
        text = "".join(rng.choice(alphabet, 400))
        for size in (1, 3, 17):
            chunks = [text[i:i + size] for i in range(0, len(text), size)]
            pieces = list(cli._stream_pieces(chunks, ["<|endoftext|>"], pattern))
            assert "".join(pieces) == text
            ids = [i for p in pieces for i in tok.encode(p, allowed_special="all")]
            assert ids == tok.encode(text, allowed_special="all"), (trial, size)


def test_stream_memory_bounded_without_spaces():
    """Text without spaces (Chinese, one line at a time) is still cut at line
    ends: pieces stay near the chunk size instead of growing with the input."""
    line = "日本語の文章は空白を使わずに書かれる。" * 5 + "\n"
    text = line * 20_000  # ~2 MB, no U+0020 at all
    chunks = [text[i:i + 4096] for i in range(0, len(text), 4096)]
    for pattern in ("gpt2", "cl100k", "o200k"):
        sizes = [len(p) for p in cli._stream_pieces(chunks, ["<|endoftext|>"], pattern)]
        assert sum(sizes) == len(text)
        assert max(sizes) <= 4096 + len(line), pattern


def test_raw_formats_from_suffix(tmp_path, capsysbinary, gpt2_tokenizer):
    inp = tmp_path / "in.txt"
    inp.write_text("Hello world, again and again.\n", encoding="utf-8")
    want = gpt2_tokenizer.encode(inp.read_text(encoding="utf-8"))
    for suffix, dtype in ((".u16", "<u2"), (".u32", "<u4")):
        out = tmp_path / f"ids{suffix}"
        rc, _, err = run(capsysbinary, "encode", "-i", str(inp), "-o", str(out))
        assert rc == 0, err
        assert np.frombuffer(out.read_bytes(), dtype=dtype).tolist() == want  # raw, not text
        rc, text, err = run(capsysbinary, "decode", "-i", str(out))
        assert rc == 0 and text == inp.read_bytes(), err
