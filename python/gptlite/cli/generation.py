"""`gptlite generate` and `gptlite check-reference`."""
from __future__ import annotations

import argparse  # noqa: F401
import re  # noqa: F401
import sys

from gptlite.cli.common import UserError, _check_out_dir  # noqa: F401
from gptlite.defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE  # noqa: F401


# --- model: generate / check-reference ---------------------------------------------
def _add_model_commands(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a model, streaming the text")
    p.add_argument("prompt", nargs="?", default=None,
                   help="prompt text; '-' or absent reads stdin (absent on a terminal: start from <|endoftext|>)")
    p.add_argument("--model", default=None, help="model directory or hub name (default: the shipped default model)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when a GPU is visible")
    p.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default="float32",
                   help="bfloat16: bf16 tensor-core matmuls over float32 weights (GPU only)")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="int8: per-channel int8 weights, quantized at load (CPU only, float32 activations)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--crop", action="store_true", help="keep the last tokens of a prompt longer than the context")
    p.add_argument("--no-prompt", dest="echo", action="store_false", help="print only the generated text")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("check-reference",
                       help="run gptlite and transformers on the same weights and compare logits, loss, gradients")
    p.add_argument("--model", required=True, help="model directory or hub name")
    p.add_argument("--text", default=None, help="sample text (default: a built-in paragraph)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--max-tokens", type=int, default=128, help="evaluate on at most this many tokens")
    p.add_argument("--tol-logits", type=float, default=None, help="max |logit diff| allowed, relative to max(1, max |logit|) (default by dtype)")
    p.add_argument("--tol-loss", type=float, default=None, help="max |loss diff| allowed (default by dtype)")
    p.add_argument("--tol-grad", type=float, default=None, help="max relative gradient diff allowed (default by dtype)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=_cmd_check_reference)


def _model_and_tokenizer(model_arg, device, dtype, quantize=None):
    from gptlite.engine import checkpoint

    d = checkpoint.resolve_model_dir(model_arg)
    if quantize is not None and (device not in (None, "cpu") or dtype != "float32"):
        raise UserError(f"--quantize {quantize} runs on the CPU in float32 (got --device {device}, --dtype {dtype})")
    model = checkpoint.load_model(d, device="cpu" if quantize else device, dtype=dtype, quantize=quantize)
    try:
        tok = checkpoint.model_tokenizer(d, model.config.vocab_size)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return model, tok


def _cmd_generate(args) -> int:
    import numpy as np

    from gptlite.generate import generate

    if args.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    from_stdin = args.prompt == "-" or (args.prompt is None and not sys.stdin.isatty())
    prompt = sys.stdin.read() if from_stdin else (args.prompt or "")
    if not prompt and (from_stdin or args.prompt is not None):  # only a left-out PROMPT means unconditional
        raise UserError("empty prompt: give some text (or leave PROMPT out on a terminal to sample "
                        "unconditionally from <|endoftext|>)")
    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype, args.quantize)
    ids = tok.encode(prompt, allowed_special="all") if prompt else []
    if not ids:
        if tok.eot_token is None:
            raise UserError("no prompt, and the tokenizer has no <|endoftext|> to start from")
        ids = [tok.eot_token]  # unconditional sampling, as GPT-2's samples
    rng = np.random.default_rng(args.seed)  # one stream across samples: --seed fixes them all
    out = sys.stdout
    for i in range(args.num_samples):
        if i:
            out.write("\n" + "-" * 40 + "\n")
        # validates the arguments before anything is printed
        tokens = generate(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=rng, eot_token=tok.eot_token, crop=args.crop, stream=True)
        if args.echo and prompt:
            out.write(prompt)
        out.flush()
        counted = _counting(tokens)
        for text in tok.decode_stream(counted):  # whole characters only: a token may end inside one
            out.write(text)
            out.flush()
        out.write("\n")
        out.flush()
        _note_context_stop(model, ids, args, counted.n)
    return 0


class _counting:
    """Pass tokens through, counting them."""

    def __init__(self, it):
        self.it, self.n = iter(it), 0

    def __iter__(self):
        for t in self.it:
            self.n += 1
            yield t


def _note_context_stop(model, ids, args, n_new: int) -> None:
    """Say so when generation ended because the model's context was full, not at
    --max-new-tokens or <|endoftext|>."""
    from gptlite.generate import kept_prompt_len

    n_pos = model.config.n_positions
    kept = min(len(ids), kept_prompt_len(n_pos, args.max_new_tokens)) if args.crop else len(ids)
    if n_new < args.max_new_tokens and kept + n_new >= n_pos + 1:
        print(f"gptlite: stopped after {n_new} of --max-new-tokens {args.max_new_tokens} new tokens: "
              f"the model's context of {n_pos} positions is full ({kept} prompt tokens)", file=sys.stderr)


def _cmd_check_reference(args) -> int:
    import json

    from gptlite.engine import checkpoint
    from gptlite.engine.reference import check_reference, format_report

    d = checkpoint.resolve_model_dir(args.model)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise UserError(f"check-reference needs PyTorch and transformers ({exc.name} is not installed): "
                        "pip install torch transformers") from None
    r = check_reference(d, text=args.text, dtype=args.dtype, max_tokens=args.max_tokens,
                        tol_logits=args.tol_logits, tol_loss=args.tol_loss, tol_grad=args.tol_grad)
    print(json.dumps(r) if args.json else format_report(r))
    return 0 if r["passed"] else 1
