// Fused kernels of the GPU training step (issue 17), loaded once by engine/fused.py.
// Every kernel has a NumPy twin in fused.py (KERNEL_TWINS) that the tests and the
// NumPy stand-in run instead; the block-reduction kernels need blockDim.x a power of
// two <= 1024 and dynamic shared memory as fused.shared_mem_bytes() declares.
// Templates are instantiated for float and double (the stand-in tests float64 too).

// NVRTC has no math.h, so no INFINITY macro.
template<typename T> __device__ __forceinline__ T neg_inf();
template<> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template<> __device__ __forceinline__ double neg_inf<double>() { return __longlong_as_double(0xfff0000000000000ULL); }

// float -> bf16 word: the upper half, rounded to nearest-even (NaN stays a quiet NaN);
// the same bit arithmetic as attention.to_bf16 on the host.
__device__ __forceinline__ unsigned short bf16_bits(float x) {
    unsigned int u = __float_as_uint(x);
    return (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)((u >> 16) | 0x40u)
                                            : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// An output that only a bf16 matmul reads: written as bf16 words when yw is given
// (mixed precision: the float32 array never exists), else as T.
template<typename T> __device__ __forceinline__ void put(T* y, unsigned short* yw, long long i, T v) {
    if (yw) yw[i] = bf16_bits((float)v); else y[i] = v;
}

template<typename T> __device__ __forceinline__ T block_sum(T v, T* red) {
    // red: blockDim.x elements of dynamic shared memory; every thread gets the sum
    int tid = threadIdx.x;
    red[tid] = v; __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) { if (tid < s) red[tid] += red[tid + s]; __syncthreads(); }
    T r = red[0]; __syncthreads();
    return r;
}

template<typename T> __device__ __forceinline__ T block_max(T v, T* red) {
    int tid = threadIdx.x;
    red[tid] = v; __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) { if (tid < s && red[tid + s] > red[tid]) red[tid] = red[tid + s]; __syncthreads(); }
    T r = red[0]; __syncthreads();
    return r;
}

// LayerNorm forward, one block per row: optional bias of x (the bias of the linear layer
// that produced it) and residual add (xs = (x + xb) + res, written to xsum so the backward
// and the next residual see it), mean, rstd, affine, in one kernel.
template<typename T> __device__ void ln_fwd(const T* x, const T* xb, const T* res, T* xsum, const T* w, const T* b,
                                            T* y, unsigned short* yw, T* mean, T* rstd, int C, T eps) {
    extern __shared__ unsigned char smem_raw[];
    T* red = reinterpret_cast<T*>(smem_raw);
    long long row = blockIdx.x;
    const T* xr = x + row * C;
    const T* rr = res ? res + row * C : nullptr;
    T* sr = xsum + row * C;
    T s = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        T v = xb ? xr[j] + xb[j] : xr[j];
        if (rr) v += rr[j];
        sr[j] = v; s += v;
    }
    T mu = block_sum(s, red) / (T)C;
    T q = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) { T d = sr[j] - mu; q += d * d; }
    T rs = (T)1 / sqrt(block_sum(q, red) / (T)C + eps);
    for (int j = threadIdx.x; j < C; j += blockDim.x) put(y, yw, row * C + j, (sr[j] - mu) * rs * w[j] + b[j]);
    if (threadIdx.x == 0) { mean[row] = mu; rstd[row] = rs; }
}
extern "C" __global__ void gl_ln_fwd_f32(const float* x, const float* xb, const float* res, float* xsum, const float* w, const float* b,
                                         float* y, unsigned short* yw, float* mean, float* rstd, int C, float eps) {
    ln_fwd<float>(x, xb, res, xsum, w, b, y, yw, mean, rstd, C, eps); }
extern "C" __global__ void gl_ln_fwd_f64(const double* x, const double* xb, const double* res, double* xsum, const double* w, const double* b,
                                         double* y, unsigned short* yw, double* mean, double* rstd, int C, double eps) {
    ln_fwd<double>(x, xb, res, xsum, w, b, y, yw, mean, rstd, C, eps); }

// LayerNorm backward dx, one block per row: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w.
// dres (optional) is added to dx: the gradient that reached the residual sum from later on.
template<typename T> __device__ void ln_bwd_dx(const T* dy, const T* xs, const T* mean, const T* rstd, const T* w,
                                               const T* dres, T* dx, int C) {
    extern __shared__ unsigned char smem_raw[];
    T* red = reinterpret_cast<T*>(smem_raw);
    long long row = blockIdx.x;
    const T* dyr = dy + row * C; const T* xr = xs + row * C;
    T mu = mean[row], rs = rstd[row];
    T a = 0, c = 0;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        T g = dyr[j] * w[j], xh = (xr[j] - mu) * rs;
        a += g; c += g * xh;
    }
    a = block_sum(a, red) / (T)C;
    c = block_sum(c, red) / (T)C;
    T* dxr = dx + row * C;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        T g = dyr[j] * w[j], xh = (xr[j] - mu) * rs;
        T v = rs * (g - a - xh * c);
        dxr[j] = dres ? v + dres[row * C + j] : v;
    }
}
extern "C" __global__ void gl_ln_bwd_dx_f32(const float* dy, const float* xs, const float* mean, const float* rstd, const float* w,
                                            const float* dres, float* dx, int C) { ln_bwd_dx<float>(dy, xs, mean, rstd, w, dres, dx, C); }
extern "C" __global__ void gl_ln_bwd_dx_f64(const double* dy, const double* xs, const double* mean, const double* rstd, const double* w,
                                            const double* dres, double* dx, int C) { ln_bwd_dx<double>(dy, xs, mean, rstd, w, dres, dx, C); }

// LayerNorm dw/db: one thread per column, rows summed in order (deterministic, no atomics);
// accumulate != 0 adds into dw/db (gradient accumulation into the flat buffer).
template<typename T> __device__ void ln_bwd_dwdb(const T* dy, const T* xs, const T* mean, const T* rstd,
                                                 T* dw, T* db, int N, int C, int accumulate) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= C) return;
    T sw = 0, sb = 0;
    for (int r = 0; r < N; ++r) {
        T d = dy[(long long)r * C + j];
        sw += d * (xs[(long long)r * C + j] - mean[r]) * rstd[r];
        sb += d;
    }
    if (accumulate) { dw[j] += sw; db[j] += sb; } else { dw[j] = sw; db[j] = sb; }
}
extern "C" __global__ void gl_ln_bwd_dwdb_f32(const float* dy, const float* xs, const float* mean, const float* rstd,
                                              float* dw, float* db, int N, int C, int accumulate) { ln_bwd_dwdb<float>(dy, xs, mean, rstd, dw, db, N, C, accumulate); }
extern "C" __global__ void gl_ln_bwd_dwdb_f64(const double* dy, const double* xs, const double* mean, const double* rstd,
                                              double* dw, double* db, int N, int C, int accumulate) { ln_bwd_dwdb<double>(dy, xs, mean, rstd, dw, db, N, C, accumulate); }

// Column sum (bias gradients), one thread per column, rows in order.
template<typename T> __device__ void colsum(const T* a, T* out, int N, int C, int accumulate) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= C) return;
    T s = 0;
    for (int r = 0; r < N; ++r) s += a[(long long)r * C + j];
    out[j] = accumulate ? out[j] + s : s;
}
extern "C" __global__ void gl_colsum_f32(const float* a, float* out, int N, int C, int accumulate) { colsum<float>(a, out, N, C, accumulate); }
extern "C" __global__ void gl_colsum_f64(const double* a, double* out, int N, int C, int accumulate) { colsum<double>(a, out, N, C, accumulate); }

// bias + GELU (tanh form, GPT-2's gelu_new): pre = x + bias kept for the backward.
#define GL_GELU_K 0.7978845608028654
#define GL_GELU_A 0.044715
template<typename T> __device__ void bias_gelu_fwd(const T* x, const T* bias, T* pre, T* y, unsigned short* yw, long long n, int C) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T p = x[i] + bias[i % C];
    T t = tanh((T)GL_GELU_K * (p + (T)GL_GELU_A * p * p * p));
    pre[i] = p;
    put(y, yw, i, (T)0.5 * p * ((T)1 + t));
}
extern "C" __global__ void gl_bias_gelu_fwd_f32(const float* x, const float* bias, float* pre, float* y, unsigned short* yw, long long n, int C) {
    bias_gelu_fwd<float>(x, bias, pre, y, yw, n, C); }
extern "C" __global__ void gl_bias_gelu_fwd_f64(const double* x, const double* bias, double* pre, double* y, unsigned short* yw, long long n, int C) {
    bias_gelu_fwd<double>(x, bias, pre, y, yw, n, C); }

template<typename T> __device__ void gelu_bwd(const T* pre, const T* dy, T* dx, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T p = pre[i];
    T t = tanh((T)GL_GELU_K * (p + (T)GL_GELU_A * p * p * p));
    dx[i] = dy[i] * ((T)0.5 * ((T)1 + t) + (T)0.5 * p * ((T)1 - t * t) * (T)GL_GELU_K * ((T)1 + (T)(3 * GL_GELU_A) * p * p));
}
extern "C" __global__ void gl_gelu_bwd_f32(const float* pre, const float* dy, float* dx, long long n) { gelu_bwd<float>(pre, dy, dx, n); }
extern "C" __global__ void gl_gelu_bwd_f64(const double* pre, const double* dy, double* dx, long long n) { gelu_bwd<double>(pre, dy, dx, n); }

// Causal softmax of scaled scores, one block per row of a (..., Tq, Tk) tensor; query row i
// of a Tq-row group sees keys j <= i + (Tk - Tq). The mask is never materialised.
template<typename T> __device__ void causal_softmax_fwd(const T* s, T* p, int Tq, int Tk, T scale) {
    extern __shared__ unsigned char smem_raw[];
    T* red = reinterpret_cast<T*>(smem_raw);
    long long row = blockIdx.x;
    int last = (int)(row % Tq) + (Tk - Tq);  // last visible key
    const T* sr = s + row * Tk; T* pr = p + row * Tk;
    T m = neg_inf<T>();
    for (int j = threadIdx.x; j <= last; j += blockDim.x) m = fmax(m, sr[j] * scale);
    m = block_max(m, red);
    T sum = 0;
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) {
        T e = j <= last ? exp(sr[j] * scale - m) : (T)0;
        pr[j] = e; sum += e;
    }
    T inv = (T)1 / block_sum(sum, red);
    for (int j = threadIdx.x; j <= last; j += blockDim.x) pr[j] *= inv;
}
extern "C" __global__ void gl_causal_softmax_fwd_f32(const float* s, float* p, int Tq, int Tk, float scale) { causal_softmax_fwd<float>(s, p, Tq, Tk, scale); }
extern "C" __global__ void gl_causal_softmax_fwd_f64(const double* s, double* p, int Tq, int Tk, double scale) { causal_softmax_fwd<double>(s, p, Tq, Tk, scale); }

// Its backward: ds = scale * p * (dp - sum_j p*dp), zero where masked.
template<typename T> __device__ void causal_softmax_bwd(const T* p, const T* dp, T* ds, int Tq, int Tk, T scale) {
    extern __shared__ unsigned char smem_raw[];
    T* red = reinterpret_cast<T*>(smem_raw);
    long long row = blockIdx.x;
    int last = (int)(row % Tq) + (Tk - Tq);
    const T* pr = p + row * Tk; const T* dr = dp + row * Tk; T* out = ds + row * Tk;
    T d = 0;
    for (int j = threadIdx.x; j <= last; j += blockDim.x) d += pr[j] * dr[j];
    d = block_sum(d, red);
    for (int j = threadIdx.x; j < Tk; j += blockDim.x) out[j] = j <= last ? scale * pr[j] * (dr[j] - d) : (T)0;
}
extern "C" __global__ void gl_causal_softmax_bwd_f32(const float* p, const float* dp, float* ds, int Tq, int Tk, float scale) { causal_softmax_bwd<float>(p, dp, ds, Tq, Tk, scale); }
extern "C" __global__ void gl_causal_softmax_bwd_f64(const double* p, const double* dp, double* ds, int Tq, int Tk, double scale) { causal_softmax_bwd<double>(p, dp, ds, Tq, Tk, scale); }

// Cross-entropy over one chunk of logits rows, forward and backward in one kernel:
// loss[row] = logsumexp - logit[target], and the logits are overwritten in place by
// dlogits = (softmax - onehot) * dscale. Rows whose target is ignore_index get loss 0
// and dlogits 0. One block per row; the loss stays on the device.
template<typename T> __device__ void ce_fwd_bwd(T* logits, const long long* targets, T* loss, int V, T dscale, long long ignore_index) {
    extern __shared__ unsigned char smem_raw[];
    T* red = reinterpret_cast<T*>(smem_raw);
    long long row = blockIdx.x;
    T* lr = logits + row * V;
    long long t = targets[row];
    if (t == ignore_index) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) lr[j] = 0;
        if (threadIdx.x == 0) loss[row] = 0;
        return;
    }
    T m = neg_inf<T>();
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmax(m, lr[j]);
    m = block_max(m, red);
    T s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += exp(lr[j] - m);
    s = block_sum(s, red);
    T lse = m + log(s);
    T lt = lr[t];  // read by every thread before any thread overwrites it
    __syncthreads();
    if (threadIdx.x == 0) loss[row] = lse - lt;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        T pj = exp(lr[j] - lse);
        lr[j] = (pj - (j == t ? (T)1 : (T)0)) * dscale;
    }
}
extern "C" __global__ void gl_ce_fwd_bwd_f32(float* logits, const long long* targets, float* loss, int V, float dscale, long long ignore_index) { ce_fwd_bwd<float>(logits, targets, loss, V, dscale, ignore_index); }
extern "C" __global__ void gl_ce_fwd_bwd_f64(double* logits, const long long* targets, double* loss, int V, double dscale, long long ignore_index) { ce_fwd_bwd<double>(logits, targets, loss, V, dscale, ignore_index); }

// Clip coefficient and non-finite flag from the squared global norm, on the device:
// norm = sqrt(sumsq); flag = !isfinite(norm); scale = min(1, max_norm / (norm + 1e-6))
// (torch's clip_grad_norm_ coefficient), 1 when max_norm <= 0, 0 when non-finite.
template<typename T> __device__ void clip_scale(const T* sumsq, T max_norm, T* norm_out, T* scale, int* nonfinite) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    T n = sqrt(sumsq[0]);
    norm_out[0] = n;
    int bad = !isfinite(n);
    nonfinite[0] = bad;
    T c = (T)1;
    if (max_norm > 0) { T q = max_norm / (n + (T)1e-6); c = q < (T)1 ? q : (T)1; }
    scale[0] = bad ? (T)0 : c;
}
extern "C" __global__ void gl_clip_scale_f32(const float* sumsq, float max_norm, float* norm_out, float* scale, int* nonfinite) { clip_scale<float>(sumsq, max_norm, norm_out, scale, nonfinite); }
extern "C" __global__ void gl_clip_scale_f64(const double* sumsq, double max_norm, double* norm_out, double* scale, int* nonfinite) { clip_scale<double>(sumsq, max_norm, norm_out, scale, nonfinite); }

// AdamW's step count lives on the device, so a step the flag skips does not advance it
// and nothing is read back to decide: one thread counts the step (when finite) and writes
// the bias corrections the update kernel reads, coef = [sqrt(1 - b2^t), lr / (1 - b1^t)],
// computed in double and rounded once, as training/optim's are on the host.
template<typename T> __device__ void adamw_coef(int* t, const int* nonfinite, T* coef, double b1, double b2, double lr) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    if (!nonfinite[0]) t[0] += 1;
    double s = (double)t[0];
    coef[0] = (T)sqrt(1.0 - pow(b2, s));
    coef[1] = (T)(lr / (1.0 - pow(b1, s)));
}
extern "C" __global__ void gl_adamw_coef_f32(int* t, const int* nonfinite, float* coef, double b1, double b2, double lr) { adamw_coef<float>(t, nonfinite, coef, b1, b2, lr); }
extern "C" __global__ void gl_adamw_coef_f64(int* t, const int* nonfinite, double* coef, double b1, double b2, double lr) { adamw_coef<double>(t, nonfinite, coef, b1, b2, lr); }

// AdamW over the whole flat buffer in one launch (the same arithmetic as
// training/optim._adamw_update): elements [0, n_decay) get decoupled decay, the clip
// coefficient and the bias corrections are read from the device, and a non-finite step
// (flag set by gl_clip_scale) leaves p, m and v untouched, so nothing is read back to decide.
// The factors 1 - lr*wd, 1 - b1 and 1 - b2 come rounded from double, as optim's are.
template<typename T> __device__ void adamw(T* p, const T* g, T* m, T* v, const T* scale, const int* nonfinite, const T* coef,
                                           long long n, long long n_decay, T keep, T c1, T b2, T c2, T eps) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || nonfinite[0]) return;
    T bc2_sqrt = coef[0], step_size = coef[1];
    T gi = g[i] * scale[0];
    T pi = p[i];
    if (i < n_decay) pi *= keep;
    T mi = m[i] + (gi - m[i]) * c1;
    T vi = v[i] * b2 + gi * gi * c2;
    m[i] = mi; v[i] = vi;
    p[i] = pi - mi / (sqrt(vi) / bc2_sqrt + eps) * step_size;
}
extern "C" __global__ void gl_adamw_f32(float* p, const float* g, float* m, float* v, const float* scale, const int* nonfinite, const float* coef,
                                        long long n, long long n_decay, float keep, float c1, float b2, float c2, float eps) {
    adamw<float>(p, g, m, v, scale, nonfinite, coef, n, n_decay, keep, c1, b2, c2, eps); }
extern "C" __global__ void gl_adamw_f64(double* p, const double* g, double* m, double* v, const double* scale, const int* nonfinite, const double* coef,
                                        long long n, long long n_decay, double keep, double c1, double b2, double c2, double eps) {
    adamw<double>(p, g, m, v, scale, nonfinite, coef, n, n_decay, keep, c1, b2, c2, eps); }

// Deterministic embedding backward: rows sorted by (token id, position) beforehand;
// one block per sorted row, and only the first row of each token's run sums the run
// in position order into dwte (adds: dwte may already hold the LM head's gradient).
template<typename T> __device__ void embed_bwd(const T* dout, const long long* order, const long long* sorted_ids,
                                               T* dwte, long long N, int C) {
    long long i = blockIdx.x;
    long long id = sorted_ids[i];
    if (i > 0 && sorted_ids[i - 1] == id) return;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        T s = 0;
        for (long long k = i; k < N && sorted_ids[k] == id; ++k) s += dout[order[k] * C + c];
        dwte[id * C + c] += s;
    }
}
extern "C" __global__ void gl_embed_bwd_f32(const float* dout, const long long* order, const long long* sorted_ids, float* dwte, long long N, int C) {
    embed_bwd<float>(dout, order, sorted_ids, dwte, N, C); }
extern "C" __global__ void gl_embed_bwd_f64(const double* dout, const long long* order, const long long* sorted_ids, double* dwte, long long N, int C) {
    embed_bwd<double>(dout, order, sorted_ids, dwte, N, C); }

// float32 -> bf16 words, the operands of engine/bf16.py's tensor-core matmuls (no
// header: bf16_bits above, bit for bit attention.to_bf16 on the host).
extern "C" __global__ void gl_to_bf16_f32(const float* x, unsigned short* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = bf16_bits(x[i]);
}
