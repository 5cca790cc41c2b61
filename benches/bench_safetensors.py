"""gptlite's own safetensors reader against the safetensors package, on one file.

Each side loads every tensor as a NumPy array and reads it once (a sum), in
its own fresh process so peak RSS is its own: ours memory-maps the file and
hands out read-only views; the package's ``safetensors.numpy.load_file``
copies each tensor into new memory. Rounds alternate between the sides.

    PYTHONPATH=python python3 benches/bench_safetensors.py [--mib 256] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import resource, sys, time, numpy as np
path, side = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if side == "ours":
    from gptlite.engine.checkpoint import read_safetensors
    ts = read_safetensors(path)
else:
    from safetensors.numpy import load_file
    ts = load_file(path)
total = sum(float(a.sum(dtype=np.float64)) for a in ts.values())
dt = time.perf_counter() - t0
print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, total)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import numpy as np

    from gptlite.engine.checkpoint import write_safetensors

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        n = args.mib // 4  # tensors of 4 MiB float32
        rng = np.random.default_rng(0)
        write_safetensors(path, {f"t{i}": rng.standard_normal((1024, 1024), dtype=np.float32) for i in range(n)})
        res = {"ours": [], "safetensors": []}
        for _ in range(args.rounds):
            for side in res:
                out = subprocess.run([sys.executable, "-c", CHILD, str(path), side], capture_output=True, text=True, check=True)
                dt, rss, total = out.stdout.split()
                res[side].append((float(dt), float(rss), float(total)))
        assert res["ours"][0][2] == res["safetensors"][0][2]  # the same numbers read
        summary = {side: {"load_s": statistics.median(r[0] for r in rs), "peak_rss_mib": statistics.median(r[1] for r in rs)}
                   for side, rs in res.items()}
        summary["file_mib"] = path.stat().st_size / 2 ** 20
        summary["time_ratio_ours_over_theirs"] = summary["ours"]["load_s"] / summary["safetensors"]["load_s"]
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
