#!/usr/bin/env python3
"""GPT-2-style zero-shot translation: condition the model on example pairs in
the format ``english sentence = french sentence`` and then on
``english sentence =`` (Radford et al. 2019, section 3.7), decoding greedily.

    python examples/prompt_translate.py --model gpt2 "The cat is on the table."

The same pattern gives any "task by prompt": change the example pairs
(--pairs FILE, one ``source = target`` a line) for question answering, spelling
correction, etc. Any gptlite model works; only a large pre-trained model
produces useful output -- the paper's 1.5B model reached 5 BLEU on WMT-14 en-fr.
"""
from __future__ import annotations

import argparse
import sys

PAIRS = [
    ("Good morning.", "Bonjour."),
    ("Where is the station?", "Où est la gare ?"),
    ("I would like a cup of coffee.", "Je voudrais une tasse de café."),
    ("The weather is nice today.", "Il fait beau aujourd'hui."),
]


def build_prompt(pairs, sentence: str) -> str:
    return "".join(f"{en} = {fr}\n" for en, fr in pairs) + f"{sentence} ="


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sentence")
    ap.add_argument("--model", required=True, help="model directory or hub name (gpt2, ...)")
    ap.add_argument("--pairs", default=None, help="file of 'source = target' lines to condition on")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    args = ap.parse_args(argv)

    from gptlite.engine import checkpoint
    from gptlite.generate import generate
    from gptlite.tokenizer.encoding import Tokenizer

    pairs = PAIRS
    if args.pairs:
        pairs = []
        for n, line in enumerate(open(args.pairs, encoding="utf-8"), 1):
            if line.strip():
                if " = " not in line:
                    raise SystemExit(f"{args.pairs}:{n}: expected 'source = target'")
                pairs.append(tuple(s.strip() for s in line.split(" = ", 1)))
    d = checkpoint.resolve_model_dir(args.model)
    model = checkpoint.load_model(d)
    tok = checkpoint.load_tokenizer(d) or Tokenizer.gpt2()
    ids = tok.encode_ordinary(build_prompt(pairs, args.sentence))
    out = generate(model, ids, args.max_new_tokens, temperature=0, eot_token=tok.eot_token, crop=True)
    print(tok.decode(out).split("\n")[0].strip())  # the translation ends at the end of the line
    return 0


if __name__ == "__main__":
    sys.exit(main())
