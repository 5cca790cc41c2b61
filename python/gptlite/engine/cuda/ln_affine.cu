// ElementwiseKernel body: "T x, T mean, T rstd, T w, T b" -> "T xhat, T y".
// LayerNorm's normalise + scale + shift, given the per-row mean and rstd.
xhat = (x - mean) * rstd;
y = xhat * w + b;
