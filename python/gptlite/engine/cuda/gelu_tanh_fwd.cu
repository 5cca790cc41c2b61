// ElementwiseKernel body: "T x" -> "T y, T t" (GPT-2's tanh GELU; t kept for the backward).
// GELU_K = sqrt(2/pi) and GELU_A = 0.044715 come from kernels.py's preamble.
t = tanh((T)GELU_K * (x + (T)GELU_A * x * x * x));
y = (T)0.5 * x * ((T)1 + t);
