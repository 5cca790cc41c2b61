"""Zero-shot evaluation: gptlite vs the same procedure written on HF transformers.

The checkpoint is GPT-2-shaped (real GPT-2 vocabulary and tokenizer) and made
here: a seeded ``GPT2LMHeadModel`` trained for a few steps on some LAMBADA
passages, so that it gets some LAMBADA targets right and some wrong (a random
model would get none, and the accuracy comparison would prove nothing).
gptlite reads it from disk through its own safetensors loader.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gptlite.tasks import evaluate as ev  # noqa: E402
from gptlite.tasks.datasets import DatasetError  # noqa: E402

N_POS = 96  # small, so some LAMBADA passages are truncated
N_LAMBADA = 32


# ---------------------------------------------------------------------------------
# fixtures
class HFTokenizer:
    """GPT-2's BPE in HF `tokenizers` (transformers' GPT2Tokenizer cannot be built
    from encoder.json/vocab.bpe offline in transformers 5): ``tok(text)["input_ids"]``."""

    eos_token_id = 50256

    def __init__(self, gpt2_dir):
        from tokenizers import Tokenizer, models, pre_tokenizers

        vocab = json.loads((gpt2_dir / "encoder.json").read_text(encoding="utf-8"))
        lines = (gpt2_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
        merges = [tuple(ln.split()) for ln in lines if ln]
        self.tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        self.tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)

    def __call__(self, text):
        return {"input_ids": self.tk.encode(text).ids}


@pytest.fixture(scope="module")
def hf_tok(gpt2_dir):
    return HFTokenizer(gpt2_dir)


@pytest.fixture(scope="module")
def tok(gpt2_dir):
    from gptlite.tokenizer.encoding import Tokenizer

    return Tokenizer.from_files(gpt2_dir)


@pytest.fixture(scope="module")
def lambada_lines(corpora_dir):
    with open(corpora_dir / "lambada_test.jsonl", encoding="utf-8") as f:
        return [json.loads(next(f))["text"] for _ in range(N_LAMBADA)]


@pytest.fixture(scope="module")
def hf_model(hf_tok, lambada_lines, tmp_path_factory):
    """(HF model in eval mode, its saved directory)."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=N_POS, n_embd=48, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg)
    # Teach it the targets of half of the passages (loss on the last word's tokens
    # only, LM head applied to those positions only: cheap), so it gets those right.
    eot = hf_tok.eos_token_id
    seqs, spans = [], []
    for t in lambada_lines[: N_LAMBADA // 2]:
        ctx, word = t.rstrip().rsplit(" ", 1)
        tgt = hf_tok(" " + word)["input_ids"]
        seq = ([eot] + hf_tok(ctx)["input_ids"] + tgt)[-(N_POS + 1):]
        seqs.append(seq)
        spans.append(len(tgt))
    L = max(len(s) - 1 for s in seqs)
    x = torch.full((len(seqs), L), eot)
    rows, cols, ys = [], [], []
    for i, (seq, k) in enumerate(zip(seqs, spans)):
        x[i, : len(seq) - 1] = torch.tensor(seq[:-1])
        for j in range(len(seq) - 1 - k, len(seq) - 1):
            rows.append(i), cols.append(j), ys.append(seq[j + 1])
    rows, cols, ys = torch.tensor(rows), torch.tensor(cols), torch.tensor(ys)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(60):
        h = model.transformer(input_ids=x).last_hidden_state[rows, cols]
        loss = torch.nn.functional.cross_entropy(model.lm_head(h), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    d = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(d, safe_serialization=True)
    return model, d


@pytest.fixture(scope="module")
def model(hf_model):
    from gptlite.engine.checkpoint import load_model

    return load_model(hf_model[1], device="cpu")


# ---------------------------------------------------------------------------------
# the HF-side procedures (written independently of gptlite's, one sequence at a time)
@torch.no_grad()
def hf_logprobs(hf, inp):
    """log-softmax of the model's logits for one token list -> (T, V) float64."""
    logits = hf(input_ids=torch.tensor([inp])).logits[0]
    return torch.log_softmax(logits.double(), dim=-1)


def hf_perplexity(hf, hf_tok, text, context, stride):
    """HF's sliding-window recipe (docs 'Perplexity of fixed-length models'),
    scoring every token after a leading <|endoftext|>: each window reads up to
    `context` tokens and scores only the targets the previous window did not."""
    seq = [hf_tok.eos_token_id] + hf_tok(text)["input_ids"]
    nll, count, prev_end = 0.0, 0, 0  # prev_end: last target index already scored
    for begin in range(0, len(seq) - 1, stride):
        end = min(begin + context, len(seq) - 1)  # reads seq[begin:end], targets seq[begin+1:end+1]
        trg_len = end - prev_end
        lp = hf_logprobs(hf, seq[begin:end])
        tgt = torch.tensor(seq[begin + 1: end + 1])
        tok_lp = lp[torch.arange(len(tgt)), tgt]
        nll -= tok_lp[-trg_len:].sum().item()
        count += trg_len
        prev_end = end
        if end == len(seq) - 1:
            break
    n_bytes = len(text.encode("utf-8"))
    return nll / count, count, nll / math.log(2) / n_bytes


def hf_score(hf, ctx_ids, cont_ids, n_pos):
    """(sum log p(cont | ctx), greedy reproduces cont) with left truncation to n_pos inputs."""
    seq = (ctx_ids + cont_ids)[-(n_pos + 1):]
    lp = hf_logprobs(hf, seq[:-1])
    k = len(cont_ids)
    tgt = torch.tensor(seq[-k:])
    rows = lp[-k:]
    total = rows[torch.arange(k), tgt].sum().item()
    greedy = bool((rows.argmax(-1) == tgt).all())
    return total, greedy


def hf_lambada(hf, hf_tok, texts, n_pos):
    eot = hf_tok.eos_token_id
    correct, nll, ntok = [], 0.0, 0
    for text in texts:
        ctx, word = text.rstrip().rsplit(" ", 1)
        tgt = hf_tok(" " + word)["input_ids"]
        s, g = hf_score(hf, [eot] + hf_tok(ctx)["input_ids"], tgt, n_pos)
        correct.append(g)
        nll -= s
        ntok += len(tgt)
    return correct, math.exp(nll / len(texts)), math.exp(nll / ntok)


def hf_choice(hf, hf_tok, examples, n_pos):
    """-> ({"total": predictions, "mean": predictions}, {"total": scores, "mean": scores})"""
    eot = hf_tok.eos_token_id
    preds = {"total": [], "mean": []}
    scores = {"total": [], "mean": []}
    for ex in examples:
        c = [eot] + hf_tok(ex["context"])["input_ids"]
        tot, mean = [], []
        for ch in ex["choices"]:
            t = hf_tok(" " + ch)["input_ids"]
            s, _ = hf_score(hf, c, t, n_pos)
            tot.append(s)
            mean.append(s / len(t))
        preds["total"].append(int(np.argmax(tot)))
        preds["mean"].append(int(np.argmax(mean)))
        scores["total"].append(tot)
        scores["mean"].append(mean)
    return preds, scores


# ---------------------------------------------------------------------------------
# parity
@pytest.mark.parametrize("context,stride", [(N_POS, N_POS), (N_POS, 32), (40, 40), (64, 17)])
def test_perplexity_matches_hf(model, tok, hf_model, hf_tok, corpora_dir, context, stride):
    text = (corpora_dir / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:1500]
    r = ev.perplexity(model, tok, text, context=context, stride=stride, batch_size=3, progress=False)
    want_npt, want_count, want_bpb = hf_perplexity(hf_model[0], hf_tok, text, context, stride)
    assert r.n_tokens == want_count == len(tok.encode_ordinary(text))
    assert r.n_bytes == len(text.encode("utf-8"))
    assert r.nats_per_token == pytest.approx(want_npt, rel=1e-5)
    assert r.perplexity == pytest.approx(math.exp(want_npt), rel=1e-4)
    assert r.bits_per_byte == pytest.approx(want_bpb, rel=1e-4)


def test_sliding_window_gives_more_context_lower_nll(model, tok, corpora_dir):
    # Same tokens scored both ways; sliding gives each token more context, so for a
    # model that uses context the sliding figure must differ from the non-overlapping one.
    text = (corpora_dir / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:2000]
    a = ev.perplexity(model, tok, text, context=32, progress=False)
    b = ev.perplexity(model, tok, text, context=32, stride=8, progress=False)
    assert a.n_tokens == b.n_tokens and a.n_windows < b.n_windows
    assert a.total_nats != b.total_nats


def test_windows_score_every_token_once():
    for n in (2, 3, 10, 97, 100):
        for context in (1, 5, 16):
            for stride in {1, 3, context}:
                if stride > context:
                    continue
                seen = []
                for b, e, first in ev.perplexity_windows(n, context, stride):
                    assert 0 < e - b <= context and b < first <= e
                    seen += list(range(first, e + 1))
                assert seen == list(range(1, n))


def test_lambada_matches_hf(model, tok, hf_model, hf_tok, lambada_lines, tmp_path):
    p = tmp_path / "lambada.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in lambada_lines), encoding="utf-8")
    r = ev.lambada(model, tok, p, batch_size=5, progress=False)
    correct, ppl, tppl = hf_lambada(hf_model[0], hf_tok, lambada_lines, N_POS)
    assert r.correct == correct
    assert 0 < r.n_correct < r.n  # the comparison is not vacuous
    assert r.perplexity == pytest.approx(ppl, rel=1e-4)
    assert r.token_perplexity == pytest.approx(tppl, rel=1e-4)
    assert r.n_truncated > 0  # some passages are longer than N_POS tokens


def test_choice_matches_hf(model, tok, hf_model, hf_tok, lambada_lines, tmp_path):
    # LAMBADA as multiple choice: the true last word among words of the same passage.
    rng = np.random.default_rng(0)
    examples = []
    for t in lambada_lines:
        ctx, word = t.rstrip().rsplit(" ", 1)
        pool = sorted({w for w in ctx.split() if w.isalpha() and w != word})
        distract = list(rng.choice(pool, size=3, replace=False))
        choices = distract + [word]
        rng.shuffle(choices)
        examples.append({"context": ctx, "choices": choices, "label": choices.index(word)})
    p = tmp_path / "choice.jsonl"
    p.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    want, want_scores = hf_choice(hf_model[0], hf_tok, examples, N_POS)
    for normalize in ("total", "mean"):
        r = ev.choice(model, tok, p, normalize=normalize, batch_size=6, progress=False)
        assert r.predictions == want[normalize], normalize
        np.testing.assert_allclose(r.scores, want_scores[normalize], rtol=1e-4)
        assert r.accuracy == pytest.approx(np.mean([w == e["label"] for w, e in zip(want[normalize], examples)]))


# ---------------------------------------------------------------------------------
# bad input
def test_malformed_jsonl_reports_line(model, tok, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a b c"}\n\n{"text": "broken\n{"txt": "x y"}\n{"text": "d e f"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad.jsonl:3: malformed JSON"):
        ev.lambada(model, tok, p, progress=False)
    r = ev.lambada(model, tok, p, skip_bad=True, progress=False)
    assert r.n == 2 and [ln for ln, _ in r.skipped] == [3, 4]
    assert "missing key 'text'" in r.skipped[1][1]


def test_invalid_utf8_names_file_and_line(model, tok, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "a b c"}\n{"text": "caf\xe9 d"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: not valid UTF-8 \(byte 13 of the line\)"):
        ev.lambada(model, tok, p, progress=False)
    assert ev.lambada(model, tok, p, skip_bad=True, progress=False).n == 1
    c = tmp_path / "bad.csv"
    c.write_bytes(b"context,choice_0,choice_1,label\nok,a,b,0\ncaf\xe9,a,b,1\n")
    with pytest.raises(ValueError, match=r"bad.csv: not valid UTF-8 text \(byte 44, line 3\)"):
        ev.choice(model, tok, c, progress=False)


def test_empty_inputs_are_errors(model, tok, tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="empty"):
        ev.lambada(model, tok, p, progress=False)
    with pytest.raises(DatasetError, match="empty"):
        ev.choice(model, tok, p, progress=False)
    with pytest.raises(ValueError, match="empty"):
        ev.perplexity(model, tok, "", progress=False)
    with pytest.raises(ValueError, match="stride"):
        ev.perplexity(model, tok, "hello world", context=8, stride=9, progress=False)
    with pytest.raises(ValueError, match="context"):
        ev.perplexity(model, tok, "hello world", context=N_POS + 1, progress=False)


def test_choice_label_out_of_range(model, tok, tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"context": "a", "choices": ["b", "c"], "label": 1}\n'
                 '{"context": "a", "choices": ["b", "c"], "label": 2}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"c.jsonl:2: label 2 out of range"):
        ev.choice(model, tok, p, progress=False)
    p.write_text('{"context": "a", "choices": [], "label": 0}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"c.jsonl:1: key 'choices'"):
        ev.choice(model, tok, p, progress=False)


def test_cli_eval(hf_model, gpt2_dir, corpora_dir, tmp_path, capsys):
    import shutil

    from gptlite.cli import main

    d = tmp_path / "m"
    shutil.copytree(hf_model[1], d)
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copy(gpt2_dir / f, d / f)
    txt = tmp_path / "t.txt"
    txt.write_text((corpora_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:1500], encoding="utf-8")
    assert main(["eval", "perplexity", str(txt), "--model", str(d), "--stride", "48", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["perplexity"] > 1 and out["stride"] == 48 and out["context"] == N_POS
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b"}\nnot json\n', encoding="utf-8")
    assert main(["eval", "lambada", str(bad), "--model", str(d)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert main(["eval", "lambada", str(bad), "--model", str(d), "--skip-bad", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped_lines"] == 1
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert main(["eval", "perplexity", str(empty), "--model", str(d)]) == 2
    assert "empty" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("first line\ncaf\u00e9".encode("latin-1"))
    assert main(["eval", "perplexity", str(latin1), "--model", str(d)]) == 2
    assert "latin1.txt: not valid UTF-8 text (byte 14, line 2)" in capsys.readouterr().err


def test_cli_eval_choice(hf_model, gpt2_dir, tmp_path, capsys):
    """`gptlite eval choice`: the same predictions as the API, for both
    normalisations and a custom separator; --predictions writes them."""
    import shutil

    from gptlite.engine.checkpoint import load_model, load_tokenizer
    from gptlite.cli import main

    d = tmp_path / "m"
    shutil.copytree(hf_model[1], d)
    for f in ("encoder.json", "vocab.bpe"):
        shutil.copy(gpt2_dir / f, d / f)
    rows = [{"context": "The cat sat on the", "choices": ["mat", "moon", "idea of"], "label": 0},
            {"context": "One, two,", "choices": ["three", "blue"], "label": 0},
            {"context": "Water is", "choices": ["wet", "a dry stone wall"]}]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    model, tok = load_model(d), load_tokenizer(d)
    for norm, sep in (("total", " "), ("mean", " -- ")):
        preds = tmp_path / f"p_{norm}.txt"
        assert main(["eval", "choice", str(data), "--model", str(d), "--normalize", norm, "--sep", sep,
                     "--predictions", str(preds), "--json", "--no-progress"]) == 0
        out = json.loads(capsys.readouterr().out)
        want = ev.choice(model, tok, data, normalize=norm, sep=sep)
        assert [int(x) for x in preds.read_text().split()] == want.predictions
        assert (out["examples"], out["labelled"], out["normalize"]) == (3, 2, norm)
        assert out["accuracy"] == pytest.approx(want.accuracy)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": ["b"], "label": 3}\n', encoding="utf-8")
    assert main(["eval", "choice", str(bad), "--model", str(d)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
