// RawModule: the next token of each row, drawn on the device (gptlite.generate's
// GPU sampler). One block per row; only the chosen id is written, so per token
// nothing but B ids has to reach the host.
//
// Launch: grid (B,), block (SAMPLE_THREADS,) a power of two, shared memory
// SAMPLE_THREADS * sizeof(double).
// vals (B, V): the row's logits; sorted in descending order (ids (B, V): their
// token ids) whenever k < V or top_p < 1, else as they are (ids null: the column
// is the id). The filters are those of generate.sample_next: temperature, then
// top-k (values >= the k-th are kept, ties included), then top-p (a token is kept
// while the mass before it is < top_p), then one draw from what is left.
// The uniform draw is SplitMix64 of the counter step * B + row under ``seed``:
// reproducible per seed and independent of the launch configuration.
// Each thread owns a contiguous chunk of the row, so block scans of the chunk
// sums give every element its prefix mass.

__device__ __forceinline__ double gs_neg_inf() { return __longlong_as_double(0xfff0000000000000ULL); }

__device__ __forceinline__ double gs_uniform(unsigned long long seed, unsigned long long counter) {
    unsigned long long z = seed + (counter + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);  // 53 bits: [0, 1)
}

__device__ double gs_block_max(double x, double* sh) {
    int t = threadIdx.x;
    sh[t] = x; __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) { if (t < s) sh[t] = fmax(sh[t], sh[t + s]); __syncthreads(); }
    double r = sh[0]; __syncthreads();
    return r;
}

// Exclusive prefix sum of x over the block (Hillis-Steele); *total gets the sum.
__device__ double gs_block_scan(double x, double* sh, double* total) {
    int t = threadIdx.x, n = blockDim.x;
    sh[t] = x; __syncthreads();
    for (int off = 1; off < n; off <<= 1) {
        double y = t >= off ? sh[t - off] : 0.0;
        __syncthreads();
        sh[t] += y;
        __syncthreads();
    }
    double excl = t > 0 ? sh[t - 1] : 0.0;
    *total = sh[n - 1];
    __syncthreads();
    return excl;
}

template<typename T>
__device__ void gs_sample_row(const T* vals, const long long* ids, long long* out, int V, int k, double inv_temp,
                              double top_p, unsigned long long seed, unsigned long long step) {
    extern __shared__ unsigned char gs_smem[];
    double* sh = reinterpret_cast<double*>(gs_smem);
    __shared__ int first_drop, chosen, last_kept;
    const long long row = blockIdx.x;
    const T* v = vals + row * (long long)V;
    const int t = threadIdx.x;
    const int chunk = (V + blockDim.x - 1) / blockDim.x;
    const int lo = min(V, t * chunk), hi = min(V, lo + chunk);

    double mx = gs_neg_inf();
    for (int j = lo; j < hi; ++j) mx = fmax(mx, (double)v[j]);
    mx = gs_block_max(mx, sh);
    const double kth = k < V ? (double)v[k - 1] : gs_neg_inf();
    // unnormalised probability after temperature and top-k
    auto prob = [&](int j) { double x = (double)v[j]; return x >= kth ? exp((x - mx) * inv_temp) : 0.0; };

    double s = 0.0;
    for (int j = lo; j < hi; ++j) s += prob(j);
    double total;
    double pre = gs_block_scan(s, sh, &total);
    int n = V;  // the kept tokens are the first n of the (sorted) row
    if (top_p < 1.0) {
        if (t == 0) first_drop = V;
        __syncthreads();
        const double cut = top_p * total;
        double c = pre;
        for (int j = lo; j < hi; ++j) {
            if (c >= cut) { atomicMin(&first_drop, j); break; }
            c += prob(j);
        }
        __syncthreads();
        n = first_drop;
        s = 0.0;
        for (int j = lo; j < min(hi, n); ++j) s += prob(j);
        pre = gs_block_scan(s, sh, &total);
    }

    if (t == 0) { chosen = n; last_kept = -1; }
    __syncthreads();
    const double target = gs_uniform(seed, step * gridDim.x + row) * total;
    double c = pre;
    for (int j = lo; j < min(hi, n); ++j) {
        double p = prob(j);
        if (p > 0.0) {
            c += p;
            if (c > target) { atomicMin(&chosen, j); break; }
        }
    }
    // round-off at the top end: the last token with probability > 0
    for (int j = min(hi, n) - 1; j >= lo; --j) {
        if (prob(j) > 0.0) { atomicMax(&last_kept, j); break; }
    }
    __syncthreads();
    if (t == 0) {
        int j = chosen < n ? chosen : last_kept;
        out[row] = ids ? ids[row * (long long)V + j] : (long long)j;
    }
}

// step_dev: when not null the step is read from the device (a CUDA graph's
// per-token step, replayed unchanged, advances it there), else ``step`` is used.
extern "C" __global__ void gs_sample_f32(const float* vals, const long long* ids, long long* out, int V, int k,
                                         double inv_temp, double top_p, unsigned long long seed, unsigned long long step,
                                         const unsigned long long* step_dev) {
    gs_sample_row<float>(vals, ids, out, V, k, inv_temp, top_p, seed, step_dev ? *step_dev : step);
}
extern "C" __global__ void gs_sample_f64(const double* vals, const long long* ids, long long* out, int V, int k,
                                         double inv_temp, double top_p, unsigned long long seed, unsigned long long step,
                                         const unsigned long long* step_dev) {
    gs_sample_row<double>(vals, ids, out, V, k, inv_temp, top_p, seed, step_dev ? *step_dev : step);
}
