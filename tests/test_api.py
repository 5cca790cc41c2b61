"""The public surface: gptlite.GPT / Tokenizer, from_pretrained, generate, save_pretrained."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gptlite
from gptlite.engine import checkpoint
from gptlite.generate import generate


def test_import_is_cheap_and_names_resolve():
    code = "import sys, gptlite; assert 'numpy' not in sys.modules and 'gptlite._core' not in sys.modules; print(gptlite.GPT.__name__, gptlite.Tokenizer.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["GPT", "Tokenizer"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gptlite.nope


def test_default_model_carries_its_own_tokenizer():
    model = gptlite.GPT.from_pretrained("default")
    tok = gptlite.Tokenizer.from_pretrained("default")
    loaded = checkpoint.load_tokenizer("default")
    assert loaded is not None
    assert model.tokenizer.n_vocab == tok.n_vocab == loaded.n_vocab <= model.config.vocab_size
    assert tok.n_vocab < 50257  # its own small vocabulary, not GPT-2's
    text = "To be, or not to be"
    assert tok.encode(text) == loaded.encode(text) == model.tokenizer.encode(text)


def test_generate_text_and_ids_agree_with_the_function():
    model = gptlite.GPT.from_pretrained("default")
    tok = model.tokenizer
    ids = tok.encode("ROMEO:")
    new_ids = model.generate(ids, max_new_tokens=12, seed=3)
    # the method's defaults are the CLI's: temperature 0.8, stop at end-of-text
    assert new_ids == generate(model, ids, 12, temperature=0.8, seed=3, eot_token=tok.eot_token)
    assert model.generate("ROMEO:", max_new_tokens=12, seed=3) == tok.decode(new_ids)
    assert model.generate(["ROMEO:", "JULIET:"], max_new_tokens=4, temperature=0) == [
        tok.decode(generate(model, tok.encode(p), 4, temperature=0, eot_token=tok.eot_token)) for p in ("ROMEO:", "JULIET:")]
    bare = gptlite.GPT(model.config, params=model.params)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        bare.generate("hello")


def test_save_pretrained_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = gptlite.GPT.from_pretrained("default")
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "encoder.json").is_file()  # the tokenizer travels with it
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "m").eval()
    idx = np.array([model.tokenizer.encode("To be, or not to be")])
    with torch.no_grad():
        ref = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(model.logits(idx), ref, rtol=1e-4, atol=1e-4)
    again = gptlite.GPT.from_pretrained(tmp_path / "m")
    assert again.tokenizer.encode("abc") == model.tokenizer.encode("abc")
