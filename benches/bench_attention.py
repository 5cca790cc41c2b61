"""Flash attention vs the materialised softmax(QK^T) path, GPT-2 124M's shape
(B=8, T=1024, 12 heads of 64), on one GPU.

    python benches/bench_attention.py --out attention.json          # on a GPU
    python benches/bench_attention.py --stand-in --batch 1 --context 64   # no GPU

Per storage dtype it times (CUDA events, after warm-up) one layer's training
attention, forward alone and forward + backward, of ``attention.flash_attention_*``
(the model's path on CuPy) and of ``ops.attention_forward/backward`` with the GPU
kernel set (the (B, H, T, T) scores, their softmax and its backward), and one
decoding step against a full cache: ``attention.decode_attention`` vs
``ops.attention_kv_forward``. It prints each ratio materialised / flash (above 1:
flash is faster), what each keeps for the backward (the probabilities vs the
log-sum-exp), and the largest difference of the two outputs. bf16 has no
materialised counterpart: its flash times are reported against float32 flash.
``--stand-in`` runs both paths once on tests/fake_cupy.py and reports the largest
difference and the kernels launched (no timings: NumPy's would mean nothing).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))
from compare import report  # noqa: E402


def _inputs(xp, B, T, H, D, dt, seed=0):
    rng = np.random.default_rng(seed)
    C = H * D
    qkv = rng.standard_normal((B * T, 3 * C)).astype(np.float32)
    dy = rng.standard_normal((B * T, C)).astype(np.float32)
    kc, vc = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(2))
    return tuple(xp.asarray(a.astype(dt)) for a in (qkv, dy, kc, vc))


def _paths(be, B, T, H, D):
    """name -> (callable, what it keeps) of the four attention calls on backend be."""
    from gptlite.engine import attention as fa
    from gptlite.engine import ops

    def flash_fwd(qkv, dy):
        return fa.flash_attention_forward(qkv, H, B, T)[0]

    def flash_step(qkv, dy):
        y, c = fa.flash_attention_forward(qkv, H, B, T)
        return fa.flash_attention_backward(dy, c)

    def mat_fwd(qkv, dy):
        return ops.attention_forward(qkv, H, B, T, be=be)[0]

    def mat_step(qkv, dy):
        y, c = ops.attention_forward(qkv, H, B, T, be=be)
        return ops.attention_backward(dy, c, be=be)

    return {"flash_fwd": flash_fwd, "flash_fwd_bwd": flash_step, "mat_fwd": mat_fwd, "mat_fwd_bwd": mat_step}


def _decode_paths(be, B, T, H, D):
    from gptlite.engine import attention as fa
    from gptlite.engine import ops

    def flash(q, kc, vc):
        return fa.decode_attention(q, kc, vc, T)

    def mat(q, kc, vc):
        C = H * D
        qh = q[:, :C].reshape(B, H, 1, D)
        bias = be.xp.zeros((1, 1, 1, T), dtype=q.dtype)
        return ops.attention_kv_forward(qh, kc, vc, bias, be=be)

    return flash, mat


def _max_diff(xp, a, b):
    return float(xp.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def gpu(args) -> dict:
    import cupy as cp

    from gptlite.engine import attention as fa
    from gptlite.engine import backend, fused

    if not backend.cuda_available():
        raise SystemExit("bench_attention: no usable CUDA device (CuPy + driver + GPU); --stand-in runs without one")
    fused.set_tf32(False)
    be = backend.get_backend("cuda")
    B, T, H, D = args.batch, args.context, args.heads, args.head_size
    out = {"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "batch": B, "context": T, "heads": H,
           "head_size": D, "reps": args.reps, "dtypes": {}}

    def timed(fn, *a):
        for _ in range(2):
            fn(*a)
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(args.reps):
            fn(*a)
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / args.reps

    for name, dt in (("f32", np.float32), ("f64", np.float64)):
        qkv, dy, kc, vc = _inputs(cp, B, T, H, D, dt)
        paths = _paths(be, B, T, H, D)
        ms = {k: timed(fn, qkv, dy) for k, fn in paths.items()}
        res = {f"{k}_ms": v for k, v in ms.items()}
        res["ratio_fwd"] = ms["mat_fwd"] / ms["flash_fwd"]
        res["ratio_fwd_bwd"] = ms["mat_fwd_bwd"] / ms["flash_fwd_bwd"]
        res["max_diff_y"] = _max_diff(cp, paths["flash_fwd"](qkv, dy), paths["mat_fwd"](qkv, dy))
        res["max_diff_dqkv"] = _max_diff(cp, paths["flash_fwd_bwd"](qkv, dy), paths["mat_fwd_bwd"](qkv, dy))
        res["kept_for_backward_bytes"] = {"materialised_probabilities": B * H * T * T * np.dtype(dt).itemsize,
                                          "flash_lse": B * H * T * np.dtype(dt).itemsize}
        flash, mat = _decode_paths(be, B, T, H, D)
        q = qkv[(T - 1)::T]  # each row's last token
        q = cp.ascontiguousarray(q)
        res["decode_flash_ms"], res["decode_mat_ms"] = timed(flash, q, kc, vc), timed(mat, q, kc, vc)
        res["ratio_decode"] = res["decode_mat_ms"] / res["decode_flash_ms"]
        res["max_diff_decode"] = _max_diff(cp, flash(q, kc, vc), mat(q, kc, vc))
        out["dtypes"][name] = res
        print(f"{name}: materialised/flash  forward {res['ratio_fwd']:.2f}x ({ms['mat_fwd']:.2f} / {ms['flash_fwd']:.2f} ms)"
              f"  forward+backward {res['ratio_fwd_bwd']:.2f}x ({ms['mat_fwd_bwd']:.2f} / {ms['flash_fwd_bwd']:.2f} ms)"
              f"  decode {res['ratio_decode']:.2f}x ({res['decode_mat_ms']:.3f} / {res['decode_flash_ms']:.3f} ms)"
              f"  max |diff| y {res['max_diff_y']:.1e} dqkv {res['max_diff_dqkv']:.1e}", flush=True)
        del qkv, dy, kc, vc
        cp.get_default_memory_pool().free_all_blocks()
    qkv, dy, kc, vc = _inputs(cp, B, T, H, D, np.float32)
    w = [cp.asarray(fa.to_bf16(cp.asnumpy(a))) for a in (qkv, dy, kc, vc)]
    paths = _paths(be, B, T, H, D)
    flash, _ = _decode_paths(be, B, T, H, D)
    res = {"flash_fwd_ms": timed(paths["flash_fwd"], w[0], w[1]), "flash_fwd_bwd_ms": timed(paths["flash_fwd_bwd"], w[0], w[1]),
           "decode_flash_ms": timed(flash, cp.ascontiguousarray(w[0][(T - 1)::T]), w[2], w[3])}
    f32 = out["dtypes"]["f32"]
    res["f32_over_bf16_fwd_bwd"] = f32["flash_fwd_bwd_ms"] / res["flash_fwd_bwd_ms"]
    out["dtypes"]["bf16"] = res
    print(f"bf16 flash: forward {res['flash_fwd_ms']:.2f} ms, forward+backward {res['flash_fwd_bwd_ms']:.2f} ms "
          f"(f32 flash / bf16 flash {res['f32_over_bf16_fwd_bwd']:.2f}x), decode {res['decode_flash_ms']:.3f} ms", flush=True)
    return out


def stand_in(args) -> dict:
    import fake_cupy
    from gptlite.engine import backend

    cp = fake_cupy.install()
    be = backend.get_backend("cuda")
    B, T, H, D = args.batch, args.context, args.heads, args.head_size
    out = {"mode": "stand-in (NumPy fake CuPy)", "batch": B, "context": T, "heads": H, "head_size": D}
    qkv, dy, kc, vc = _inputs(cp, B, T, H, D, np.float64)
    paths = _paths(be, B, T, H, D)
    for k in ("flash_fwd_bwd", "mat_fwd_bwd"):
        fake_cupy.reset_counts()
        paths[k](qkv, dy)
        out[f"{k}_kernels"] = dict(fake_cupy.KERNEL_LAUNCHES)
        out[f"{k}_launches_lower_bound"] = fake_cupy.COUNTS["launches"]
    out["max_diff_dqkv"] = _max_diff(np, paths["flash_fwd_bwd"](qkv, dy), paths["mat_fwd_bwd"](qkv, dy))
    flash, mat = _decode_paths(be, B, T, H, D)
    q = cp.ascontiguousarray(qkv[(T - 1)::T])
    out["max_diff_decode"] = _max_diff(np, flash(q, kc, vc), mat(q, kc, vc))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stand-in", action="store_true", help="run both paths once on the NumPy stand-in (no GPU)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default=None, help="write the results as JSON here (atomically) instead of printing them")
    args = p.parse_args(argv)
    if min(args.batch, args.context, args.heads, args.head_size, args.reps) < 1:
        p.error("--batch, --context, --heads, --head-size and --reps must be >= 1")
    res = stand_in(args) if args.stand_in else gpu(args)
    return report(res, args.out, echo=not args.out or args.stand_in)


if __name__ == "__main__":
    sys.exit(main())
