"""CLI behaviour a user meets first: defaults in --help, presets, finetune predict,
notices that say what happened, quiet pipes, no silently created directories."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import child_env
from gptlite.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return child_env()


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.8)" in out and "default: 100" in out and "default: float32" in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_every_subcommand_uses_the_defaults_formatter():
    import argparse

    from gptlite.cli import _HelpFormatter

    todo = [build_parser()]
    seen = 0
    while todo:
        p = todo.pop()
        assert p.formatter_class is _HelpFormatter, p.prog
        seen += 1
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo.extend(a.choices.values())
    assert seen > 15


def test_train_config_presets():
    from gptlite.training.pretrain import load_config, presets

    assert {"tiny", "shakespeare"} <= set(presets())
    cfg = load_config("tiny")
    assert cfg.out_dir == "runs/tiny"
    with pytest.raises(FileNotFoundError, match="presets: .*tiny"):
        load_config("no-such-preset")


def test_output_into_a_missing_directory_is_an_error(tmp_path, capsys):
    assert main(["encode", "hello", "-t", "default", "-o", str(tmp_path / "nope" / "ids.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()
    assert main(["prepare", str(ROOT / "README.md"), "-o", str(tmp_path / "a" / "b"), "--tokenizer", "default"]) == 2
    assert not (tmp_path / "a").exists()


def test_special_token_error_names_the_cli_flags(capsys):
    assert main(["encode", "a <|endoftext|> b", "-t", "default"]) == 2
    err = capsys.readouterr().err
    assert "--allow-special" in err and "--ordinary" in err and "allowed_special" not in err


def test_generate_says_when_the_context_stops_it(capsys):
    assert main(["generate", "--seed", "0", "--max-new-tokens", "1000", "--no-prompt", "ROMEO:"]) == 0
    err = capsys.readouterr().err
    assert "of --max-new-tokens 1000 new tokens: the model's context of 128 positions is full" in err
    assert main(["generate", "--seed", "0", "--max-new-tokens", "5", "--no-prompt", "ROMEO:"]) == 0
    assert "context" not in capsys.readouterr().err


def test_head_ends_quietly():
    r = subprocess.run(f"{sys.executable} -m gptlite encode -t default --ordinary < {ROOT / 'README.md'} --format text | head -c 10",
                       shell=True, capture_output=True, text=True, env=_env())
    assert len(r.stdout) == 10 and r.stderr == ""


def test_finetune_predict(tmp_path, capsys):
    rows = [{"text": t, "label": l} for t, l in [("a fine day", "good"), ("a dreadful day", "bad")] * 4]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["finetune", "--task", "classification", "--train", str(data), "--out", str(tmp_path / "ft"),
                 "--epochs", "1", "--batch-size", "4", "--json"]) == 0
    capsys.readouterr()
    assert main(["finetune", "predict", str(tmp_path / "ft"), str(data), "-o", str(tmp_path / "p.jsonl"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    preds = [json.loads(x)["prediction"] for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(preds) == len(rows) and set(preds) <= {"good", "bad"}
    acc = sum(p == r["label"] for p, r in zip(preds, rows)) / len(rows)
    assert metrics["accuracy"] == pytest.approx(acc)
    assert main(["finetune", "--task", "classification"]) == 2
    assert "needs --train, --out" in capsys.readouterr().err


def test_offline_vocabulary_download_is_one_line(tmp_path, monkeypatch, capsys):
    """No network and no cached GPT-2 files: `gptlite prepare --tokenizer gpt2` says
    what to do in one line (exit 2), no traceback; a vocabulary download failing in
    the API raises DownloadError (a RuntimeError, as before, and an OSError)."""
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("no network here")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv("GPTLITE_GPT2_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tk"))
    (tmp_path / "c.txt").write_text("hello world\n" * 50)
    rc = main(["prepare", str(tmp_path / "c.txt"), "-o", str(tmp_path / "data"), "--tokenizer", "gpt2"])
    err = capsys.readouterr().err
    assert rc == 2 and "could not download" in err and "GPTLITE_GPT2_DIR" in err and "Traceback" not in err
    from gptlite.tokenizer.load import DownloadError, cached_file

    with pytest.raises(DownloadError, match="To use it offline") as e:
        cached_file("https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken", "0" * 64)
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, OSError)
