"""HF transformers oracles for gptlite's tests (torch CPU; test-only).

Build a ``GPT2LMHeadModel`` / ``OpenAIGPTLMHeadModel`` with the shape of a
GPTConfig, and copy weights both ways. transformers' Conv1D stores weights as
(in, out), the same layout as gptlite, so no transposes are needed. GPT-1
names its embeddings ``tokens_embed`` / ``positions_embed``.
"""
from __future__ import annotations

import numpy as np

from gptlite.engine.backend import to_numpy
from gptlite.engine.model import GPTConfig


def _torch():
    import pytest

    return pytest.importorskip("torch")


def hf_name(name: str, config: GPTConfig) -> str:
    """gptlite param name -> HF parameter name (with the "transformer." prefix)."""
    if config.layout == "gpt1":
        name = name.replace("wte.weight", "tokens_embed.weight").replace("wpe.weight", "positions_embed.weight")
    return "transformer." + name


def hf_model(config: GPTConfig, seed: int = 0, dtype="float32"):
    """A fresh HF LM-head model of the config's shape, dropout off, eager attention, eval mode."""
    torch = _torch()
    import transformers

    d = config.to_hf_dict()
    for k in ("attn_pdrop", "embd_pdrop", "resid_pdrop"):
        d[k] = 0.0
    d.pop("architectures", None)
    d.pop("model_type")
    torch.manual_seed(seed)
    if config.layout == "gpt1":
        cfg = transformers.OpenAIGPTConfig(**d)
        model = transformers.OpenAIGPTLMHeadModel(cfg)
    else:
        cfg = transformers.GPT2Config(**d)
        cfg._attn_implementation = "eager"
        model = transformers.GPT2LMHeadModel(cfg)
    model = model.to(getattr(torch, str(np.dtype(dtype))))
    model.eval()
    return model


def params_from_hf(model, config: GPTConfig, dtype="float32") -> dict:
    """HF model -> gptlite params dict (NumPy copies)."""
    from gptlite.engine.model import param_shapes

    sd = dict(model.named_parameters())
    return {n: sd[hf_name(n, config)].detach().cpu().numpy().astype(dtype, copy=True) for n in param_shapes(config)}


def load_into_hf(model, params: dict, config: GPTConfig) -> None:
    """Copy a gptlite params dict into an HF model (in place)."""
    torch = _torch()
    sd = dict(model.named_parameters())
    with torch.no_grad():
        for n, a in params.items():
            p = sd[hf_name(n, config)]
            p.copy_(torch.from_numpy(np.ascontiguousarray(to_numpy(a))).to(p.dtype))


def hf_loss_and_grads(model, idx, targets, config: GPTConfig, ignore_index=-1):
    """Logits, mean cross-entropy (ignore_index honoured) and every parameter's
    gradient from HF with torch autograd; grads keyed by gptlite names."""
    torch = _torch()
    from gptlite.engine.model import param_shapes

    model.zero_grad(set_to_none=True)
    logits = model(torch.from_numpy(np.asarray(idx))).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.from_numpy(np.asarray(targets)).reshape(-1).long(),
                                             ignore_index=ignore_index)
    loss.backward()
    sd = dict(model.named_parameters())
    grads = {n: sd[hf_name(n, config)].grad.detach().numpy().copy() for n in param_shapes(config)}
    return logits.detach().numpy(), float(loss.detach()), grads


def rel_err(a, b) -> float:
    """Norm-wise relative error |a-b| / max(|b|, tiny)."""
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
