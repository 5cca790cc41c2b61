"""Scaling of BPE training: gptlite vs HF tokenizers at 1x, 4x, 16x the corpus.

    python benches/trainer_scaling.py [--scales 1 4 16] [--vocab-size 32768] [--workdir DIR]

The base corpus is tinyshakespeare.txt + big.txt + wikitext-2/{valid,test}.txt
(6.3 MB). Scale k concatenates k copies as distinct documents: copy j has its
ASCII letters rotated by j (a Caesar shift), so every copy brings new words with
the same statistics instead of repeating the old ones (a plain repeat would
only scale the counts and leave the merge phase unchanged).

Each training runs in a fresh subprocess; it reports its own training time and
peak RSS (resource.getrusage(RUSAGE_SELF).ru_maxrss), so the two trainers'
memory is measured separately. Prints a markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import string
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPORA = Path(os.environ.get("GPTLITE_SHARED", ROOT.parent / "shared")) / "data" / "corpora"
BASE = ["tinyshakespeare.txt", "big.txt", "wikitext-2/valid.txt", "wikitext-2/test.txt"]

CHILD = {
    "gptlite": """
import json, resource, sys, time
from gptlite.tokenizer import bpe_train as trainer
files, vocab = json.loads(sys.argv[1]), int(sys.argv[2])
t = time.perf_counter()
r = trainer.train_bpe(files=files, vocab_size=vocab)
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "vocab": r.n_vocab, "unique": r.stats["unique_pretokens"], "bytes": r.stats["corpus_bytes"]}))
""",
    "hf": """
import json, resource, sys, time
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
files, vocab = json.loads(sys.argv[1]), int(sys.argv[2])
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tr = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
t = time.perf_counter()
tok.train(files, tr)
s = time.perf_counter() - t
print(json.dumps({"seconds": s, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "vocab": tok.get_vocab_size()}))
""",
}


def base_files() -> list:
    return [CORPORA / f for f in BASE]


def rot(text: str, k: int) -> str:
    if k % 26 == 0:
        return text
    lo, up = string.ascii_lowercase, string.ascii_uppercase
    table = str.maketrans(lo + up, lo[k:] + lo[:k] + up[k:] + up[:k])
    return text.translate(table)


def make_corpus(scale: int, workdir: Path) -> list:
    """The files of the corpus at `scale` (copy j of each base file letter-rotated by j)."""
    if scale == 1:
        return [str(p) for p in base_files()]
    out = []
    for j in range(scale):
        for p in base_files():
            dst = workdir / f"x{j:02d}-{p.name}"
            if not dst.exists():
                dst.write_text(rot(p.read_text(encoding="utf-8"), j), encoding="utf-8")
            out.append(str(dst))
    return out


def run_child(which: str, files: list, vocab: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD[which], json.dumps(files), str(vocab)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--workdir", default=None, help="where scaled corpora are written (default: a temp dir)")
    ap.add_argument("--only", choices=["gptlite", "hf"], default=None)
    args = ap.parse_args(argv)
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gptlite-scaling-")
        workdir = Path(tmp.name)
    which = [args.only] if args.only else ["gptlite", "hf"]
    rows = []
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, vocab {args.vocab_size}",
          file=sys.stderr)
    for scale in args.scales:
        files = make_corpus(scale, workdir)
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        res = {w: run_child(w, files, args.vocab_size) for w in which}
        rows.append((scale, mb, res))
        print(f"scale {scale}: {mb:.1f} MB " + " ".join(
            f"{w} {r['seconds']:.2f}s {r['maxrss_kb'] / 1024:.0f}MB" for w, r in res.items()), file=sys.stderr)
    print("| corpus | MB | unique pre-tokens | gptlite s | gptlite peak RSS MB | HF s | HF peak RSS MB | time ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for scale, mb, res in rows:
        g, h = res.get("gptlite"), res.get("hf")
        cells = [f"{scale}x", f"{mb:.1f}", f"{g['unique']:,}" if g else "",
                 f"{g['seconds']:.2f}" if g else "", f"{g['maxrss_kb'] / 1024:.0f}" if g else "",
                 f"{h['seconds']:.2f}" if h else "", f"{h['maxrss_kb'] / 1024:.0f}" if h else "",
                 f"{g['seconds'] / h['seconds']:.2f}" if g and h else ""]
        print("| " + " | ".join(cells) + " |")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
