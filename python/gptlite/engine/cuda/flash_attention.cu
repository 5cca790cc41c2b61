// Flash attention (issue 18), loaded once by engine/attention.py. Every kernel has a
// NumPy twin in attention.py (KERNEL_TWINS) with the same tiling and the same online
// softmax; tests/fake_cupy.py runs the twins in place of these launches and the GPU
// tests compare the two.
//
// Layout: qkv is the fused projection (B*T, 3C), C = H*D: q, k, v of head h at columns
// h*D, C + h*D, 2C + h*D, so no split/transposed copy is ever made. y and dy are
// (B*T, C); lse and dsum are (B*H, T) in the accumulation type.
//
// Causal only (the model's training attention and the prompt of KV-cache decoding, whose
// left padding the forward masks: pad (B,) int64 or null, keys j < pad[b] hidden from
// every query but query j itself). No T x T matrix exists anywhere: a block
// owns FA_BR query rows (or FA_BR keys in the dK/dV kernel), FA_TPR threads per row split
// the head dimensions (d = lane + FA_TPR*j) and reduce their partial dot products with
// two warp shuffles; the other side streams through shared memory in tiles of
// Tile<A,DMAX>::BC rows. Tiles entirely above the diagonal are never loaded.
//
// Storage types: float, double, and bf16 held as 16-bit words (unsigned short),
// converted on load and rounded to nearest-even on store; bf16 accumulates in float.
// DMAX (32, 64, 128) bounds the head size; the head size D itself is a runtime argument
// and the dimensions D..DMAX-1 are zero padding.
//
// The backward is deterministic (no atomics): dK/dV come from one kernel looping over
// query tiles, dQ from a second looping over key tiles, both recomputing the scores
// from q, k and the forward's log-sum-exp.

#define FA_BR 32
#define FA_TPR 4
#define FA_THREADS (FA_BR * FA_TPR)
#define DEC_WARPS 4
#define DEC_THREADS (DEC_WARPS * 32)

template<typename T> __device__ __forceinline__ T fa_neg_inf();
template<> __device__ __forceinline__ float fa_neg_inf<float>() { return __int_as_float(0xff800000); }
template<> __device__ __forceinline__ double fa_neg_inf<double>() { return __longlong_as_double(0xfff0000000000000ULL); }

__device__ __forceinline__ float fa_ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ double fa_ld(const double* p, long long i) { return p[i]; }
__device__ __forceinline__ float fa_ld(const unsigned short* p, long long i) { return __uint_as_float(((unsigned)p[i]) << 16); }

__device__ __forceinline__ void fa_st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void fa_st(double* p, long long i, double v) { p[i] = v; }
__device__ __forceinline__ void fa_st(unsigned short* p, long long i, float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p[i] = (unsigned short)((u >> 16) | 0x40u); return; }  // NaN stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    p[i] = (unsigned short)(u >> 16);
}

template<typename A> __device__ __forceinline__ A fa_max(A a, A b) { return a > b ? a : b; }

// the FA_TPR threads of a row are adjacent lanes of one warp
template<typename A> __device__ __forceinline__ A quad_sum(A v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

template<typename A> __device__ __forceinline__ A warp_sum(A v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// rows per streamed tile: two tiles of BC x DMAX accumulators stay under 48 KB of static shared memory
template<typename A, int DMAX> struct Tile { enum { BC = (sizeof(A) == 8 && DMAX == 128) ? 16 : 32 }; };

// ---- forward: y = softmax(q k^T * scale, causal) v, lse = m + log(l) per row ---------------
template<typename S, typename A, int DMAX>
__device__ void flash_fwd(const S* qkv, S* y, A* lse, const long long* pad, int T, int H, int D, A scale) {
    constexpr int BC = Tile<A, DMAX>::BC;
    constexpr int PER = DMAX / FA_TPR;
    __shared__ A ks[BC][DMAX];
    __shared__ A vs[BC][DMAX];
    const int C = H * D;
    const long long C3 = 3LL * C;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int r0 = blockIdx.x * FA_BR;
    const int tid = threadIdx.x, lane = tid % FA_TPR, row = r0 + tid / FA_TPR;
    const bool live = row < T;
    const long long p0 = pad ? pad[b] : 0;
    const S* base = qkv + (long long)b * T * C3 + (long long)h * D;
    A q[PER], o[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        int d = lane + FA_TPR * j;
        q[j] = (live && d < D) ? (A)fa_ld(base, (long long)row * C3 + d) * scale : (A)0;
        o[j] = 0;
    }
    A m = fa_neg_inf<A>(), l = 0;
    const int kend = min(T, r0 + FA_BR);  // causal: no key after the block's last row
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads();
        for (int e = tid; e < BC * DMAX; e += FA_THREADS) {
            int c = e / DMAX, d = e % DMAX, key = k0 + c;
            bool ok = key < T && d < D;
            ks[c][d] = ok ? (A)fa_ld(base, (long long)key * C3 + C + d) : (A)0;
            vs[c][d] = ok ? (A)fa_ld(base, (long long)key * C3 + 2 * C + d) : (A)0;
        }
        __syncthreads();
        A s[BC];
        A mt = m;
#pragma unroll
        for (int c = 0; c < BC; ++c) {
            A part = 0;
#pragma unroll
            for (int j = 0; j < PER; ++j) part += q[j] * ks[c][lane + FA_TPR * j];
            part = quad_sum(part);
            int key = k0 + c;
            s[c] = (key <= row && key < T && (key >= p0 || key == row)) ? part : fa_neg_inf<A>();
            mt = fa_max(mt, s[c]);
        }
        // no key of this tile is visible yet (left padding): nothing to add, and
        // exp(-inf - -inf) must not turn the row into NaN; no shuffle follows, so
        // leaving the rest of the tile to the other rows is safe
        if (mt == fa_neg_inf<A>()) continue;
        A alpha = exp(m - mt);
        l *= alpha;
#pragma unroll
        for (int j = 0; j < PER; ++j) o[j] *= alpha;
#pragma unroll
        for (int c = 0; c < BC; ++c) {
            A p = exp(s[c] - mt);
            l += p;
#pragma unroll
            for (int j = 0; j < PER; ++j) o[j] += p * vs[c][lane + FA_TPR * j];
        }
        m = mt;
    }
    if (live) {
        A inv = (A)1 / l;
        long long yrow = ((long long)b * T + row) * C + (long long)h * D;
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            int d = lane + FA_TPR * j;
            if (d < D) fa_st(y, yrow + d, o[j] * inv);
        }
        if (lane == 0) lse[(long long)bh * T + row] = m + log(l);
    }
}

// ---- backward, step 1: dsum[bh, t] = sum_d dy * y (the softmax backward's row term) ---------
template<typename S, typename A>
__device__ void flash_bwd_pre(const S* dy, const S* y, A* dsum, int B, int T, int H, int D) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // over (b, t, h), h fastest
    long long n = (long long)B * T * H;
    if (i >= n) return;
    int h = (int)(i % H);
    long long bt = i / H;
    int t = (int)(bt % T), b = (int)(bt / T);
    const long long off = bt * (long long)H * D + (long long)h * D;
    A s = 0;
    for (int d = 0; d < D; ++d) s += (A)fa_ld(dy, off + d) * (A)fa_ld(y, off + d);
    dsum[((long long)b * H + h) * T + t] = s;
}

// ---- backward, step 2: dK, dV of FA_BR keys, streaming the query tiles that can see them ----
template<typename S, typename A, int DMAX>
__device__ void flash_bwd_dkdv(const S* qkv, const S* dy, const A* lse, const A* dsum, S* dqkv,
                               int T, int H, int D, A scale) {
    constexpr int BQ = Tile<A, DMAX>::BC;
    constexpr int PER = DMAX / FA_TPR;
    __shared__ A qs[BQ][DMAX];
    __shared__ A dos[BQ][DMAX];
    __shared__ A ls[BQ];
    __shared__ A dss[BQ];
    const int C = H * D;
    const long long C3 = 3LL * C;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int c0 = blockIdx.x * FA_BR;
    const int tid = threadIdx.x, lane = tid % FA_TPR, key = c0 + tid / FA_TPR;
    const bool live = key < T;
    const S* base = qkv + (long long)b * T * C3 + (long long)h * D;
    const S* dbase = dy + (long long)b * T * C + (long long)h * D;
    A k[PER], v[PER], dk[PER], dv[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        int d = lane + FA_TPR * j;
        bool ok = live && d < D;
        k[j] = ok ? (A)fa_ld(base, (long long)key * C3 + C + d) : (A)0;
        v[j] = ok ? (A)fa_ld(base, (long long)key * C3 + 2 * C + d) : (A)0;
        dk[j] = 0; dv[j] = 0;
    }
    const A* lrow = lse + (long long)bh * T;
    const A* drow = dsum + (long long)bh * T;
    // causal: query tiles wholly before the block's first key never see it
    for (int q0 = (c0 / BQ) * BQ; q0 < T; q0 += BQ) {
        __syncthreads();
        for (int e = tid; e < BQ * DMAX; e += FA_THREADS) {
            int r = e / DMAX, d = e % DMAX, row = q0 + r;
            bool ok = row < T && d < D;
            qs[r][d] = ok ? (A)fa_ld(base, (long long)row * C3 + d) * scale : (A)0;
            dos[r][d] = ok ? (A)fa_ld(dbase, (long long)row * C + d) : (A)0;
        }
        if (tid < BQ) {
            int row = q0 + tid;
            ls[tid] = row < T ? lrow[row] : (A)0;
            dss[tid] = row < T ? drow[row] : (A)0;
        }
        __syncthreads();
#pragma unroll 4
        for (int r = 0; r < BQ; ++r) {
            A s = 0, dp = 0;
#pragma unroll
            for (int j = 0; j < PER; ++j) {
                s += qs[r][lane + FA_TPR * j] * k[j];
                dp += dos[r][lane + FA_TPR * j] * v[j];
            }
            s = quad_sum(s);
            dp = quad_sum(dp);
            int row = q0 + r;
            A p = (key <= row && row < T && live) ? exp(s - ls[r]) : (A)0;
            A ds = p * (dp - dss[r]);
#pragma unroll
            for (int j = 0; j < PER; ++j) {
                dv[j] += p * dos[r][lane + FA_TPR * j];
                dk[j] += ds * qs[r][lane + FA_TPR * j];  // qs holds scale*q: dk = scale * sum ds q
            }
        }
    }
    if (live) {
        long long out = ((long long)b * T + key) * C3 + (long long)h * D;
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            int d = lane + FA_TPR * j;
            if (d < D) { fa_st(dqkv, out + C + d, dk[j]); fa_st(dqkv, out + 2 * C + d, dv[j]); }
        }
    }
}

// ---- backward, step 3: dQ of FA_BR query rows, streaming the key tiles they see -------------
template<typename S, typename A, int DMAX>
__device__ void flash_bwd_dq(const S* qkv, const S* dy, const A* lse, const A* dsum, S* dqkv,
                             int T, int H, int D, A scale) {
    constexpr int BC = Tile<A, DMAX>::BC;
    constexpr int PER = DMAX / FA_TPR;
    __shared__ A ks[BC][DMAX];
    __shared__ A vs[BC][DMAX];
    const int C = H * D;
    const long long C3 = 3LL * C;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int r0 = blockIdx.x * FA_BR;
    const int tid = threadIdx.x, lane = tid % FA_TPR, row = r0 + tid / FA_TPR;
    const bool live = row < T;
    const S* base = qkv + (long long)b * T * C3 + (long long)h * D;
    const S* dbase = dy + (long long)b * T * C + (long long)h * D;
    A q[PER], g[PER], dq[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        int d = lane + FA_TPR * j;
        bool ok = live && d < D;
        q[j] = ok ? (A)fa_ld(base, (long long)row * C3 + d) * scale : (A)0;
        g[j] = ok ? (A)fa_ld(dbase, (long long)row * C + d) : (A)0;
        dq[j] = 0;
    }
    const A L = live ? lse[(long long)bh * T + row] : (A)0;
    const A Dr = live ? dsum[(long long)bh * T + row] : (A)0;
    const int kend = min(T, r0 + FA_BR);
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads();
        for (int e = tid; e < BC * DMAX; e += FA_THREADS) {
            int c = e / DMAX, d = e % DMAX, key = k0 + c;
            bool ok = key < T && d < D;
            ks[c][d] = ok ? (A)fa_ld(base, (long long)key * C3 + C + d) : (A)0;
            vs[c][d] = ok ? (A)fa_ld(base, (long long)key * C3 + 2 * C + d) : (A)0;
        }
        __syncthreads();
#pragma unroll 4
        for (int c = 0; c < BC; ++c) {
            A s = 0, dp = 0;
#pragma unroll
            for (int j = 0; j < PER; ++j) {
                s += q[j] * ks[c][lane + FA_TPR * j];
                dp += g[j] * vs[c][lane + FA_TPR * j];
            }
            s = quad_sum(s);
            dp = quad_sum(dp);
            int key = k0 + c;
            A p = (key <= row && key < T && live) ? exp(s - L) : (A)0;
            A ds = p * (dp - Dr);
#pragma unroll
            for (int j = 0; j < PER; ++j) dq[j] += ds * ks[c][lane + FA_TPR * j];
        }
    }
    if (live) {
        long long out = ((long long)b * T + row) * C3 + (long long)h * D;
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            int d = lane + FA_TPR * j;
            if (d < D) fa_st(dqkv, out + d, dq[j] * scale);
        }
    }
}

// ---- decoding: one new query per (b, h) against S cached keys, split over blockIdx.y -------
// q: the new token's qkv row of batch b at q + b*q_stride; kc, vc: (B, H, L, D) caches with
// columns [0, S) filled; pad (B,) int64 or null: keys j < pad[b] are left padding, hidden
// unless j is the query's own column S-1. Each split writes its unnormalised output and
// (max, sum of exp) to part_o (B*H*nsplit, D) and part_ml (B*H*nsplit, 2).
template<typename S, typename A, int DMAX>
__device__ void decode_part(const S* q, long long q_stride, const S* kc, const S* vc, const long long* pad,
                            A* part_o, A* part_ml, int H, int D, int L, int Slen, int chunk, A scale,
                            const int* slen_dev) {
    if (slen_dev) Slen = *slen_dev;  // a CUDA graph's step: the filled length lives on the device
    constexpr int PER = DMAX / 32;
    __shared__ A wm[DEC_WARPS], wl[DEC_WARPS];
    __shared__ A wo[DEC_WARPS][DMAX];
    const int bh = blockIdx.x, b = bh / H, h = bh % H;
    const int split = blockIdx.y, nsplit = gridDim.y;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int j0 = split * chunk, j1 = min(Slen, j0 + chunk);
    const long long p0 = pad ? pad[b] : 0;
    const S* kb = kc + (long long)bh * L * D;
    const S* vb = vc + (long long)bh * L * D;
    A qr[PER], o[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        int d = lane + 32 * j;
        qr[j] = d < D ? (A)fa_ld(q, (long long)b * q_stride + (long long)h * D + d) * scale : (A)0;
        o[j] = 0;
    }
    A m = fa_neg_inf<A>(), l = 0;
    for (int key = j0 + warp; key < j1; key += DEC_WARPS) {
        if (key < p0 && key != Slen - 1) continue;  // warp-uniform: every lane has the same key
        A s = 0;
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            int d = lane + 32 * j;
            if (d < D) s += qr[j] * (A)fa_ld(kb, (long long)key * D + d);
        }
        s = warp_sum(s);
        A mn = fa_max(m, s);
        A alpha = exp(m - mn), p = exp(s - mn);
        l = l * alpha + p;
#pragma unroll
        for (int j = 0; j < PER; ++j) {
            int d = lane + 32 * j;
            o[j] = o[j] * alpha + (d < D ? p * (A)fa_ld(vb, (long long)key * D + d) : (A)0);
        }
        m = mn;
    }
    if (lane == 0) { wm[warp] = m; wl[warp] = l; }
#pragma unroll
    for (int j = 0; j < PER; ++j) wo[warp][lane + 32 * j] = o[j];
    __syncthreads();
    A M = wm[0];
    for (int w = 1; w < DEC_WARPS; ++w) M = fa_max(M, wm[w]);
    const long long slot = (long long)bh * nsplit + split;
    for (int d = threadIdx.x; d < D; d += DEC_THREADS) {
        A acc = 0;
        for (int w = 0; w < DEC_WARPS; ++w) if (wl[w] > (A)0) acc += wo[w][d] * exp(wm[w] - M);
        part_o[slot * D + d] = acc;
    }
    if (threadIdx.x == 0) {
        A lsum = 0;
        for (int w = 0; w < DEC_WARPS; ++w) if (wl[w] > (A)0) lsum += wl[w] * exp(wm[w] - M);
        part_ml[slot * 2] = M;
        part_ml[slot * 2 + 1] = lsum;
    }
}

// y (B, C) = sum over splits of part_o * exp(m - M) / sum of l * exp(m - M)
template<typename S, typename A>
__device__ void decode_comb(const A* part_o, const A* part_ml, S* y, int H, int D, int nsplit) {
    const int bh = blockIdx.x, b = bh / H, h = bh % H;
    const A* ml = part_ml + (long long)bh * nsplit * 2;
    A M = fa_neg_inf<A>();
    for (int s = 0; s < nsplit; ++s) if (ml[2 * s + 1] > (A)0) M = fa_max(M, ml[2 * s]);
    A L = 0;
    for (int s = 0; s < nsplit; ++s) if (ml[2 * s + 1] > (A)0) L += ml[2 * s + 1] * exp(ml[2 * s] - M);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        A acc = 0;
        for (int s = 0; s < nsplit; ++s)
            if (ml[2 * s + 1] > (A)0) acc += part_o[((long long)bh * nsplit + s) * D + d] * exp(ml[2 * s] - M);
        fa_st(y, (long long)b * H * D + (long long)h * D + d, acc / L);
    }
}

#define FA_ENTRIES_D(SFX, S, A, DM)                                                                              \
extern "C" __global__ void __launch_bounds__(FA_THREADS) fa_fwd_##SFX##_d##DM(                                \
    const S* qkv, S* y, A* lse, const long long* pad, int T, int H, int D, A scale) {                           \
    flash_fwd<S, A, DM>(qkv, y, lse, pad, T, H, D, scale); }                                                   \
extern "C" __global__ void __launch_bounds__(FA_THREADS) fa_bwd_dkdv_##SFX##_d##DM(                           \
    const S* qkv, const S* dy, const A* lse, const A* dsum, S* dqkv, int T, int H, int D, A scale) {            \
    flash_bwd_dkdv<S, A, DM>(qkv, dy, lse, dsum, dqkv, T, H, D, scale); }                                      \
extern "C" __global__ void __launch_bounds__(FA_THREADS) fa_bwd_dq_##SFX##_d##DM(                             \
    const S* qkv, const S* dy, const A* lse, const A* dsum, S* dqkv, int T, int H, int D, A scale) {            \
    flash_bwd_dq<S, A, DM>(qkv, dy, lse, dsum, dqkv, T, H, D, scale); }                                        \
extern "C" __global__ void __launch_bounds__(DEC_THREADS) fa_dec_part_##SFX##_d##DM(                          \
    const S* q, long long q_stride, const S* kc, const S* vc, const long long* pad, A* part_o, A* part_ml,      \
    int H, int D, int L, int Slen, int chunk, A scale, const int* slen_dev) {                                  \
    decode_part<S, A, DM>(q, q_stride, kc, vc, pad, part_o, part_ml, H, D, L, Slen, chunk, scale, slen_dev); }

// The new token's k and v into column *col of one layer's caches (B, H, L, D): the
// write of a CUDA graph's decode step, whose column advances on the device.
// Grid (B*H,), block (>= D threads, <= 1024).
template<typename S>
__device__ void kv_append(const S* qkv, long long q_stride, S* kc, S* vc, const int* col, int H, int D, int L) {
    const int bh = blockIdx.x, b = bh / H, h = bh % H, d = threadIdx.x;
    if (d >= D) return;
    const long long c = (long long)H * D;
    const long long dst = ((long long)bh * L + *col) * D + d;
    kc[dst] = qkv[(long long)b * q_stride + c + (long long)h * D + d];
    vc[dst] = qkv[(long long)b * q_stride + 2 * c + (long long)h * D + d];
}

#define FA_ENTRIES(SFX, S, A)                                                                                   \
extern "C" __global__ void fa_kv_append_##SFX(const S* qkv, long long q_stride, S* kc, S* vc, const int* col,  \
                                              int H, int D, int L) {                                           \
    kv_append<S>(qkv, q_stride, kc, vc, col, H, D, L); }                                                       \
extern "C" __global__ void fa_bwd_pre_##SFX(const S* dy, const S* y, A* dsum, int B, int T, int H, int D) {   \
    flash_bwd_pre<S, A>(dy, y, dsum, B, T, H, D); }                                                            \
extern "C" __global__ void fa_dec_comb_##SFX(const A* part_o, const A* part_ml, S* y, int H, int D, int nsplit) { \
    decode_comb<S, A>(part_o, part_ml, y, H, D, nsplit); }                                                     \
FA_ENTRIES_D(SFX, S, A, 32) FA_ENTRIES_D(SFX, S, A, 64) FA_ENTRIES_D(SFX, S, A, 128)

FA_ENTRIES(f32, float, float)
FA_ENTRIES(f64, double, double)
FA_ENTRIES(bf16, unsigned short, float)
