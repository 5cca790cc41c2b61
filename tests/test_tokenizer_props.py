"""Property tests: gptlite == the reference == tiktoken on generated text.

Unicode version: CPython 3.11's `unicodedata` is Unicode 14.0, as are
regex-syntax 0.6.27's tables that gptlite's scanner is built from. Generated
text is restricted to code points *assigned* in Unicode 14 (category != Cn, no
surrogates) so that every side agrees on what a letter/number/space is. On
that set, `test_every_assigned_char_classified_alike` checks all 282,230 code
points: the `regex` package's and tiktoken's `\\s`, `\\p{L}`, `\\p{N}` agree with
ours (no disagreement found; U+001C..U+001F, which Python's `str.isspace()`
calls whitespace, are not Unicode White_Space and are "other" everywhere here).
"""
from __future__ import annotations

import sys
import unicodedata

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlite import _core
from reference_bpe import CL100K_PAT, GPT2_PAT

ASSIGNED = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000 and unicodedata.category(chr(c)) != "Cn"]
assert unicodedata.unidata_version == "14.0.0" or sys.version_info[:2] != (3, 11)

any_char = st.sampled_from(ASSIGNED).map(chr)
# Characters that exercise the pattern's branches, mixed with arbitrary ones.
special_chars = st.sampled_from(
    list(" \t\n\r\x0b\x0c\xa0\u2028\u3000\u200b'\"sStTrRvVeElLmMdD0129٣Ⅻ!?.,-_#@")
    + ["\u200d", "\u0301", "\u0308", "\x00", "\x01", "\x1c", "\x7f", "\u017f", "é", "中", "ß", "İ"]
    + ["😀", "👍", "🏽", "👨", "👩", "👧", "\ufe0f", "🇺", "🇸"]
)
chunks = st.sampled_from(
    ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'RE", "\r\n", "  ", "\t\t", " \n ", "123", "4567",
     "👨\u200d👩\u200d👧", "e\u0301", " a ", " b ", "<|endoftext|>", "don't", "I'LL", "  \r\n\r\n"]
)
text = st.lists(st.one_of(any_char, special_chars, special_chars, chunks), max_size=40).map("".join)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(text)
def test_matches_reference_and_tiktoken(gpt2_tokenizer, reference_gpt2, tiktoken_gpt2, s):
    ids = gpt2_tokenizer.encode_ordinary(s)
    assert ids == reference_gpt2.encode(s)
    assert ids == tiktoken_gpt2.encode_ordinary(s)
    assert gpt2_tokenizer.decode(ids) == s


@SETTINGS
@given(st.text(max_size=60))
def test_roundtrip_any_string(gpt2_tokenizer, tiktoken_gpt2, s):
    # st.text() includes lone surrogates: both sides replace them with U+FFFD
    ids = gpt2_tokenizer.encode_ordinary(s)
    assert ids == tiktoken_gpt2.encode_ordinary(s)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert gpt2_tokenizer.decode(ids) == s


@SETTINGS
@given(st.lists(st.integers(0, 50256), max_size=50))
def test_decode_bytes_is_concatenation(gpt2_tokenizer, tiktoken_gpt2, ids):
    b = gpt2_tokenizer.decode_bytes(ids)
    assert b == b"".join(gpt2_tokenizer.token_bytes(i) for i in ids)
    assert b == tiktoken_gpt2.decode_bytes(ids)
    assert gpt2_tokenizer.decode(ids) == b.decode("utf-8", "replace")


@SETTINGS
@given(text)
def test_split_matches_regex_both_patterns(s):
    assert _core.split(s, "gpt2") == regex.findall(GPT2_PAT, s)
    assert _core.split(s, "cl100k") == regex.findall(CL100K_PAT, s)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(text, max_size=8), st.integers(1, 4))
def test_batch_equals_single(gpt2_tokenizer, texts, n):
    assert gpt2_tokenizer.encode_ordinary_batch(texts, num_threads=n) == [gpt2_tokenizer.encode_ordinary(t) for t in texts]


def test_every_assigned_char_classified_alike():
    """Each assigned code point c, placed as 'x' c c '1' and ' ' c ' ', splits the
    same under gptlite and `regex` (both patterns), and encodes the same as tiktoken."""
    gpt2 = regex.compile(GPT2_PAT)
    cl100k = regex.compile(CL100K_PAT)
    bad = []
    for cp in ASSIGNED:
        c = chr(cp)
        for s in ("x" + c + c + "1", " " + c + " x"):
            if _core.split(s, "gpt2") != gpt2.findall(s) or _core.split(s, "cl100k") != cl100k.findall(s):
                bad.append(hex(cp))
    assert not bad, f"{len(bad)} code points classified differently from `regex`: {bad[:20]}"


def test_every_assigned_char_encodes_like_tiktoken(gpt2_tokenizer, tiktoken_gpt2):
    """tiktoken's classes (the Rust regex crate's tables) agree with ours on every
    assigned code point: compared through whole encodings, 64 code points a text."""
    samples = ["".join(" " + chr(cp) * 2 + "1\u3000" for cp in ASSIGNED[i:i + 64]) for i in range(0, len(ASSIGNED), 64)]
    ours = gpt2_tokenizer.encode_ordinary_batch(samples)
    theirs = tiktoken_gpt2.encode_ordinary_batch(samples, num_threads=1)
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not bad, [hex(ASSIGNED[i * 64]) for i in bad[:10]]


@pytest.mark.parametrize("s", ["'S", "'ſ", "'LL", "'Re", "\u017f", "x'ſ"])
def test_cl100k_case_insensitive_contractions(s):
    assert _core.split(s, "cl100k") == regex.findall(CL100K_PAT, s)


PATTERN_NAMES = [name for name, _tk, _re in _core.patterns()]


def _cut_ok(s: str, p: int, pattern: str) -> bool:
    from gptlite.cli import _safe_cut

    return _safe_cut(s[: p + 1], [], pattern=pattern) == p


@SETTINGS
@given(text)
def test_streaming_cut_rule(gpt2_tokenizer, s):
    """Every cut the CLI may make for a pattern (see cli._safe_cut) leaves that
    pattern's pre-tokenization, and so the ids, unchanged."""
    for pattern in PATTERN_NAMES:
        for p in [p for p in range(1, len(s)) if _cut_ok(s, p, pattern)]:
            assert _core.split(s[:p], pattern) + _core.split(s[p:], pattern) == _core.split(s, pattern), (p, pattern)
            if pattern == "gpt2":
                assert gpt2_tokenizer.encode_ordinary(s[:p]) + gpt2_tokenizer.encode_ordinary(s[p:]) == \
                    gpt2_tokenizer.encode_ordinary(s)


def test_streaming_cut_rule_rejects_unsafe_cuts():
    # inside a whitespace run; after whitespace in gpt2 (its \s+(?!\S) looks ahead);
    # between punctuation and CR/LF in cl100k (the punctuation piece takes them)
    for s, p, pattern in [("a   b", 2, "gpt2"), ("a \n b", 2, "gpt2"), ("  \nb", 3, "gpt2"),
                          ("!\nx", 1, "cl100k"), ("\x00\n", 1, "cl100k"), ("!\n/", 2, "o200k"),
                          ("ab'S", 2, "o200k"), ("a\u0301", 1, "o200k")]:
        assert _core.split(s[:p], pattern) + _core.split(s[p:], pattern) != _core.split(s, pattern), (s, p)
        assert not _cut_ok(s, p, pattern), (s, p, pattern)
