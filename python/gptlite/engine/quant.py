"""Weight-only int8 inference: per-output-channel symmetric int8 weights.

Every linear layer and the tied LM head / token embedding is stored as int8
``q`` (n_out, n_in) plus one float32 scale per output channel
(``w[:, j] ~= q[j] * scale[j]``); activations stay float32. Decoding at batch 1
reads every weight once per token, so one byte per weight instead of four is
what sets its speed; the Rust kernel (``_core.qmatmul``) widens each int8 to
float32 in registers right before its FMA and never materialises float weights.

The NumPy float path stays the reference: ``QuantizedWeight.dequantize()`` is
the float matrix the kernel multiplies by, and tests hold the kernel to it.
Quantized models are for inference: backward/training raise.
"""
from __future__ import annotations

import numpy as np

QUANTIZE_CHOICES = ("int8",)

# Above this many activation rows (a long prompt or a big batch's prefill) the
# product is compute-bound: dequantizing once and running sgemm beats a
# GEMV-style kernel, and costs only 1/M of the multiply.
_GEMM_ROWS = 64


def _core():
    from gptlite import _core

    if not hasattr(_core, "qmatmul"):
        raise RuntimeError("gptlite's Rust extension lacks qmatmul: rebuild it (scripts or /work/build_ext.sh)")
    return _core


def kernel_isa() -> str:
    """The SIMD kernel qmatmul runs on this CPU: "avx512f", "avx2+fma" or "portable"."""
    return _core().qmatmul_isa()


def kernel_isas() -> list:
    """Every kernel this CPU can run (tests compare them)."""
    return list(_core().qmatmul_isas())


class QuantizedWeight:
    """An int8 weight with per-output-channel scales.

    ``q`` (n_out, n_in) int8, ``scale`` (n_out,) float32. ``layout`` is the
    float tensor's: "in_out" for GPT-2's Conv1D weights (float shape
    (n_in, n_out), y = x @ W) or "out_in" for the token embedding (float shape
    (V, C), logits = h @ W.T, embedding rows W[idx]).
    """

    is_quantized = True
    ndim = 2
    dtype = np.dtype(np.float32)  # what it computes in (for code that sizes buffers)

    def __init__(self, q, scale, layout: str, name: str = "weight"):
        if layout not in ("in_out", "out_in"):
            raise ValueError(f"{name}: layout must be 'in_out' or 'out_in', got {layout!r}")
        q = np.asarray(q)
        scale = np.asarray(scale)
        if q.ndim != 2 or q.dtype != np.int8:
            raise ValueError(f"{name}: int8 weights must be a 2-D int8 array, got shape {q.shape} dtype {q.dtype}")
        if scale.shape != (q.shape[0],) or scale.dtype.kind != "f":
            raise ValueError(f"{name}: need one float scale per output channel ({q.shape[0]},), got shape {scale.shape} dtype {scale.dtype}")
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        if not np.isfinite(scale).all() or (scale < 0).any():
            raise ValueError(f"{name}: scales must be finite and >= 0")
        if (q == -128).any():
            raise ValueError(f"{name}: symmetric int8 weights lie in [-127, 127]; found -128")
        self.name = name
        self.layout = layout
        # one immutable bytes object the kernel reads in place; q is a view of it
        self._qbytes = np.ascontiguousarray(q).tobytes()
        self.q = np.frombuffer(self._qbytes, dtype=np.int8).reshape(q.shape)
        self.scale = scale
        self._sbytes = scale.tobytes()
        n_out, n_in = q.shape
        self.shape = (n_in, n_out) if layout == "in_out" else (n_out, n_in)
        self.size = n_out * n_in

    @classmethod
    def from_float(cls, w, layout: str, name: str = "weight") -> "QuantizedWeight":
        """Quantize a float weight: scale = max|w| / 127 per output channel."""
        w = np.asarray(w)
        if w.ndim != 2 or w.dtype.kind != "f":
            raise ValueError(f"{name}: can only quantize a 2-D float tensor, got shape {w.shape} dtype {w.dtype}")
        if not np.isfinite(w).all():
            raise ValueError(f"{name}: holds NaN or infinite values; cannot quantize")
        wt = np.ascontiguousarray((w.T if layout == "in_out" else w), dtype=np.float32)  # (n_out, n_in)
        amax = np.abs(wt).max(axis=1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(wt / scale[:, None]), -127, 127).astype(np.int8)
        return cls(q, scale, layout, name)

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scale.nbytes

    def dequantize(self) -> np.ndarray:
        """The float32 tensor (in the original float layout) the kernel multiplies by."""
        w = self.q.astype(np.float32) * self.scale[:, None]
        return np.ascontiguousarray(w.T) if self.layout == "in_out" else w

    def __getitem__(self, idx):
        """Rows of the dequantized (V, C) embedding, for the token lookup."""
        if self.layout != "out_in":
            raise TypeError(f"{self.name}: row lookup is only defined for embedding (out_in) weights")
        return self.q[idx].astype(np.float32) * self.scale[idx][..., None]

    def matmul(self, x, bias=None, isa=None):
        """x (M, n_in) float32 -> x @ W (+ bias), (M, n_out) float32."""
        from gptlite.engine import ops

        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.name}: int8 weights run on NumPy (CPU) arrays, got {type(x).__name__}")
        n_out, n_in = self.q.shape
        if x.ndim != 2 or x.shape[1] != n_in:
            raise ValueError(f"{self.name}: input has shape {x.shape}, expected (rows, {n_in})")
        if bias is not None and tuple(bias.shape) != (n_out,):
            raise ValueError(f"{self.name}: bias has shape {tuple(bias.shape)}, expected ({n_out},)")
        M = x.shape[0]
        if M > _GEMM_ROWS and isa is None:
            w = self.q.astype(np.float32)
            w *= self.scale[:, None]
            y = ops.matmul(np.ascontiguousarray(x, dtype=np.float32), w.T)
            if bias is not None:
                y += bias
            return y
        xb = np.ascontiguousarray(x, dtype="<f4").tobytes()
        bb = None if bias is None else np.ascontiguousarray(bias, dtype="<f4").tobytes()
        out = _core().qmatmul(xb, M, n_in, self._qbytes, n_out, self._sbytes, bb, isa)
        return np.frombuffer(out, dtype=np.float32).reshape(M, n_out)

    def __repr__(self):
        return f"QuantizedWeight({self.name!r}, int8 {self.q.shape}, layout={self.layout})"


def _quantized_names(config) -> dict:
    """Parameter name -> layout, for every weight that is quantized."""
    names = {"wte.weight": "out_in"}
    for i in range(config.n_layer):
        for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            names[f"h.{i}.{part}.weight"] = "in_out"
    return names


def quantize_model(model, mode: str = "int8"):
    """Quantize a CPU float32 GPT's weights in place (and return it).

    Every linear weight and the tied embedding/LM head become int8 with
    per-output-channel scales; biases, LayerNorms and the position embedding
    stay float32 (they are a small share of the bytes).
    """
    from gptlite.engine.model import GPT

    if mode not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)} (or None), got {mode!r}")
    if not isinstance(model, GPT):
        raise TypeError(f"quantize_model needs a GPT, got {type(model).__name__}")
    if model.xp is not np:
        raise ValueError("int8 weights run on the CPU only: load the model with device='cpu'")
    if model.dtype != np.float32:
        raise ValueError(f"int8 quantization computes in float32; the model is {model.dtype}")
    if getattr(model, "quantized", None):
        raise ValueError(f"the model is already quantized ({model.quantized})")
    _core()  # fail before touching the weights if the kernel is missing
    for name, layout in _quantized_names(model.config).items():
        w = model.params[name]
        model.params[name] = QuantizedWeight.from_float(w, layout, name)
    model.quantized = mode
    return model


# safetensors names for saved quantized weights: the int8 tensor under the
# parameter's own name, its scales beside it
SCALE_SUFFIX = ".int8_scale"
QUANT_METADATA_KEY = "gptlite_quantization"


def quantized_tensors(model) -> dict:
    """The tensors to save for a quantized model (int8 weights + float scales)."""
    out = {}
    for name, a in model.params.items():
        if isinstance(a, QuantizedWeight):
            out[name] = np.asarray(a.q)
            out[name + SCALE_SUFFIX] = a.scale
        else:
            out[name] = a
    return out


def adopt_quantized(model, tensors: dict, where: str) -> None:
    """Put saved int8 weights (as from quantized_tensors) into a float GPT made with the rest."""
    for name, layout in _quantized_names(model.config).items():
        q, s = tensors.get(name), tensors.get(name + SCALE_SUFFIX)
        if q is None or s is None:
            raise ValueError(f"{where}: int8 checkpoint lacks {name!r} or its scales {name + SCALE_SUFFIX!r}")
        qw = QuantizedWeight(q, s, layout, name)
        if qw.shape != tuple(model.params[name].shape):
            raise ValueError(f"{where}: tensor {name!r} has float shape {qw.shape}, expected {tuple(model.params[name].shape)}")
        model.params[name] = qw
    model.quantized = "int8"
