"""GPT-1 / GPT-2: a decoder-only transformer, forward and backward by hand.

The model is a params dict (GPT-2's tensor names, without "transformer.")
plus functions that run the ops of ``gptlite.engine.ops`` in order. Activations are
kept 2-D, (N, C) with N = B*T, so each projection is one GEMM; attention
reshapes to (B, H, T, hs) views.

Layouts:
  gpt2: pre-LN   x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); final ln_f
  gpt1: post-LN  x = ln_1(x + attn(x)); x = ln_2(x + mlp(x)); no ln_f
The LM head is tied to the token embedding: logits = h @ wte.T.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from gptlite.engine import attention, ops
from gptlite.engine.backend import Uploaded, get_backend, keep_freed_memory, to_numpy

_HF_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu"}


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: Optional[int] = None  # None means 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    layout: str = "gpt2"  # "gpt2": pre-LN + ln_f ; "gpt1": post-LN, no ln_f
    activation_function: str = "gelu_new"  # "gelu_new" (tanh approx.) or "gelu" (erf)

    def __post_init__(self):
        if self.layout not in ("gpt2", "gpt1"):
            raise ValueError(f"layout must be 'gpt2' or 'gpt1', got {self.layout!r}")
        if self.activation_function not in ops.ACTIVATIONS:
            raise ValueError(f"activation_function must be one of {ops.ACTIVATIONS}, got {self.activation_function!r}")
        from gptlite.validate import integer, positive_number

        # type and range first: 192.0 or "x" must not become a shape, NaN or a
        # negative epsilon must not turn every logit into NaN
        # upper bounds far above any GPT (gpt2-xl: 48 layers, 1600 channels) so a forged
        # size is refused before a shape table of billions of entries is built
        limits = {"vocab_size": 1 << 24, "n_positions": 1 << 20, "n_embd": 1 << 16, "n_layer": 1 << 12, "n_head": 1 << 12}
        for name, hi in limits.items():
            integer(getattr(self, name), "config", name, lo=1, hi=hi)
        if self.n_inner is not None:
            integer(self.n_inner, "config", "n_inner", lo=1, hi=1 << 18)
        positive_number(self.layer_norm_epsilon, "config", "layer_norm_epsilon")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def d_ff(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    PRESETS = {
        "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
        "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
        "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
        "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
        # GPT-1, 117M. Its GELU is the tanh approximation (OpenAI's code, and
        # transformers' OpenAIGPT maps afn "gelu" to gelu_new).
        "openai-gpt": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=40478, n_positions=512,
                           layout="gpt1", activation_function="gelu_new"),
    }

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        if name not in cls.PRESETS:
            raise ValueError(f"unknown preset {name!r}: expected one of {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def to_hf_dict(self) -> dict:
        """transformers' config.json for GPT2LMHeadModel / OpenAIGPTLMHeadModel."""
        common = dict(vocab_size=self.vocab_size, n_positions=self.n_positions, n_ctx=self.n_positions,
                      n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head,
                      layer_norm_epsilon=self.layer_norm_epsilon, initializer_range=0.02,
                      attn_pdrop=0.1, embd_pdrop=0.1, resid_pdrop=0.1)
        if self.layout == "gpt1":
            if self.n_inner is not None and self.n_inner != 4 * self.n_embd:
                raise ValueError("transformers' OpenAIGPT has no n_inner: the GPT-1 layout needs n_inner = 4 * n_embd")
            if self.activation_function != "gelu_new":
                raise ValueError("transformers' OpenAIGPT has only the tanh GELU (its afn 'gelu' is gelu_new): "
                                 "the GPT-1 layout needs activation_function='gelu_new'")
            return dict(model_type="openai-gpt", architectures=["OpenAIGPTLMHeadModel"], afn="gelu", **common)
        return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"],
                    activation_function=self.activation_function, n_inner=self.n_inner,
                    bos_token_id=self.vocab_size - 1, eos_token_id=self.vocab_size - 1, **common)

    @classmethod
    def from_hf_dict(cls, d: dict) -> "GPTConfig":
        model_type = d.get("model_type", "gpt2")
        if model_type not in ("gpt2", "openai-gpt"):
            raise ValueError(f"config model_type {model_type!r} is not supported: expected 'gpt2' or 'openai-gpt'")
        gpt1 = model_type == "openai-gpt"
        if gpt1:  # transformers' OpenAIGPT: afn "gelu" is the tanh approximation
            act = d.get("afn", "gelu")
            if act != "gelu":
                raise ValueError(f"openai-gpt afn {act!r} is not supported: expected 'gelu'")
            act = "gelu_new"
        else:
            act = d.get("activation_function", "gelu_new")
        if act not in _HF_ACTIVATIONS:
            raise ValueError(f"activation {act!r} in config is not supported: expected one of {sorted(_HF_ACTIVATIONS)}")
        if "n_positions" not in d and "n_ctx" not in d:
            raise ValueError("config has neither n_positions nor n_ctx")
        kw = dict(vocab_size=d.get("vocab_size", 40478 if gpt1 else 50257),
                  n_positions=d.get("n_positions", d.get("n_ctx")),
                  n_embd=d.get("n_embd", 768), n_layer=d.get("n_layer", 12), n_head=d.get("n_head", 12),
                  n_inner=None if gpt1 else d.get("n_inner"),
                  layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
                  layout="gpt1" if gpt1 else "gpt2", activation_function=_HF_ACTIVATIONS[act])
        return cls(**kw)

    def to_dict(self) -> dict:
        return asdict(self)


def param_shapes(config: GPTConfig) -> dict:
    """name -> shape of every parameter, in a fixed order."""
    C, F = config.n_embd, config.d_ff
    shapes = {"wte.weight": (config.vocab_size, C), "wpe.weight": (config.n_positions, C)}
    for i in range(config.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (C, F), p + "mlp.c_fc.bias": (F,),
            p + "mlp.c_proj.weight": (F, C), p + "mlp.c_proj.bias": (C,),
        })
    if config.layout == "gpt2":
        shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def init_params(config: GPTConfig, seed: int = 0, dtype="float32") -> dict:
    """GPT-2's init on the host: N(0, 0.02) for weights and embeddings,
    N(0, 0.02/sqrt(2*n_layer)) for the residual projections (c_proj),
    LayerNorm weight 1 / bias 0, biases 0. Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    proj_std = 0.02 / math.sqrt(2 * config.n_layer)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".bias"):
            params[name] = np.zeros(shape, dtype)
        elif ".ln_" in name or name.startswith("ln_"):
            params[name] = np.ones(shape, dtype)
        else:
            std = proj_std if name.endswith("c_proj.weight") else 0.02
            w = rng.standard_normal(shape, dtype=np.float32 if dtype == np.float32 else np.float64)
            w *= std
            params[name] = w.astype(dtype, copy=False)
    return params


@dataclass
class ForwardCache:
    """What backward needs: per-layer op caches plus the final hidden state."""
    hidden: object  # (B,T,C) final hidden state (after ln_f for gpt2)
    B: int
    T: int
    emb: tuple = None
    layers: list = field(default_factory=list)
    ln_f: tuple = None
    weights: dict = None  # under mixed precision: the bf16 words of the matrices (GPT._matmul_weights)


@dataclass
class KVCache:
    """Preallocated keys/values of every layer: k, v (L, B, H, max_len, hs).

    ``length`` columns are filled; ``pad`` (B,) holds each row's left-padding
    (its real tokens start at column pad[b]) or None for no padding, and
    ``pad_min`` its smallest entry, on the host (a decoding step's largest
    position, without reading the device).
    """
    k: object
    v: object
    length: int = 0
    pad: object = None
    pad_min: Optional[int] = None
    weights: dict = None  # under mixed precision: the generation's bf16 weights, cast once (GPT._matmul_weights)
    col: object = None  # decode_step: the next column as a (1,) int32 device array (advanced on the device)
    slen: object = None  # inside decode_step: col + 1, the filled length the decode kernels read

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]


class GPT:
    """A GPT-1/GPT-2 model: a params dict and hand-written forward/backward."""

    def __init__(self, config: GPTConfig, params=None, device=None, dtype="float32", seed=0):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        # "bfloat16" is mixed precision: float32 weights and statistics, bf16
        # tensor-core matmuls (engine/bf16.py), a kernel set of its own
        mixed = isinstance(dtype, str) and dtype == "bfloat16"
        # the device is chosen here, once: every op gets this backend (its array
        # module and kernel set) instead of asking what an array is
        self.backend = get_backend(device, matmul_dtype="bfloat16" if mixed else "float32")
        # "cuda:N": CuPy allocates and launches on the current device, so N becomes it
        self.backend.use()
        self.xp = self.backend.xp
        if not self.backend.is_gpu:
            keep_freed_memory()
        self.dtype = np.dtype(np.float32 if mixed else dtype)  # of the weights and activations
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32, float64 or bfloat16, got {self.dtype}")
        self.compute_dtype = "bfloat16" if mixed else self.dtype.name  # what the matmuls run in
        if params is None:
            params = init_params(config, seed=seed, dtype=self.dtype)
        self.params = self._adopt(params)
        self.tokenizer = None  # set by from_pretrained when the model directory holds one

    # --- the familiar entry points (HF / nanoGPT style) -------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path="default", device=None, dtype="float32", quantize=None) -> "GPT":
        """A model directory (HF layout), "default" (the shipped model) or a hub
        name (gpt2, gpt2-medium, ...), with its tokenizer as ``.tokenizer``
        (GPT-2's for a 50,257-token model that stores none); ``quantize="int8"``:
        per-channel int8 weights for inference on the CPU."""
        from gptlite.engine import checkpoint

        d = checkpoint.resolve_model_dir(name_or_path)
        model = checkpoint.load_model(d, device=device, dtype=dtype, quantize=quantize)
        tok = checkpoint.load_tokenizer(d)
        if tok is None and model.config.vocab_size == checkpoint.GPT2_VOCAB_SIZE:
            tok = checkpoint.model_tokenizer(d, model.config.vocab_size)
        model.tokenizer = tok
        return model

    def save_pretrained(self, directory, dtype=None):
        """Save in the HF layout (config.json + model.safetensors, and the
        tokenizer when the model carries one): loadable by transformers'
        GPT2LMHeadModel / OpenAIGPTLMHeadModel.from_pretrained."""
        from gptlite.engine import checkpoint

        return checkpoint.save_model(self, directory, tokenizer=self.tokenizer, dtype=dtype)

    def generate(self, prompt, max_new_tokens=None, temperature=None, top_k=None, top_p=None,
                 seed=None, eot_token=None, crop=False):
        """Continue ``prompt``: token ids (returns the new ids, as
        gptlite.generate.generate) or text (returns the new text; needs
        ``.tokenizer``). A batch is a list of either. Defaults as
        ``gptlite generate``: 100 new tokens, temperature 0.8, and with a
        tokenizer the row stops at its end-of-text token."""
        from gptlite.defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE
        from gptlite.generate import generate

        max_new_tokens = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
        temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
        tok = self.tokenizer
        if eot_token is None and tok is not None:
            eot_token = tok.eot_token
        is_text = isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and prompt
                                               and all(isinstance(p, str) for p in prompt))
        if not is_text:
            return generate(self, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, eot_token=eot_token, crop=crop)
        if tok is None:
            raise ValueError("a text prompt needs the model's tokenizer: this model has none "
                             "(load it with GPT.from_pretrained, set model.tokenizer, or pass token ids)")
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        ids = [tok.encode(t) for t in texts]
        out = generate(self, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       seed=seed, eot_token=eot_token, crop=crop)
        decoded = [tok.decode(o) for o in out]
        return decoded[0] if isinstance(prompt, str) else decoded

    def _adopt(self, params) -> dict:
        """Check names/shapes against the config; move to this device and dtype."""
        shapes = param_shapes(self.config)
        missing = [n for n in shapes if n not in params]
        extra = [n for n in params if n not in shapes]
        if missing:
            raise ValueError(f"params are missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            raise ValueError(f"params hold tensor(s) not in this config: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        out = {}
        for name, shape in shapes.items():
            a = params[name]
            if tuple(a.shape) != shape:
                raise ValueError(f"tensor {name} has shape {tuple(a.shape)}, expected {shape} for this config")
            if not self.backend.is_gpu:
                a = np.ascontiguousarray(to_numpy(a), dtype=self.dtype)
            else:
                a = self.xp.ascontiguousarray(self.xp.asarray(a), dtype=self.dtype)
            out[name] = a
        return out

    # ------------------------------------------------------------------
    # input checks

    def _check_idx(self, idx, what="idx", max_pos=None):
        xp = self.xp
        uploaded = idx if isinstance(idx, Uploaded) else None
        if uploaded is not None:  # checked on its host copy; the device copy is what runs
            idx = uploaded.host
        if not hasattr(idx, "dtype") or not hasattr(idx, "ndim"):
            idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"{what} must be a 2-D (batch, time) array of token ids, got shape {tuple(idx.shape)}")
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{what} must hold integer token ids, got dtype {idx.dtype}")
        if idx.shape[0] == 0 or idx.shape[1] == 0:
            raise ValueError(f"{what} is empty: shape {tuple(idx.shape)}")
        T = idx.shape[1]
        limit = self.config.n_positions if max_pos is None else max_pos
        if T > limit:
            if max_pos is None:
                raise ValueError(f"sequence length {T} exceeds the model's n_positions={self.config.n_positions}")
            raise ValueError(f"{T} new tokens exceed the KV cache's {limit} free columns")
        V = self.config.vocab_size
        m = np if type(idx) is np.ndarray else xp  # host ids are checked on the host: no device sync
        bad = (idx < 0) | (idx >= V)
        if bool(bad.any()):
            b, t = (int(i) for i in m.argwhere(bad)[0])
            raise ValueError(f"token id {int(idx[b, t])} at position (batch {b}, time {t}) is outside the vocabulary [0, {V})")
        if uploaded is not None:
            return uploaded.dev.astype(xp.int64, copy=False)
        return xp.asarray(idx).astype(xp.int64, copy=False)

    # ------------------------------------------------------------------
    # forward

    def _block_forward(self, i, x, B, T, keep, bias=None, kv=None, kv_start=0, pending=None, params=None):
        """One transformer block on x (N, C). Returns (x, pending, cache or None).

        GPT-2 (pre-LN): the block's last residual add is handed back as
        ``pending`` (the MLP output and its pending bias, not yet added to x), so
        the next block's ln_1 or ln_f adds it in the same fused launch;
        ``pending`` given here is the previous block's. ``params``: the weights
        to use (self.params with the matmuls' bf16 copies under mixed precision)."""
        cfg, p, be = self.config, self.params if params is None else params, self.backend
        pre = f"h.{i}."
        eps = cfg.layer_norm_epsilon
        c = {}
        a_in = x
        # pre-LN: no cache holds the residual stream itself, so it is updated
        # in place; post-LN's x is the cached input of c_attn / c_fc
        gpt2 = cfg.layout == "gpt2"
        # GPT-2's ln_1 and ln_2 outputs feed one matmul each (bf16 words under mixed
        # precision); GPT-1's post-LN outputs are the residual stream itself
        if gpt2 and pending is not None:
            x, a_in, c["ln_1"] = ops.residual_layernorm_forward(x, pending[0], p[pre + "ln_1.weight"], p[pre + "ln_1.bias"],
                                                                eps, inplace=True, fx_bias=pending[1], to_matmul=True, be=be)
        elif gpt2:
            a_in, c["ln_1"] = ops.layernorm_forward(x, p[pre + "ln_1.weight"], p[pre + "ln_1.bias"], eps, to_matmul=True,
                                                    be=be)
        qkv, c["c_attn"] = ops.linear_forward(a_in, p[pre + "attn.c_attn.weight"], p[pre + "attn.c_attn.bias"], be=be)
        if kv is None:
            a, c["attn"] = attention.attention_forward(qkv, cfg.n_head, B, T, bias, be=be)
        else:
            a = self._attention_kv(i, qkv, B, T, kv, kv_start, bias)
        a, ab, c["c_proj"] = ops.linear_branch_forward(a, p[pre + "attn.c_proj.weight"], p[pre + "attn.c_proj.bias"],
                                                       be=be)
        ln = "ln_2" if gpt2 else "ln_1"
        x, m_in, c[ln] = ops.residual_layernorm_forward(x, a, p[pre + ln + ".weight"], p[pre + ln + ".bias"], eps,
                                                        inplace=gpt2, fx_bias=ab, to_matmul=gpt2, be=be)
        if not gpt2:
            x = m_in  # post-LN: the normalised sum is the stream
        h, c["c_fc"] = ops.linear_gelu_forward(m_in, p[pre + "mlp.c_fc.weight"], p[pre + "mlp.c_fc.bias"],
                                               cfg.activation_function, be=be)
        h, hb, c["mlp_proj"] = ops.linear_branch_forward(h, p[pre + "mlp.c_proj.weight"], p[pre + "mlp.c_proj.bias"],
                                                         be=be)
        if gpt2:
            return x, (h, hb), (c if keep else None)
        _, x, c["ln_2"] = ops.residual_layernorm_forward(x, h, p[pre + "ln_2.weight"], p[pre + "ln_2.bias"], eps,
                                                         fx_bias=hb, be=be)
        return x, None, (c if keep else None)

    def _trunk(self, idx, keep, pos=None, bias=None, kv=None):
        """Embeddings + blocks (+ ln_f): idx (B,T) -> hidden (N,C), cache."""
        B, T = idx.shape
        be = self.backend
        x, emb = ops.embedding_forward(idx, self.params["wte.weight"], self.params["wpe.weight"], pos, be=be)
        x = x.reshape(B * T, -1)
        cache = ForwardCache(hidden=None, B=B, T=T, emb=emb if keep else None)
        start = kv.length if kv is not None else 0
        cache.weights = w = self._matmul_weights(kv)
        params = self.params if w is None else {**self.params, **w}
        pending = None
        for i in range(self.config.n_layer):
            x, pending, c = self._block_forward(i, x, B, T, keep, bias=bias, kv=kv, kv_start=start, pending=pending,
                                                params=params)
            if keep:
                cache.layers.append(c)
        if self.config.layout == "gpt2":
            w, b, eps = self.params["ln_f.weight"], self.params["ln_f.bias"], self.config.layer_norm_epsilon
            if pending is None:  # no blocks
                x, ln_f = ops.layernorm_forward(x, w, b, eps, be=be)
            else:
                _, x, ln_f = ops.residual_layernorm_forward(x, pending[0], w, b, eps, inplace=True, fx_bias=pending[1],
                                                            be=be)
            cache.ln_f = ln_f if keep else None
        cache.hidden = x.reshape(B, T, -1)
        return x, cache

    def _matmul_weights(self, kv=None):
        """Under mixed precision, the bf16 words of every matrix a matmul reads
        (the blocks' four and the tied head), cast once per forward, or once per
        generation (kept in its KV cache: the weights do not change while it
        runs); None otherwise. The float32 weights stay the master copy."""
        if self.compute_dtype != "bfloat16":
            return None
        if kv is not None and kv.weights is not None:
            return kv.weights
        from gptlite.engine import bf16

        w = {n: bf16.words(a, be=self.backend) for n, a in self.params.items() if a.ndim == 2 and n != "wpe.weight"}
        if kv is not None:
            kv.weights = w
        return w

    def _head(self, h2, weights=None):
        """Tied LM head: h (N,C) -> logits (N,V); ``weights``: the forward's bf16 copies."""
        return ops.lm_head_forward(h2, (weights or self.params)["wte.weight"], be=self.backend)[0]

    def forward(self, idx):
        """idx (B,T) int -> (logits (B,T,V), cache). cache.hidden is (B,T,C)."""
        idx = self._check_idx(idx)
        B, T = idx.shape
        h, cache = self._trunk(idx, keep=True)
        return self._head(h, cache.weights).reshape(B, T, -1), cache

    def logits(self, idx):
        """idx (B,T) -> logits (B,T,V); inference only, keeps no activations."""
        idx = self._check_idx(idx)
        B, T = idx.shape
        h, cache = self._trunk(idx, keep=False)
        return self._head(h, cache.weights).reshape(B, T, -1)

    def hidden_states(self, idx):
        """idx (B,T) -> final hidden state (B,T,C) (after ln_f for gpt2)."""
        idx = self._check_idx(idx)
        _, cache = self._trunk(idx, keep=False)
        return cache.hidden

    __call__ = logits

    # ------------------------------------------------------------------
    # backward

    def _block_backward(self, i, dx, c, grads, out=None):
        """dx: the gradient of the block's output; GPT-2's residual adds are folded
        into its LayerNorm backwards (``dresidual``)."""
        cfg, be = self.config, self.backend
        pre = f"h.{i}."
        gpt2 = cfg.layout == "gpt2"

        def into(part):  # the (weight, bias) buffers to write this part's gradients into
            return None if out is None else (out[pre + part + ".weight"], out[pre + part + ".bias"])

        if not gpt2:
            dx, grads[pre + "ln_2.weight"], grads[pre + "ln_2.bias"] = ops.layernorm_backward(dx, c["ln_2"], out=into("ln_2"), be=be)
        # x_out = x_mid + mlp(m_in): dx flows to both
        dh, grads[pre + "mlp.c_proj.weight"], grads[pre + "mlp.c_proj.bias"] = ops.linear_backward(dx, c["mlp_proj"], out=into("mlp.c_proj"), be=be)
        dm_in, grads[pre + "mlp.c_fc.weight"], grads[pre + "mlp.c_fc.bias"] = ops.linear_gelu_backward(dh, c["c_fc"], out=into("mlp.c_fc"), be=be)
        if gpt2:  # dx_mid = ln_2's input gradient + dx_out
            dx, grads[pre + "ln_2.weight"], grads[pre + "ln_2.bias"] = ops.layernorm_backward(dm_in, c["ln_2"],
                                                                                              dresidual=dx, out=into("ln_2"), be=be)
        else:  # m_in is x_mid itself
            dx += dm_in
            dx, grads[pre + "ln_1.weight"], grads[pre + "ln_1.bias"] = ops.layernorm_backward(dx, c["ln_1"], out=into("ln_1"), be=be)
        da, grads[pre + "attn.c_proj.weight"], grads[pre + "attn.c_proj.bias"] = ops.linear_backward(dx, c["c_proj"], out=into("attn.c_proj"), be=be)
        dqkv = attention.attention_backward(da, c["attn"], be=be)
        da_in, grads[pre + "attn.c_attn.weight"], grads[pre + "attn.c_attn.bias"] = ops.linear_backward(dqkv, c["c_attn"], out=into("attn.c_attn"), be=be)
        if gpt2:  # dx_in = ln_1's input gradient + dx_mid
            dx, grads[pre + "ln_1.weight"], grads[pre + "ln_1.bias"] = ops.layernorm_backward(da_in, c["ln_1"],
                                                                                              dresidual=dx, out=into("ln_1"), be=be)
        else:
            dx += da_in
        return dx

    def backward(self, cache: ForwardCache, dlogits=None, dhidden=None, dwte_head=None, out=None) -> dict:
        """Gradients of every parameter given dL/dlogits (B,T,V) and/or
        dL/dhidden (B,T,C). The tied wte gets both the head and embedding grads;
        ``dwte_head`` is the head's share when the caller computed it already
        (the fused chunked head, which passes dhidden instead of dlogits).
        ``out``: zeroed per-parameter buffers the gradients are written into (see
        ``loss_and_grads``); ``dwte_head`` is then already ``out["wte.weight"]``."""
        self._check_trainable()
        if dlogits is None and dhidden is None:
            raise ValueError("backward needs dlogits and/or dhidden")
        if not cache.layers and self.config.n_layer:
            raise ValueError("this cache holds no activations (it came from an inference call)")
        xp, be = self.xp, self.backend
        B, T = cache.B, cache.T
        C = self.config.n_embd
        h = cache.hidden.reshape(B * T, C)
        grads = {}
        if dlogits is not None:
            if tuple(dlogits.shape) != (B, T, self.config.vocab_size):
                raise ValueError(f"dlogits has shape {tuple(dlogits.shape)}, expected {(B, T, self.config.vocab_size)}")
            dx, dwte_head = ops.lm_head_backward(dlogits.reshape(B * T, -1), (h, self.params["wte.weight"]), be=be)
        elif dhidden is not None:
            dx = None
        else:
            dx = xp.zeros((B * T, C), dtype=self.dtype)
        if dhidden is not None:
            if tuple(dhidden.shape) != (B, T, C):
                raise ValueError(f"dhidden has shape {tuple(dhidden.shape)}, expected {(B, T, C)}")
            dx = dhidden.reshape(B * T, C) if dx is None else dx + dhidden.reshape(B * T, C)
        if self.config.layout == "gpt2":
            dx, grads["ln_f.weight"], grads["ln_f.bias"] = ops.layernorm_backward(
                dx, cache.ln_f, out=None if out is None else (out["ln_f.weight"], out["ln_f.bias"]), be=be)
        for i in reversed(range(self.config.n_layer)):
            dx = self._block_backward(i, dx, cache.layers[i], grads, out)
        # on the GPU a sort-based segment sum without atomics: the same bits every run
        if out is not None and dwte_head is None:
            dwte_head = out["wte.weight"]
        dwte, dwpe = ops.embedding_backward(dx.reshape(B, T, C), cache.emb, dwte=dwte_head,
                                            dwpe=None if out is None else out["wpe.weight"], be=be)
        grads["wte.weight"] = dwte
        grads["wpe.weight"] = dwpe
        return {name: grads[name] for name in self.params}

    def _check_trainable(self):
        if getattr(self, "quantized", None):
            raise ValueError(f"this model's weights are {self.quantized} (inference only): "
                             "load it without quantize= to train or take gradients")

    def loss_and_grads(self, idx, targets, ignore_index=-1, grads_out=None):
        """Mean cross-entropy of targets (B,T) and the gradient of every param.

        The loss is a float on the CPU and a 0-d device array on the GPU (read
        it when needed: reading it is a host sync). See ``ops.lm_head_cross_entropy``.
        ``grads_out``: zeroed buffers, one per parameter (a flat gradient buffer's
        views), that the gradients are written into and returned as; without
        it every gradient is a fresh array (which a trainer then copies).
        """
        self._check_trainable()
        idx = self._check_idx(idx)
        B, T = idx.shape
        # host arrays and asynchronous uploads (Uploaded) are range-checked on the host
        tg = targets if isinstance(targets, (np.ndarray, Uploaded)) else self.xp.asarray(targets)
        if tuple(tg.shape) != (B, T):
            raise ValueError(f"targets shape {tuple(tg.shape)} does not match idx shape {(B, T)}")
        tg = tg.reshape(-1)
        h, cache = self._trunk(idx, keep=True)
        # the tied head and cross-entropy, forward and backward (on the GPU chunked
        # over rows, so no (B,T,V) logits, the loss a 0-d device array; host
        # targets are range-checked on the host)
        loss, dh, dwte_head = ops.lm_head_cross_entropy(
            h, (cache.weights or self.params)["wte.weight"], tg, ignore_index=ignore_index,
            dwte=None if grads_out is None else grads_out["wte.weight"], be=self.backend)
        del h
        grads = self.backward(cache, dhidden=dh.reshape(B, T, -1), dwte_head=dwte_head, out=grads_out)
        return loss, grads

    def loss(self, idx, targets, ignore_index=-1) -> float:
        """Mean cross-entropy, inference only."""
        idx = self._check_idx(idx)
        targets = self.xp.asarray(targets)
        logits = self.logits(idx)
        loss, _ = ops.cross_entropy_forward(logits, targets, ignore_index, inplace=True, be=self.backend)
        return loss

    # ------------------------------------------------------------------
    # KV-cache decoding

    def kv_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """Preallocated keys/values for ``batch`` rows of up to ``max_len`` columns."""
        cfg = self.config
        max_len = cfg.n_positions if max_len is None else int(max_len)
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"kv_cache needs batch > 0 and max_len > 0, got {batch}, {max_len}")
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.head_size)
        return KVCache(k=self.xp.zeros(shape, self.dtype), v=self.xp.zeros(shape, self.dtype))

    def _kv_flash(self, B, start, t) -> bool:
        cfg = self.config
        return attention.kv_flash(self.backend, self.dtype, cfg.n_head, cfg.head_size, B, start, t)

    def _attention_kv(self, i, qkv, B, t, kv, start, bias):
        """Attention of t new queries against the cache's columns [0, start+t):
        on the GPU the flash kernels (no (t, S) scores, no mask array: ``bias`` is
        None then), else the materialised scores with the mask ``bias``."""
        C = self.config.n_embd
        H = self.config.n_head
        if kv.slen is not None:  # decode_step: the column and the length live on the device
            attention.kv_append(qkv, kv.k[i], kv.v[i], kv.col)
            return attention.decode_attention(qkv, kv.k[i], kv.v[i], None, pad=kv.pad, slen=kv.slen)
        kv.k[i, :, :, start:start + t] = ops._split_heads(qkv[:, C:2 * C], B, t, H)
        kv.v[i, :, :, start:start + t] = ops._split_heads(qkv[:, 2 * C:], B, t, H)
        if bias is None:
            return attention.kv_attention(qkv, kv.k[i], kv.v[i], start, t, pad=kv.pad)
        q = ops._split_heads(qkv[:, :C], B, t, H)
        return ops.attention_kv_forward(q, kv.k[i, :, :, :start + t], kv.v[i, :, :, :start + t], bias, be=self.backend)

    def decode(self, idx_new, kv: KVCache, pad=None, last_only=False):
        """Append idx_new (B,t) to the cache and return its logits (B,t,V),
        or with ``last_only`` those of the last new position only, (B,1,V)
        (what sampling needs: it skips t-1 rows of the vocabulary-sized head).

        ``pad`` (B,) int: row b is left-padded with pad[b] tokens (its real
        tokens start at column pad[b]); positions count from there and the pad
        columns are masked out of attention. Given on the first call (or any
        call, consistently) and remembered in ``kv``.
        """
        xp = self.xp
        if kv.length >= kv.max_len:
            raise ValueError(f"KV cache is full ({kv.max_len} columns)")
        idx = self._check_idx(idx_new, "idx_new", max_pos=kv.max_len - kv.length)
        B, t = idx.shape
        if B != kv.batch:
            raise ValueError(f"idx_new has batch {B} but the KV cache was made for batch {kv.batch}")
        if pad is not None:
            host_pad = pad if type(pad) is np.ndarray else None  # host pads are checked on the host: no device sync
            pad = xp.asarray(pad)
            if pad.shape != (B,) or pad.dtype.kind not in "iu":
                raise ValueError(f"pad must be a (batch,) integer array, got shape {tuple(pad.shape)} dtype {pad.dtype}")
            pad_min = int(host_pad.min() if host_pad is not None else pad.min())
            if pad_min < 0:
                raise ValueError("pad lengths must be >= 0")
            if kv.pad is not None and not bool((kv.pad == pad).all()):
                raise ValueError("pad differs from the pad this KV cache was started with")
            kv.pad = pad.astype(xp.int64)
            kv.pad_min = pad_min
        start = kv.length
        cols = xp.arange(start, start + t)  # absolute columns of the new tokens
        S = start + t
        pos = cols if kv.pad is None else xp.maximum(cols[None, :] - kv.pad[:, None], 0)  # (t,) or (B,t)
        if kv.pad is not None and kv.pad_min is None:  # a pad set on the cache by hand
            kv.pad_min = int(kv.pad.min())
        # pos.max(), from host values: a read of the device per token would stall the GPU's queue
        if max(S - 1 - (kv.pad_min if kv.pad is not None else 0), 0) >= self.config.n_positions:
            raise ValueError(f"decoding past the model's n_positions={self.config.n_positions}")
        bias = None  # the flash kernels mask causally and the padding themselves
        if not self._kv_flash(B, start, t):
            keys = xp.arange(S)
            mask = keys[None, None, :] > cols[None, :, None]  # (1,t,S)
            if kv.pad is not None:
                # key j visible to query i if j <= i and j is a real token; a pad
                # query sees only itself (its output is never used, but stays finite)
                padc = kv.pad[:, None]
                mask = mask | ((keys[None, None, :] < padc[:, :, None]) & (keys[None, None, :] != cols[None, :, None]))
            bias = xp.where(mask, -xp.inf, 0.0).astype(self.dtype)[:, None]  # (B|1,1,t,S)
        h, cache = self._trunk(idx, keep=False, pos=pos, bias=bias, kv=kv)
        kv.length = S
        if last_only:
            h, t = xp.ascontiguousarray(h.reshape(B, t, -1)[:, -1]), 1
        return self._head(h, cache.weights).reshape(B, t, -1)

    def graphable(self, kv: KVCache) -> bool:
        """Whether ``decode_step`` can run on this cache: on the GPU with the flash
        decode kernel (the materialised path builds its mask from host positions)."""
        return self.backend.is_gpu and self._kv_flash(kv.batch, 1, 1)

    def decode_step(self, ids, kv: KVCache):
        """One new token per row, every position read on the device: ids (B, 1)
        int64 device ids (the sampler's, so in range: not checked), written at
        column ``kv.col`` (a (1,) int32 device array), which this advances on the
        device. No argument of any launch changes from one token to the next, so a
        CUDA graph captured once replays it at every position (generate.py);
        ``kv.length`` and the n_positions bound are the caller's to keep. Returns
        the logits (B, V)."""
        if not self.graphable(kv):
            raise ValueError("decode_step needs the GPU's flash decode kernel (see graphable)")
        xp = self.xp
        B = ids.shape[0]
        if tuple(ids.shape) != (B, 1) or B != kv.batch or kv.col is None:
            raise ValueError(f"decode_step: ids {tuple(ids.shape)} for a cache of batch {kv.batch} (col set: {kv.col is not None})")
        pos = kv.col if kv.pad is None else xp.maximum(kv.col - kv.pad, 0).reshape(B, 1)
        one = np.int32(1)  # int32 in every casting rule: the kernels read a 32-bit int
        kv.slen = kv.col + one
        try:
            h, cache = self._trunk(ids, keep=False, pos=pos, bias=None, kv=kv)
        finally:
            kv.slen = None
        kv.col += one
        return self._head(h, cache.weights)

    # ------------------------------------------------------------------
    # sizes

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters (the tied head counted once); non_embedding
        drops the position embedding, as nanoGPT does for FLOP counts."""
        n = sum(int(a.size) for a in self.params.values())
        if non_embedding:
            n -= int(self.params["wpe.weight"].size)
        return n

    def flops_per_token(self, T: int) -> int:
        """Training FLOPs per token at sequence length T (forward + backward):
        6N for the matmuls (forward 2N + backward 4N; N without wpe, the tied
        LM head counted through wte) plus 12 * n_layer * n_embd * T for the
        attention scores and weighted sums (PaLM appendix B / nanoGPT).
        The one FLOP count: training's tokens/s -> FLOP/s and MFU use it."""
        cfg = self.config
        return 6 * self.num_parameters(non_embedding=True) + 12 * cfg.n_layer * cfg.n_embd * int(T)
