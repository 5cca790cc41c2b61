"""GPT-2's zero-shot task transfer by prompting: the task is written into the
input text and the model simply continues it (GPT-2 paper, section 3).

- Summarisation: the article followed by ``TL;DR:``. The paper sampled 100
  tokens with top-k 2 and kept the first 3 generated sentences.
- Translation: a few ``english sentence = french sentence`` example pairs,
  then ``source sentence =``; greedy decoding, and the first line of the
  continuation is the translation.

Works with any loaded model and tokenizer; a small model (such as the shipped
Shakespeare one) produces the format without the skill. Prompts longer than
the context keep their end (where the task cue is), reported as ``cropped``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from gptlite.generate import generate, kept_prompt_len

TLDR_CUE = "\nTL;DR:"
TRANSLATION_SEP = " = "
# A few short English = French pairs in GPT-2's conditioning format.
EN_FR_EXAMPLES = [
    ("The house is small.", "La maison est petite."),
    ("I would like a cup of coffee.", "Je voudrais une tasse de café."),
    ("Where is the train station?", "Où est la gare ?"),
    ("We are going to the sea tomorrow.", "Nous allons à la mer demain."),
]


@dataclass
class PromptResult:
    prompt: str  # the full text given to the model
    completion: str  # what the model generated (cut at the stop rule)
    output: str  # the task's answer taken from the completion
    prompt_tokens: int  # prompt tokens the model saw
    cropped: bool  # True when the prompt was cut to fit the context


def tldr_prompt(article: str) -> str:
    """The article, then GPT-2's summarisation cue on a new line."""
    return article.rstrip() + TLDR_CUE


def translation_prompt(source: str, examples=None, sep: str = TRANSLATION_SEP) -> str:
    """``a = b`` example lines, then ``source =`` for the model to complete."""
    examples = EN_FR_EXAMPLES if examples is None else list(examples)
    for i, (a, b) in enumerate(examples):
        for what, s in (("source", a), ("target", b)):
            if "\n" in s:
                raise ValueError(f"example {i}: the {what} text spans several lines: {s!r}")
    if "\n" in source.strip():
        raise ValueError("the text to translate must be a single line")
    lines = [f"{a.strip()}{sep}{b.strip()}" for a, b in examples]
    return "\n".join(lines + [f"{source.strip()}{sep.rstrip()}"])


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def first_sentences(text: str, n: int = 3) -> str:
    """The first ``n`` sentences of text (split after . ! ? and closing quotes)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    text = " ".join(text.split())
    parts, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        parts.append(text[start:m.start()].strip() + text[m.start():m.end()].strip())
        start = m.end()
        if len(parts) == n:
            return " ".join(parts)
    rest = text[start:].strip()
    return " ".join(parts + ([rest] if rest else []))


def complete(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 0.0, top_k=None,
             top_p=None, seed=None, stop_at_newline: bool = False) -> tuple[str, int, bool]:
    """Continue ``prompt``; returns (completion text, prompt tokens used, cropped).

    Stops at <|endoftext|>, after max_new_tokens, or (``stop_at_newline``) at
    the first newline of the continuation, which is not included."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        raise ValueError("empty prompt")
    keep = kept_prompt_len(model.config.n_positions, max_new_tokens)
    stream = generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                      eot_token=tokenizer.eot_token, crop=True, stream=True)
    out = []
    for text in tokenizer.decode_stream(stream):
        if stop_at_newline and "\n" in text:
            out.append(text.split("\n", 1)[0])
            break  # the generator stops here: nothing more is computed
        out.append(text)
    return "".join(out), min(len(ids), keep), len(ids) > keep


def summarize(model, tokenizer, article: str, max_new_tokens: int = 100, top_k: int | None = 2,
              temperature: float = 1.0, seed=None, sentences: int = 3) -> PromptResult:
    """GPT-2's TL;DR summary: sample after the cue, keep the first sentences."""
    prompt = tldr_prompt(article)
    text, n, cropped = complete(model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                seed=seed)
    return PromptResult(prompt, text, first_sentences(text, sentences), n, cropped)


def translate(model, tokenizer, source: str, examples=None, sep: str = TRANSLATION_SEP,
              max_new_tokens: int = 40) -> PromptResult:
    """Few-shot translation by example pairs; greedy, the first line is the answer."""
    prompt = translation_prompt(source, examples, sep)
    text, n, cropped = complete(model, tokenizer, prompt, max_new_tokens, temperature=0.0, stop_at_newline=True)
    return PromptResult(prompt, text, text.strip(), n, cropped)


def read_examples(path, sep: str = "\t") -> list[tuple[str, str]]:
    """Example pairs from a UTF-8 file: one ``source<TAB>target`` per line
    (blank lines skipped); errors name the file and line."""
    from gptlite.fileio import read_utf8

    pairs = []
    for i, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"{path}:{i}: expected 'source{sep!r}target' with both sides non-empty, got {line!r}")
        pairs.append((parts[0].strip(), parts[1].strip()))
    if not pairs:
        raise ValueError(f"{path}: no example pairs")
    return pairs
