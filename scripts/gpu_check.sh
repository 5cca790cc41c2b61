#!/usr/bin/env bash
# The GPU check of issues 17 and 18 (fused kernels, flash attention, bf16 mixed precision), for a fresh H100/H200 machine whose image has python3,
# cupy-cuda13x, numpy, torch (CUDA), transformers and pytest, and no network.
# Budget: under 8 minutes. Writes one results file: $OUT/gpu_check.txt (or ./gpu_check.txt).
#
# The tokenizer extension comes from the abi3 wheel carried with the work tree
# (.wheel/*.whl, built on the CPU machine by `python3 -m maturin build --release -o .wheel`),
# else from a prebuilt python/gptlite/_core.abi3.so carried the same way.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-.}
RES="$OUTDIR/gpu_check.txt"
mkdir -p "$OUTDIR"
: > "$RES"
say() { echo "$*" | tee -a "$RES"; }
T0=$(date +%s)

say "# gptlite gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$RES"
python3 -c "import cupy, torch; print('cupy', cupy.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$RES"

whl=$(ls .wheel/*.whl 2>/dev/null | head -1)
if [ -n "$whl" ]; then
    say "## installing $whl"
    python3 -m pip install --no-deps --no-index --force-reinstall -q "$whl" 2>&1 | tail -3 | tee -a "$RES"
    # the tests import the work tree's python/ sources; the wheel provides the extension
    so=$(python3 -c "import gptlite._core as c; print(c.__file__)" 2>/dev/null)
    [ -n "$so" ] && [ ! -e python/gptlite/_core.abi3.so ] && cp "$so" python/gptlite/_core.abi3.so
fi
export PYTHONPATH=$PWD/python
python3 -c "import gptlite._core" 2>&1 | tee -a "$RES" || say "WARNING: no tokenizer extension; tokenizer tests will fail"

say "## GPU-marked tests (kernels vs NumPy twins, model vs HF fp32/TF32/bf16, 10-step trajectories, bit-exact resume)"
timeout 240 python3 -m pytest -q -rs -m gpu tests/test_gpu_fused.py tests/test_model_reference.py tests/test_ops.py \
    2>&1 | tail -40 | tee -a "$RES"
say "pytest exit: ${PIPESTATUS[0]}"

# the issue-17 training bench comes early so the later sections cannot starve it
say "## bench: 124M, T=1024, B=8, fp32 and TF32 vs HF GPT2LMHeadModel eager + fused AdamW"
timeout 180 python3 benches/bench_gpu_train.py --batch 8 --context 1024 --steps 10 --modes fp32,tf32 \
    --out "$OUTDIR/bench_gpu_train.json" 2>&1 | tail -60 | tee -a "$RES"
say "bench exit: ${PIPESTATUS[0]}"

# every later section runs only while the 8-minute budget lasts
budget() { left=$(( 480 - ($(date +%s) - T0) - 15 )); [ "$left" -gt "$1" ] || { say "skipped (budget): $2"; return 1; }; }

# (the bf16 parity tests ran with the GPU-marked tests above)
if budget 40 "bench: bf16 124M"; then
    say "## bench (issue 18): bf16 124M T=1024 B=8 vs HF under bf16 autocast + SDPA + fused AdamW, MFU"
    timeout $(( left < 120 ? left : 120 )) python3 benches/bench_gpu_train.py --batch 8 --context 1024 --steps 10 --modes bf16 \
        --out "$OUTDIR/bench_gpu_train_bf16.json" 2>&1 | tail -40 | tee -a "$RES"
    say "bench exit: ${PIPESTATUS[0]}"
fi

if budget 30 "flash attention: the real fa_* kernels"; then
    say "## flash attention: the real fa_* kernels vs their NumPy twins (f64/f32/bf16), the model's flash path vs the materialised one; then the twins and the stand-in"
    timeout $(( left < 150 ? left : 150 )) python3 -m pytest -q -rs tests/test_flash_attention.py 2>&1 | tail -15 | tee -a "$RES"
    say "pytest exit: ${PIPESTATUS[0]}"
fi

if budget 30 "bench: flash vs materialised attention"; then
    say "## bench: flash vs materialised attention, 124M shape (B=8, T=1024, 12 x 64), ratio materialised/flash"
    timeout $(( left < 120 ? left : 120 )) python3 benches/bench_attention.py --batch 8 --context 1024 --heads 12 --head-size 64 --reps 10 \
        --out "$OUTDIR/bench_attention.json" 2>&1 | tail -12 | tee -a "$RES"
    say "bench exit: ${PIPESTATUS[0]}"
fi

if budget 30 "generation: the real sampling kernel"; then
    say "## generation: the real sampling kernel vs its NumPy twin, sampled generation on the GPU; the stand-in's generation tests"
    timeout $(( left < 90 ? left : 90 )) python3 -m pytest -q -rs tests/test_generate.py -k "device or real or kv_cache or ptx" 2>&1 | tail -15 | tee -a "$RES"
    say "pytest exit: ${PIPESTATUS[0]}"
fi

if budget 30 "bench: generation 124M"; then
    say "## bench: generation 124M, batch-1 latency (ms/token) and batch-32 throughput (tokens/s), gptlite (CuPy) vs HF generate (torch CUDA)"
    timeout $(( left < 150 ? left : 150 )) python3 benches/bench_generate.py --device cuda --out "$OUTDIR/bench_generate.json" 2>&1 | tail -12 | tee -a "$RES"
    say "bench exit: ${PIPESTATUS[0]}"
fi

if budget 60 "bf16: 355M and 774M shapes, gptlite only"; then
    for shape in 355M 774M; do
        say "## bf16 $shape, T=1024, B=8: tokens/s, MFU, peak pool (gptlite only)"
        timeout $(( left < 90 ? left : 90 )) python3 benches/bench_gpu_train.py --shape $shape --batch 8 --context 1024 \
            --steps 3 --modes bf16 --no-torch --out "$OUTDIR/bench_gpu_train_bf16_$shape.json" 2>&1 | tail -25 | tee -a "$RES"
        budget 60 "bf16 774M" || break
    done
fi

if budget 150 "bf16: HF under torch.compile"; then
    say "## bf16 124M vs HF under torch.compile (autocast bf16, SDPA, fused AdamW)"
    timeout $(( left < 240 ? left : 240 )) python3 benches/bench_gpu_train.py --batch 8 --context 1024 --steps 10 --modes bf16 \
        --compile --out "$OUTDIR/bench_gpu_train_compile.json" 2>&1 | tail -40 | tee -a "$RES"
fi

if budget 30 "CuPy-path tests on the real GPU"; then
    say "## CuPy-path tests on the real GPU's neighbours (stand-in, NVRTC compile)"
    timeout $(( left < 90 ? left : 90 )) python3 -m pytest -q tests/test_cuda_compile.py tests/test_fused.py 2>&1 | tail -5 | tee -a "$RES"
fi


# GPT-2 124M weights, if the image holds them in an HF cache: the reference check
snap=$(ls -d "${HF_HOME:-$HOME/.cache/huggingface}"/hub/models--gpt2/snapshots/* 2>/dev/null | head -1)
left=$(( 480 - ($(date +%s) - T0) - 10 ))
if [ -n "$snap" ] && [ "$left" -gt 30 ]; then
    say "## check-reference on $snap"
    timeout "$left" python3 -m gptlite.cli check-reference --model "$snap" 2>&1 | tail -10 | tee -a "$RES"
else
    say "## no GPT-2 weights in an HF cache (or no time): check-reference and WikiText-2 perplexity not run"
fi
say "# done in $(( $(date +%s) - T0 ))s"
