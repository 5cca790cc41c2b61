"""GPT-2-style prompting: TL;DR summaries and few-shot translation (API and CLI)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gptlite.tasks import prompting as pr
from gptlite.cli import main
from gptlite.generate import generate
from gptlite.engine.model import GPT, GPTConfig, init_params
from gptlite.tokenizer.encoding import Tokenizer

NEWLINE, THE, EOT = 198, 262, 50256  # GPT-2 ids of "\n", " the", <|endoftext|>


@pytest.fixture(scope="module")
def tok(gpt2_dir):
    return Tokenizer.from_files(gpt2_dir)


def always(token: int, n_positions: int = 64) -> GPT:
    """A GPT-2-vocabulary model whose every next token is ``token``: ln_f maps
    any state to one vector e, and only wte[token] points along e."""
    cfg = GPTConfig(n_layer=1, n_embd=8, n_head=2, n_positions=n_positions)
    p = init_params(cfg, seed=0)
    p["ln_f.weight"][:] = 0
    p["ln_f.bias"][:] = 0
    p["ln_f.bias"][0] = 1
    p["wte.weight"][:, 0] = 0
    p["wte.weight"][token, 0] = 30  # e^30 outweighs the 50,256 tied zero logits a top-k keeps
    return GPT(cfg, params=p, device="cpu")


def test_prompt_layouts():
    assert pr.tldr_prompt("An article.\n\n") == "An article.\nTL;DR:"
    got = pr.translation_prompt(" The dog runs. ", [("a", "b"), ("c d", "e f")])
    assert got == "a = b\nc d = e f\nThe dog runs. ="
    assert pr.translation_prompt("x").startswith("The house is small. = La maison est petite.\n")
    with pytest.raises(ValueError, match="single line"):
        pr.translation_prompt("two\nlines")
    with pytest.raises(ValueError, match="example 1: the target"):
        pr.translation_prompt("x", [("a", "b"), ("c", "d\ne")])


def test_first_sentences():
    t = "One here. Two? \"Three!\" Four.  Five"
    assert pr.first_sentences(t, 3) == 'One here. Two? "Three!"'
    assert pr.first_sentences(t, 10) == 'One here. Two? "Three!" Four. Five'
    assert pr.first_sentences("no end at all", 3) == "no end at all"
    assert pr.first_sentences("A.\n\nB.\nC. D.", 2) == "A. B."
    assert pr.first_sentences("", 3) == ""
    with pytest.raises(ValueError):
        pr.first_sentences("x", 0)


def test_translate_stops_at_the_first_newline(tok):
    r = pr.translate(always(NEWLINE), tok, "The cat is black.", [("a", "b")], max_new_tokens=5)
    assert (r.completion, r.output, r.cropped) == ("", "", False)
    r = pr.translate(always(THE), tok, "The cat is black.", [("a", "b")], max_new_tokens=5)
    assert r.completion == " the" * 5 and r.output == "the the the the the"
    assert r.prompt == "a = b\nThe cat is black. ="
    assert r.prompt_tokens == len(tok.encode(r.prompt))


def test_summarize_cue_sampling_and_stop(tok):
    article = "The committee met on Tuesday. It approved the budget."
    r = pr.summarize(always(THE), tok, article, max_new_tokens=6, seed=0)
    assert r.prompt.endswith("budget.\nTL;DR:") and r.completion == " the" * 6
    assert pr.summarize(always(EOT), tok, article, max_new_tokens=6, seed=0).completion == ""  # stops at eot
    # the same tokens as generate() with the same sampling settings and seed
    model = GPT(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64), seed=3, device="cpu")
    r = pr.summarize(model, tok, article, max_new_tokens=12, top_k=2, seed=7)
    ids = generate(model, tok.encode(r.prompt), 12, temperature=1.0, top_k=2, seed=7, eot_token=tok.eot_token)
    assert r.completion == tok.decode(ids)
    assert r.output == pr.first_sentences(r.completion, 3)


def test_long_prompt_keeps_its_end(tok):
    article = " ".join(["word"] * 200)
    r = pr.summarize(always(THE, n_positions=64), tok, article, max_new_tokens=10, seed=0)
    assert r.cropped and r.prompt_tokens == 64 - 10 + 1 and r.completion == " the" * 10


def test_read_examples(tmp_path):
    f = tmp_path / "ex.tsv"
    f.write_text("hello\tbonjour\n\nthank you\tmerci\n", encoding="utf-8")
    assert pr.read_examples(f) == [("hello", "bonjour"), ("thank you", "merci")]
    f.write_text("hello\tbonjour\nno tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ex.tsv:2: expected"):
        pr.read_examples(f)
    f.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no example pairs"):
        pr.read_examples(f)


def test_cli_prompt_commands(tmp_path, capsys):
    art = tmp_path / "article.txt"
    art.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n", encoding="utf-8")
    args = ["prompt", "tldr", str(art), "--seed", "3", "--max-new-tokens", "30", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == first  # deterministic with --seed
    assert first["prompt"].endswith("breaks?\nTL;DR:") and first["completion"]
    assert first["output"] == pr.first_sentences(first["completion"], 3)
    assert main(["prompt", "translate", "The cat is black.", "--max-new-tokens", "8"]) == 0
    assert "\n" not in capsys.readouterr().out.rstrip("\n")
    bad = tmp_path / "bad.tsv"
    bad.write_text("one\ttwo\nthree\n", encoding="utf-8")
    assert main(["prompt", "translate", "x", "--examples", str(bad)]) == 2
    assert "bad.tsv:2" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    assert main(["prompt", "tldr", str(empty)]) == 2
    assert "nothing to summarise" in capsys.readouterr().err
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    assert main(["prompt", "tldr", str(latin)]) == 2
    assert "latin1.txt: not valid UTF-8" in capsys.readouterr().err
