// ElementwiseKernel body: "T x, T t, T dy" -> "T dx".
// d/dx = 0.5(1+t) + 0.5x(1-t^2) k (1 + 3a x^2), with t = tanh(k(x + a x^3)).
dx = dy * ((T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * (T)GELU_K * ((T)1 + (T)(3 * GELU_A) * x * x));
