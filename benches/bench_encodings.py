"""gpt2, cl100k_base and o200k_base: gptlite vs tiktoken vs quicktok-v1 vs riptoken, one run.

Run: ``python benches/bench_encodings.py [--rounds N] [--json out.json]``.
Workload: every shared corpus split into documents (as the tests split them),
``encode_ordinary`` one document per call, 1 thread. Rounds alternate between
the encoders so that drift in the machine's speed hits all alike; the median
round is reported. Times are the thread's CPU time (``time.thread_time``), so
that being descheduled on a shared machine counts against no one; ratios are
the median over rounds of the ratio within a round (a slow stretch then
skews neither side). Every peer's output is checked equal to tiktoken's first.
Also: pathological inputs (one letter, digits, one CJK character, whitespace)
of 0.25, 1 and 4 MB, with the ratios of their times (x4 is linear scaling).
``--pathological-only`` skips the corpus comparison.
Targets (issue 14): >= 1.2x the fastest peer and >= 4x tiktoken per encoding.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "python"))
os.environ.setdefault("RAYON_NUM_THREADS", "1")

from conftest import corpus_documents, fill_tiktoken_cache  # noqa: E402
from gptlite.fileio import atomic_write_text  # noqa: E402

ENCODINGS = ("gpt2", "cl100k_base", "o200k_base")


def _cache() -> str:
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        os.environ["TIKTOKEN_CACHE_DIR"] = str(fill_tiktoken_cache(tempfile.mkdtemp(prefix="tiktoken_cache")))
    return os.environ["TIKTOKEN_CACHE_DIR"]


def _peers(name: str) -> dict:
    import gptlite
    import tiktoken

    out = {"gptlite": gptlite.get_encoding(name), "tiktoken": tiktoken.get_encoding(name)}
    for mod in ("quicktok", "riptoken"):
        try:
            out[mod] = __import__(mod).get_encoding(name)
        except Exception as exc:  # a peer that cannot load this encoding is reported, not fatal
            print(f"  {mod}: cannot load {name}: {exc}")
    return out


def bench(name: str, docs: list[str], rounds: int) -> dict:
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    encs = _peers(name)
    want = [encs["tiktoken"].encode_ordinary(d) for d in docs]
    for k, e in list(encs.items()):
        if [e.encode_ordinary(d) for d in docs] != want:
            print(f"  {k}: output differs from tiktoken on {name}; left out")
            del encs[k]
    times: dict[str, list[float]] = {k: [] for k in encs}
    for _ in range(rounds):
        for k, e in encs.items():
            f = e.encode_ordinary
            t = time.thread_time()
            for d in docs:
                f(d)
            times[k].append(time.thread_time() - t)
    mbs = {k: n_bytes / statistics.median(v) / 1e6 for k, v in times.items()}
    peers = {k: v for k, v in mbs.items() if k != "gptlite"}
    best = max(peers, key=peers.get)

    def ratio(peer: str) -> float:  # gptlite's speed over the peer's, round by round
        return statistics.median(tp / tg for tg, tp in zip(times["gptlite"], times[peer]))

    row = {"encoding": name, "MB": n_bytes / 1e6, "MB/s": mbs,
           "vs_tiktoken": ratio("tiktoken"), "fastest_peer": best,
           "vs_fastest_peer": ratio(best)}
    return row


_COLD_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
from conftest import corpus_documents
docs = [d for ds in corpus_documents().values() for d in ds]
peer, name = sys.argv[3], sys.argv[4]
if peer == "gptlite":
    import gptlite as m
else:
    m = __import__(peer)
enc = m.get_encoding(name)
f = enc.encode_ordinary
t = time.thread_time()
for d in docs:
    f(d)
print(time.thread_time() - t)
"""


def cold(name: str, peers, passes: int) -> dict:
    """One pass over the corpus in a fresh process per encoder (each document
    encoded once, so no cache starts warm: how a corpus is tokenized once),
    encoders alternated pass by pass; thread CPU time of the pass. Returns the
    per-pass ratios gptlite/peer."""
    import subprocess

    secs: dict[str, list[float]] = {p: [] for p in peers}
    for _ in range(passes):
        for p in peers:
            out = subprocess.run([sys.executable, "-c", _COLD_CHILD, str(ROOT / "python"), str(ROOT / "tests"), p, name],
                                 capture_output=True, text=True, env=dict(os.environ, RAYON_NUM_THREADS="1"))
            if out.returncode != 0:
                print(f"  cold {p}/{name}: failed: {out.stderr.strip().splitlines()[-1:]}")
                secs.pop(p, None)
                break
            secs[p].append(float(out.stdout.strip().splitlines()[-1]))
    return {p: [tp / tg for tg, tp in zip(secs["gptlite"], secs[p])] for p in secs if p != "gptlite"}


PATHOLOGICAL = (("letter", "a"), ("digits", "7"), ("cjk", "中"), ("whitespace", " "))
SIZES_MB = (0.25, 1, 4)


def pathological(name: str, reps: int = 3) -> dict:
    """Seconds to encode 0.25, 1 and 4 MB of one repeated character (thread CPU
    time, the best of `reps`: the first call also makes the str's UTF-8 form,
    which CPython then keeps), and the ratios 1MB/0.25MB and 4MB/1MB: linear
    scaling is 4.0 for both."""
    import gptlite

    enc = gptlite.get_encoding(name)
    out = {}
    for label, unit in PATHOLOGICAL:
        secs = []
        for mb in SIZES_MB:
            text = unit * int(mb * (1 << 20) // len(unit.encode()))
            best = float("inf")
            for _ in range(reps):
                t = time.thread_time()
                enc.encode_ordinary(text)
                best = min(best, time.thread_time() - t)
            secs.append(best)
        out[label] = {"s": dict(zip(map(str, SIZES_MB), secs)),
                      "ratio_1MB_over_0.25MB": secs[1] / max(secs[0], 1e-9),
                      "ratio_4MB_over_1MB": secs[2] / max(secs[1], 1e-9)}
    return out


def _print_pathological(name: str, rows: dict) -> None:
    for label, p in rows.items():
        ms = "  ".join(f"{mb} MB {t*1e3:7.1f} ms" for mb, t in p["s"].items())
        print(f"    {name} {label:10s} {ms} | 1/0.25 MB x{p['ratio_1MB_over_0.25MB']:.2f}, "
              f"4/1 MB x{p['ratio_4MB_over_1MB']:.2f} (linear: x4)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--pathological-only", action="store_true")
    ap.add_argument("--cold", type=int, default=0, metavar="PASSES",
                    help="also PASSES cold passes: a fresh process per encoder, each document once")
    args = ap.parse_args()
    _cache()
    if args.pathological_only:
        results = []
        for name in ENCODINGS:
            results.append({"encoding": name, "pathological": pathological(name)})
            _print_pathological(name, results[-1]["pathological"])
        if args.json:
            atomic_write_text(args.json, json.dumps(results, indent=1))
        return
    docs = [d for ds in corpus_documents().values() for d in ds]
    results = []
    for name in ENCODINGS:
        row = bench(name, docs, args.rounds)
        row["pathological"] = pathological(name)
        results.append(row)
        cols = "  ".join(f"{k} {v:6.1f}" for k, v in row["MB/s"].items())
        print(f"{name:12s} MB/s: {cols} | gptlite/tiktoken {row['vs_tiktoken']:.2f}x, "
              f"gptlite/{row['fastest_peer']} {row['vs_fastest_peer']:.2f}x")
        _print_pathological(name, row["pathological"])
        if args.cold:
            row["cold"] = cold(name, [p for p in ("gptlite", "tiktoken", "quicktok", "riptoken") if p in row["MB/s"]],
                               args.cold)
            print("    cold passes, gptlite/peer: " + "; ".join(
                f"{p} {min(r):.2f}-{max(r):.2f}x (median {statistics.median(r):.2f}x)" for p, r in row["cold"].items()))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
