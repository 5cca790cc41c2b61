#!/usr/bin/env python3
"""GPT-2-style zero-shot summarisation: append "TL;DR:" to an article and let
the model continue (Radford et al. 2019, section 3.6).

    python examples/prompt_tldr.py --model gpt2 article.txt
    python examples/prompt_tldr.py --model DIR --max-new-tokens 60 < article.txt

The paper sampled 100 tokens with top-k = 2 and took the first 3 generated
sentences as the summary; those are the defaults here. Any gptlite model
works; only a large pre-trained one (GPT-2 124M and up) gives summaries worth
reading -- a small model shows the mechanics.
"""
from __future__ import annotations

import argparse
import re
import sys


def first_sentences(text: str, n: int = 3) -> str:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(parts[:n])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", help="article text (default: stdin)")
    ap.add_argument("--model", required=True, help="model directory or hub name (gpt2, ...)")
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from gptlite.engine import checkpoint
    from gptlite.generate import generate
    from gptlite.tokenizer.encoding import Tokenizer

    article = open(args.file, encoding="utf-8").read() if args.file else sys.stdin.read()
    d = checkpoint.resolve_model_dir(args.model)
    model = checkpoint.load_model(d)
    tok = checkpoint.load_tokenizer(d) or Tokenizer.gpt2()
    prompt = article.strip() + "\nTL;DR:"
    ids = tok.encode_ordinary(prompt)
    # Keep the END of a long article: the prompt's "TL;DR:" must stay in the context.
    ids = ids[-(model.config.n_positions - args.max_new_tokens):]
    out = generate(model, ids, args.max_new_tokens, temperature=1.0, top_k=args.top_k, seed=args.seed,
                   eot_token=tok.eot_token)
    print(first_sentences(tok.decode(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
