"""Every OpenAI encoding against tiktoken, and tiktoken's API under `import gptlite as tiktoken`."""
from __future__ import annotations

import hashlib
import pickle

import pytest
from hypothesis import given, settings, strategies as st

from conftest import OPENAI_BLOB, corpus_documents

tiktoken = pytest.importorskip("tiktoken")

# tiktoken has no r50k_base file here (same ranks as gpt2): compare r50k against tiktoken's gpt2.
ORACLE = {"gpt2": "gpt2", "r50k_base": "gpt2", "cl100k_base": "cl100k_base",
          "o200k_base": "o200k_base", "o200k_harmony": "o200k_harmony"}


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tiktoken_cache):
    """tiktoken and gptlite load from one cache filled from the shared data (conftest.tiktoken_cache)."""
    return tiktoken_cache


def pair(name):
    import gptlite

    return gptlite.get_encoding(name), tiktoken.get_encoding(ORACLE[name])


@pytest.fixture(scope="module")
def docs():
    return corpus_documents()


@pytest.mark.parametrize("name", list(ORACLE))
def test_every_corpus_matches_tiktoken(name, docs):
    ours, theirs = pair(name)
    assert ours.n_vocab == theirs.n_vocab
    assert ours.max_token_value == theirs.max_token_value
    if name != "r50k_base":
        assert ours._special_tokens == theirs._special_tokens
        assert ours._pat_str == theirs._pat_str
    for corpus, texts in docs.items():
        got = ours.encode_ordinary_batch(texts, num_threads=1)
        want = theirs.encode_ordinary_batch(texts, num_threads=1)
        for i, (g, w) in enumerate(zip(got, want)):
            if g != w:
                pytest.fail(f"{name}: {corpus} document {i} differs from tiktoken: {texts[i][:200]!r}")
        assert ours.decode(got[0]) == texts[0]


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(), max_size=60))
def test_arbitrary_unicode_with_surrogates_matches_tiktoken(text):
    for name in ("cl100k_base", "o200k_base", "gpt2"):
        ours, theirs = pair(name)
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text), (name, text)
        assert ours.encode(text, disallowed_special=()) == theirs.encode(text, disallowed_special=())
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            continue
        assert ours.decode(ours.encode_ordinary(text)) == text


@settings(max_examples=150, deadline=None)
@given(st.text(st.sampled_from("aAzZǅʰÉé\u0301\u0903 \t\n\r/'sStTlLdDmMvVrReE019٣!?.,\u3000中👍"), max_size=40))
def test_o200k_case_and_mark_alphabet_matches_tiktoken(text):
    ours, theirs = pair("o200k_base")
    assert ours.encode_ordinary(text) == theirs.encode_ordinary(text), text


def test_special_tokens_raise_like_tiktoken():
    for name in ("cl100k_base", "o200k_harmony"):
        ours, theirs = pair(name)
        text = "a <|endoftext|> b <|fim_prefix|> <|start|>"
        with pytest.raises(ValueError) as a:
            theirs.encode(text)
        with pytest.raises(ValueError) as b:
            ours.encode(text)
        assert str(a.value) == str(b.value)
        assert ours.encode(text, allowed_special="all") == theirs.encode(text, allowed_special="all")
        assert ours.encode(text, disallowed_special=()) == theirs.encode(text, disallowed_special=())
        assert ours.encode(text, allowed_special={"<|endoftext|>"}, disallowed_special=()) == \
            theirs.encode(text, allowed_special={"<|endoftext|>"}, disallowed_special=())


def test_model_names_and_errors():
    import gptlite

    for model in ("gpt2", "gpt-3.5-turbo", "gpt-4", "gpt-4o", "gpt-4o-mini", "o1", "o3-mini", "gpt-4.1", "gpt-5",
                  "gpt-oss-120b", "text-embedding-3-small"):
        assert gptlite.encoding_for_model(model).name == tiktoken.encoding_name_for_model(model), model
    with pytest.raises(ValueError, match="p50k_base.*not available"):
        gptlite.encoding_for_model("text-davinci-003")
    with pytest.raises(KeyError):
        gptlite.encoding_for_model("no-such-model")
    with pytest.raises(ValueError, match="Unknown encoding"):
        gptlite.get_encoding("nope")
    assert set(gptlite.list_encoding_names()) == set(ORACLE)


def test_missing_file_error_names_file_hash_and_offline_fix(tmp_path, monkeypatch):
    from gptlite.tokenizer import encodings

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(encodings, "_ENCODINGS", {})
    # A corrupt cached copy is not used; offline, the error says what to put where.
    url = f"{OPENAI_BLOB}/encodings/cl100k_base.tiktoken"
    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"corrupt")
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(RuntimeError) as e:
        encodings.get_encoding("cl100k_base")
    msg = str(e.value)
    assert "cl100k_base.tiktoken" in msg and "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7" in msg
    assert str(tmp_path) in msg and "wrong sha256" in msg


SNIPPET = '''
enc = tiktoken.get_encoding("cl100k_base")
out = {}
out["ids"] = enc.encode("hello world <|endoftext|>", allowed_special={"<|endoftext|>"})
out["ord"] = enc.encode_ordinary("tiktoken is great!")
out["dec"] = enc.decode(enc.encode("héllo 日本"))
out["batch"] = enc.encode_batch(["a b", "c d"], num_threads=2)
out["obatch"] = enc.encode_ordinary_batch(["x", "y z"])
out["single"] = enc.encode_single_token("hello")
out["single_special"] = enc.encode_single_token("<|endoftext|>")
out["tb"] = enc.decode_tokens_bytes(enc.encode("hello world"))
out["stb"] = enc.decode_single_token_bytes(enc.eot_token)
out["offs"] = enc.decode_with_offsets(enc.encode("héllo wörld"))
out["db"] = enc.decode_batch([[15339, 1917], [1]])
out["dbb"] = enc.decode_bytes_batch([[15339, 1917], [1]])
out["np"] = enc.encode_to_numpy("numpy me").tolist()
out["meta"] = (enc.name, enc.n_vocab, enc.max_token_value, enc.eot_token, sorted(enc.special_tokens_set))
out["tbv"] = len(enc.token_byte_values())
out["piece"] = enc._encode_single_piece("helloqqqq")
out["pat"] = enc._pat_str
out["ranks"] = (len(enc._mergeable_ranks), enc._mergeable_ranks[b"hello"])
out["pickle"] = pickle.loads(pickle.dumps(enc)).encode("round trip")
custom = tiktoken.Encoding("cl100k_im", pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                           special_tokens={**enc._special_tokens, "<|im_start|>": 100264, "<|im_end|>": 100265})
out["custom"] = custom.encode("<|im_start|>hi<|im_end|>", allowed_special="all")
out["custom_pickle"] = pickle.loads(pickle.dumps(custom)).encode("<|im_end|>", allowed_special="all")
for bad in (lambda: enc.encode_single_token("not one token at all"), lambda: enc.decode_single_token_bytes(100270)):
    try:
        bad()
    except KeyError as e:
        out.setdefault("keyerrors", []).append(type(e).__name__)
g = tiktoken.encoding_for_model("gpt-4o")
out["4o"] = (g.name, g.encode("Hello, GPT-4o!"))
out["names"] = sorted(n for n in tiktoken.list_encoding_names() if n not in ("p50k_base", "p50k_edit", "r50k_base"))
'''


def test_tiktoken_code_runs_unchanged_on_gptlite():
    import gptlite

    results = []
    for module in (tiktoken, gptlite):
        ns = {"tiktoken": module, "pickle": pickle}
        exec(SNIPPET, ns)
        results.append(ns["out"])
    theirs, ours = results
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k] == theirs[k], k


CUSTOM_PATS = [
    r"""\w+|[^\w\s]+|\s+""",  # no scanner: the general regex path
    r"""(?i:'s|'t)|\p{L}+(?=\s|$)|\p{L}+|\p{N}|\s+(?!\S)|\s+|.""",  # look-ahead, as fancy-regex allows
]


@pytest.mark.parametrize("pat", CUSTOM_PATS)
def test_custom_pattern_uses_general_regex_like_tiktoken(pat, docs):
    import gptlite

    base = tiktoken.get_encoding("cl100k_base")
    kw = dict(pat_str=pat, mergeable_ranks=base._mergeable_ranks, special_tokens=base._special_tokens)
    ours, theirs = gptlite.Encoding("custom", **kw), tiktoken.Encoding("custom", **kw)
    assert ours._regex is not None  # really the general-regex path
    texts = docs["lipsum/Latin.txt"][:20] + docs["tinyshakespeare.txt"][:50] + ["a <|endoftext|> b\U0001F600 it's"]
    for t in texts:
        assert ours.encode(t, allowed_special="all") == theirs.encode(t, allowed_special="all"), t[:100]
    assert ours.encode_ordinary_batch(texts) == theirs.encode_ordinary_batch(texts)
    with pytest.raises(ValueError, match="disallowed special token"):
        ours.encode("<|endoftext|>")
    assert pickle.loads(pickle.dumps(ours)).encode_ordinary(texts[0]) == theirs.encode_ordinary(texts[0])


def test_custom_pattern_invalid_regex_is_a_clear_error():
    import gptlite

    with pytest.raises(ValueError, match="not a valid regex"):
        gptlite.Encoding("bad", pat_str="(unclosed", mergeable_ranks={b"a": 0}, special_tokens={})


# --- encode_with_unstable: tiktoken's completions, set for set ---------------------------

def _unstable_fragments(docs, n_cut: int = 160) -> list[str]:
    """Corpus text cut at random points (partial words, mid-number, after
    whitespace or punctuation, inside CJK text) plus hand-picked tails."""
    import random

    rng = random.Random(14)
    texts = [t for ds in docs.values() for t in ds if len(t) > 40]
    cuts = []
    for _ in range(n_cut):
        t = rng.choice(texts)
        end = rng.randrange(1, len(t))
        cuts.append(t[max(0, end - rng.randrange(1, 30)):end])
    hand = ["", "h", "hello fanta", "hello wor", "Hello, World", "it'", "it's", "I'l", "DON'T", "foo.bar/",
            " ", "  ", "a ", "a  ", "\n", " \n", "\n\n ", "a\n", "a \n", "x\r\n", "\t", "a\t", "line\n\t",
            "1", "12", "123", "1234", "3.14", "x = 10", "٣٤", "２０２４",
            "naïve caf", "é", "e\u0301", "日本語の", "中文", "한국어 텍", "👍", "a👍", "Ǆǅ", "ʰ", "Straße",
            "x\u3000", "\u00a0", "a\u2028", "tab\u000b", "\u001c", "?!", "!!!", "--", "...\n", "<|", "<|endof",
            "<|endoftext|>", "a<|endoftext|>", "a<|endoftext|>b", "<|endoftext|> ", "<|fim_prefix|>x "]
    return hand + cuts


def _same_unstable(ours, theirs, text, **kw):
    stable, comps = ours.encode_with_unstable(text, **kw)
    want_stable, want_comps = theirs.encode_with_unstable(text, **kw)
    assert stable == want_stable, text
    got = [tuple(c) for c in comps]
    assert len(set(got)) == len(got), text  # a set, as tiktoken's
    assert set(got) == {tuple(c) for c in want_comps}, (text, len(got), len(want_comps))


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base", "o200k_base"])
def test_encode_with_unstable_matches_tiktoken(name, docs):
    ours, theirs = pair(name)
    frags = _unstable_fragments(docs)
    assert len(frags) > 200
    for text in frags:
        _same_unstable(ours, theirs, text, disallowed_special=())
    # special tokens: allowed ones end the unstable tail, disallowed ones raise the same error
    for text in ("a<|endoftext|>", "ab <|endoftext|>cd", "<|endoftext|>"):
        _same_unstable(ours, theirs, text, allowed_special="all")
    with pytest.raises(ValueError) as a:
        theirs.encode_with_unstable("x <|endoftext|>")
    with pytest.raises(ValueError) as b:
        ours.encode_with_unstable("x <|endoftext|>")
    assert str(a.value) == str(b.value)
    # tiktoken does not replace lone surrogates here (unlike encode): neither do we
    for enc in (theirs, ours):
        with pytest.raises(UnicodeEncodeError):
            enc.encode_with_unstable("x\ud800")


def test_encode_with_unstable_keeps_its_promise(docs):
    """tiktoken's docstring contract: the stable ids decode to a prefix of the
    text, and every completion decodes to something that starts with the text."""
    ours, _ = pair("cl100k_base")
    for text in _unstable_fragments(docs, n_cut=40):
        data = text.encode("utf-8")
        stable, comps = ours.encode_with_unstable(text, disallowed_special=())
        assert data.startswith(ours.decode_bytes(stable))
        assert all(ours.decode_bytes(stable + c).startswith(data) for c in comps), text
        if data != ours.decode_bytes(stable):
            assert comps, text


@pytest.mark.parametrize("pat", CUSTOM_PATS)
def test_encode_with_unstable_general_regex_matches_tiktoken(pat, docs):
    import gptlite

    base = tiktoken.get_encoding("gpt2")
    kw = dict(pat_str=pat, mergeable_ranks=base._mergeable_ranks, special_tokens=base._special_tokens)
    ours, theirs = gptlite.Encoding("custom", **kw), tiktoken.Encoding("custom", **kw)
    assert ours._regex is not None
    for text in _unstable_fragments(docs, n_cut=30):
        _same_unstable(ours, theirs, text, disallowed_special=())


def test_o200k_harmony_special_tokens_are_tiktokens():
    """Every harmony special, <|reserved_200018|> (which shares its id with
    <|endofprompt|>) included, in tiktoken's order, with its n_vocab; each
    encodes to its id when allowed and is refused when not."""
    ours, theirs = pair("o200k_harmony")
    assert ours._special_tokens == theirs._special_tokens
    assert list(ours._special_tokens) == list(theirs._special_tokens)
    assert ours.special_tokens_set == theirs.special_tokens_set
    assert (ours.n_vocab, ours.max_token_value, ours.eot_token) == (theirs.n_vocab, theirs.max_token_value,
                                                                    theirs.eot_token) == (201088, 201087, 199999)
    assert "<|reserved_200018|>" in ours.special_tokens_set and len(ours.special_tokens_set) == 1091
    for tok, i in theirs._special_tokens.items():
        assert ours.encode(tok, allowed_special="all") == [i] == theirs.encode(tok, allowed_special="all"), tok
        assert ours.encode_single_token(tok) == i
    text = "<|start|>user<|message|>hi<|reserved_200018|><|end|>"
    assert ours.encode(text, allowed_special="all") == theirs.encode(text, allowed_special="all")
    assert ours.encode(text, allowed_special={"<|reserved_200018|>"}, disallowed_special=()) == \
        theirs.encode(text, allowed_special={"<|reserved_200018|>"}, disallowed_special=())
    with pytest.raises(ValueError, match="reserved_200018"):
        ours.encode("x <|reserved_200018|>")
    # tiktoken decodes a shared id to whichever name its hash map yields; ours is the first listed
    assert ours.decode([200018]) in ("<|endofprompt|>", "<|reserved_200018|>")
