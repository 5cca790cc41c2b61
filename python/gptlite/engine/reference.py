"""check-reference: gptlite against HF transformers on the same weights.

Anyone holding real GPT-2 (or GPT-1) weights can re-run the validation of the
hand-written forward and backward on them: logits, loss and the gradient of
every parameter, compared with ``GPT2LMHeadModel`` / ``OpenAIGPTLMHeadModel``
on PyTorch. torch and transformers are imported here only (lazily): gptlite
itself never needs them.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

SAMPLE_TEXT = (
    "The transformer is a deep learning architecture based on the multi-head attention mechanism. "
    "Text is converted to numerical representations called tokens, and each token is mapped to a vector "
    "by looking it up in a word embedding table. At each layer, each token is then contextualized within "
    "the scope of the context window with other tokens via a parallel multi-head attention mechanism."
)
# Defaults per dtype: float32 accumulates rounding over 12+ layers; float64 agrees to ~1e-12.
# The logits tolerance is relative to the logits' scale, max(1, max |logit|): real GPT-2
# logits reach ~100 in magnitude, random small models ~1.
DEFAULT_TOLERANCES = {
    "float32": {"logits": 1e-4, "loss": 1e-4, "grad": 1e-3},
    "float64": {"logits": 1e-8, "loss": 1e-10, "grad": 1e-7},
}


def _import_torch():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"check-reference needs PyTorch and transformers ({exc.name} is not installed): "
            "pip install torch transformers") from None
    return torch, transformers


def _hf_name(name: str, layout: str) -> str:
    """Our parameter name -> the HF LM-head model's state_dict name."""
    if layout == "gpt1":
        name = {"wte.weight": "tokens_embed.weight", "wpe.weight": "positions_embed.weight"}.get(name, name)
    return "transformer." + name


def build_hf_model(model, dtype="float32"):
    """A transformers LM-head model holding a copy of ``model``'s weights (eager attention)."""
    torch, transformers = _import_torch()
    from gptlite.engine.backend import to_numpy

    cfg = model.config.to_hf_dict()
    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    if model.config.layout == "gpt1":
        hf_cfg = transformers.OpenAIGPTConfig(**{k: v for k, v in cfg.items() if k != "model_type"})
        cls = transformers.OpenAIGPTLMHeadModel
    else:
        hf_cfg = transformers.GPT2Config(**{k: v for k, v in cfg.items() if k != "model_type"})
        cls = transformers.GPT2LMHeadModel
    hf_cfg.attn_implementation = "eager"
    for k in ("attn_pdrop", "embd_pdrop", "resid_pdrop"):
        setattr(hf_cfg, k, 0.0)
    hf = cls(hf_cfg).to(tdtype)
    state = {_hf_name(k, model.config.layout): torch.from_numpy(np.array(to_numpy(v), dtype=np.dtype(dtype)))
             for k, v in model.params.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" and not m.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise ValueError(f"could not map gptlite parameters onto {cls.__name__}: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def _hf_from_dir(path: Path, layout: str, dtype: str):
    """transformers' own from_pretrained on the directory (None if it cannot read it)."""
    torch, transformers = _import_torch()
    cls = transformers.OpenAIGPTLMHeadModel if layout == "gpt1" else transformers.GPT2LMHeadModel
    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    try:
        transformers.utils.logging.disable_progress_bar()
        hf = cls.from_pretrained(str(path), attn_implementation="eager", dtype=tdtype)
    except Exception:  # e.g. a config written by another tool: fall back to our tensors
        return None
    return hf.eval()


def _sample_ids(path: Path, model, text: str, max_tokens: int) -> list[int]:
    from gptlite.engine.checkpoint import load_tokenizer

    tok = load_tokenizer(path)
    if tok is None and model.config.vocab_size == 50257:
        from gptlite.tokenizer.encoding import Tokenizer

        try:
            tok = Tokenizer.gpt2()
        except Exception:
            tok = None
    if tok is not None and tok.n_vocab <= model.config.vocab_size:
        ids = tok.encode_ordinary(text)
    else:  # no usable tokenizer: bytes as ids, still a deterministic sample
        ids = [b % model.config.vocab_size for b in text.encode("utf-8")]
    n = min(max_tokens, model.config.n_positions + 1)
    if len(ids) < 2:
        raise ValueError("the sample text must give at least 2 tokens (inputs and next-token targets)")
    return ids[:n]


def _group(name: str) -> str:
    # h.3.attn.c_attn.weight -> h.*.attn.c_attn.weight : one row per kind of parameter
    return re.sub(r"^h\.\d+\.", "h.*.", name)


def check_reference(path, text=None, dtype="float32", max_tokens=128, tol_logits=None, tol_loss=None, tol_grad=None,
                    hf_model=None) -> dict:
    """Compare gptlite with transformers on the model directory ``path``.

    Returns {"max_abs_logits_diff", "max_abs_logits", "loss", "loss_hf", "loss_diff",
    "grad_rel_diff": {group: max relative norm-wise diff}, "max_grad_rel_diff",
    "tolerances", "passed", "n_tokens", "hf_source"}.
    """
    torch, _ = _import_torch()
    from gptlite.engine.checkpoint import load_model

    if dtype not in DEFAULT_TOLERANCES:
        raise ValueError(f"dtype must be one of {list(DEFAULT_TOLERANCES)}, got {dtype!r}")
    tol = dict(DEFAULT_TOLERANCES[dtype])
    for k, v in (("logits", tol_logits), ("loss", tol_loss), ("grad", tol_grad)):
        if v is not None:
            tol[k] = float(v)
    path = Path(path)
    model = load_model(path, device="cpu", dtype=dtype)
    source = "given"
    if hf_model is None:
        hf_model = _hf_from_dir(path, model.config.layout, dtype)
        source = "from_pretrained"
        if hf_model is None:
            hf_model = build_hf_model(model, dtype)
            source = "built from gptlite tensors"
    ids = _sample_ids(path, model, text or SAMPLE_TEXT, max_tokens)
    idx = np.array([ids[:-1]], dtype=np.int64)
    targets = np.array([ids[1:]], dtype=np.int64)

    logits = np.asarray(model.logits(idx), dtype=np.float64)
    loss, grads = model.loss_and_grads(idx, targets)

    hf_model.zero_grad(set_to_none=True)
    out = hf_model(torch.from_numpy(idx))
    V = model.config.vocab_size
    hf_logits = out.logits[..., :V]
    hf_loss = torch.nn.functional.cross_entropy(hf_logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    hf_loss.backward()
    hf_logits_np = hf_logits.detach().double().numpy()
    hf_params = dict(hf_model.named_parameters())

    rel = {}
    for name, g in grads.items():
        hp = hf_params[_hf_name(name, model.config.layout)]
        hg = hp.grad.detach().double().numpy() if hp.grad is not None else np.zeros(hp.shape)
        diff = np.linalg.norm(np.asarray(g, dtype=np.float64) - hg)
        r = float(diff / max(np.linalg.norm(hg), 1e-30))
        grp = _group(name)
        rel[grp] = max(rel.get(grp, 0.0), r)
    max_logits_diff = float(np.abs(logits - hf_logits_np).max())
    hf_loss = float(hf_loss.detach())
    loss_diff = abs(float(loss) - hf_loss)
    worst_grad = max(rel.values())
    scale = max(1.0, float(np.abs(hf_logits_np).max()))
    passed = max_logits_diff <= tol["logits"] * scale and loss_diff <= tol["loss"] and worst_grad <= tol["grad"]
    return {
        "model": str(path), "dtype": dtype, "n_tokens": int(idx.shape[1]), "hf_source": source,
        "hf_class": type(hf_model).__name__,
        "max_abs_logits_diff": max_logits_diff, "max_abs_logits": float(np.abs(hf_logits_np).max()),
        "logits_tolerance": tol["logits"] * scale,
        "loss": float(loss), "loss_hf": float(hf_loss), "loss_diff": loss_diff,
        "grad_rel_diff": rel, "max_grad_rel_diff": worst_grad,
        "tolerances": tol, "passed": bool(passed),
    }


def format_report(r: dict) -> str:
    ok = lambda v, t: "ok" if v <= t else "FAIL"  # noqa: E731
    tol = r["tolerances"]
    lines = [
        f"gptlite vs transformers {r['hf_class']} ({r['hf_source']}) on {r['model']}: {r['n_tokens']} tokens, {r['dtype']}",
        f"  max |logits diff|   {r['max_abs_logits_diff']:.3e}  (max |logit| {r['max_abs_logits']:.3g}; "
        f"tol {tol['logits']:.0e} x max(1, max |logit|) = {r['logits_tolerance']:.1e}) "
        f"{ok(r['max_abs_logits_diff'], r['logits_tolerance'])}",
        f"  loss                {r['loss']:.6f} vs {r['loss_hf']:.6f}: diff {r['loss_diff']:.3e} (tol {tol['loss']:.0e}) "
        f"{ok(r['loss_diff'], tol['loss'])}",
        f"  gradients, max relative diff |g - g_ref| / |g_ref| per parameter group (tol {tol['grad']:.0e}):",
    ]
    for grp, v in r["grad_rel_diff"].items():
        lines.append(f"    {grp:28s} {v:.3e} {ok(v, tol['grad'])}")
    lines.append("PASSED" if r["passed"] else "FAILED: differences above tolerance")
    return "\n".join(lines)
