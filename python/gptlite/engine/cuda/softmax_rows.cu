// RawModule: in-place softmax over rows of n, one block per row (max, exp, sum, scale).
// Launch: grid (rows,), block (threads,), shared memory threads * sizeof(T).
template<typename T>
__device__ void softmax_row(T* x, int n) {
    extern __shared__ unsigned char smem[];
    T* red = reinterpret_cast<T*>(smem);
    int tid = threadIdx.x;
    T m = x[0];  // any element of the row is a valid start for the max
    for (int j = tid; j < n; j += blockDim.x) m = x[j] > m ? x[j] : m;
    red[tid] = m; __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) { if (tid < s && red[tid + s] > red[tid]) red[tid] = red[tid + s]; __syncthreads(); }
    m = red[0]; __syncthreads();
    T sum = 0;
    for (int j = tid; j < n; j += blockDim.x) { T e = exp(x[j] - m); x[j] = e; sum += e; }
    red[tid] = sum; __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) { if (tid < s) red[tid] += red[tid + s]; __syncthreads(); }
    T inv = (T)1 / red[0];
    for (int j = tid; j < n; j += blockDim.x) x[j] *= inv;
}
extern "C" __global__ void softmax_f32(float* x, int n) { softmax_row<float>(x + (long long)blockIdx.x * n, n); }
extern "C" __global__ void softmax_f64(double* x, int n) { softmax_row<double>(x + (long long)blockIdx.x * n, n); }
