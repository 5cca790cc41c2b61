"""The `gptlite` command line.

Each area registers its subcommands in its own ``_add_*`` function below;
handlers import their area lazily so `gptlite encode` never loads the model code.
Errors that users can cause (bad files, bad ids, bad options) are printed as one
line ``gptlite: error: ...`` with exit status 2; anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import argparse
import re
import sys


class UserError(Exception):
    """An error in the user's input: printed without a traceback."""


# --- tokenizer: encode / decode (issue: Rust BPE encoder) -------------------------
_ID_FORMATS = ("text", "npy", "u16", "u32")


def _add_tokenizer_commands(sub) -> None:
    tok_help = "gpt2 (default: GPT-2's files, cached), a directory, or a vocabulary file"
    p = sub.add_parser("encode", help="text -> token ids (GPT-2 byte-level BPE)",
                       description="Encode UTF-8 text to token ids. Large inputs are streamed in bounded memory.")
    p.add_argument("text", nargs="?", help="text to encode (default: --input, else stdin)")
    p.add_argument("-i", "--input", help="read the text from this file")
    p.add_argument("-o", "--output", help="write the ids here (default: stdout); written atomically")
    p.add_argument("-t", "--tokenizer", default="gpt2", help=tok_help)
    p.add_argument("--format", choices=_ID_FORMATS, default=None,
                   help="ids as text, .npy array, or raw little-endian u16/u32 (default from -o's suffix: "
                        ".npy, .u16, .u32; else text)")
    p.add_argument("--show", action="store_true", help="print each id with the text it covers, one a line")
    p.add_argument("--allow-special", action="store_true",
                   help="encode special-token text such as <|endoftext|> as the special token (default: error)")
    p.add_argument("--ordinary", action="store_true", help="encode special-token text as ordinary text")
    p.add_argument("--chunk-chars", type=int, default=1 << 20, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("decode", help="token ids -> text",
                       description="Decode token ids to UTF-8 text (invalid UTF-8 from partial tokens becomes U+FFFD).")
    p.add_argument("ids", nargs="*", type=str, help="ids to decode (default: --input, else stdin)")
    p.add_argument("-i", "--input", help="read ids from this file")
    p.add_argument("-o", "--output", help="write the text here (default: stdout); written atomically")
    p.add_argument("-t", "--tokenizer", default="gpt2", help=tok_help)
    p.add_argument("--format", choices=_ID_FORMATS, default=None,
                   help="how the input ids are stored (default from -i's suffix: .npy, .u16, .u32; else text)")
    p.add_argument("--chunk-ids", type=int, default=1 << 20, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_decode)


def _load_tokenizer(spec: str):
    from gptlite.tokenizer.encoding import Tokenizer

    if spec == "gpt2":
        try:
            return Tokenizer.gpt2()
        except RuntimeError as exc:  # offline / bad download: say how to fix it, no traceback
            raise UserError(str(exc)) from None
    return Tokenizer.from_files(spec)


_SUFFIX_FORMATS = {".npy": "npy", ".u16": "u16", ".u32": "u32"}


def _format_of(explicit, path) -> str:
    """--format, else from the file's suffix (.npy, .u16, .u32), else text."""
    if explicit:
        return explicit
    if path:
        for suffix, fmt in _SUFFIX_FORMATS.items():
            if path.lower().endswith(suffix):
                return fmt
    return "text"


# Where text may be cut for streaming, per pre-tokenization pattern. Python's
# \s also matches U+001C..U+001F, which the tokenizer's patterns treat as
# punctuation, so whitespace is written [^\S\x1c-\x1f].
_CUTS = {
    # gpt2: before whitespace that follows non-whitespace
    "gpt2": re.compile(r"(?<=\S)[^\S\x1c-\x1f]"),
    # cl100k: before whitespace that follows a letter or number, before a
    # space that follows non-whitespace, and before a letter or number that
    # follows CR/LF
    "cl100k": re.compile(r"(?<=[^\W_])[^\S\x1c-\x1f]|(?<=\S) |(?<=[\r\n])[^\W_]"),
}


def _safe_cut(buf: str, specials, lo: int = 1, pattern: str = "gpt2") -> int:
    """The largest position p >= lo where ``buf`` can be cut so that encoding
    buf[:p] and buf[p:] separately gives the same ids as encoding buf, and
    that stays so whatever text is appended to buf later (0: none).

    Why the cuts of ``_CUTS`` are safe. gpt2: no piece runs from non-whitespace
    into whitespace (its pieces are letter, number, other and contraction
    runs, each with at most one *leading* space, or whitespace runs), so a
    piece ends at p whether or not more text follows. Not the other way round:
    after whitespace, the ``\\s+(?!\\S)`` lookahead depends on what follows.
    cl100k: letter and number pieces never take in following whitespace, and
    no piece takes in a following space; punctuation pieces take trailing
    CR/LF (so no cut after punctuation before a newline), and CR/LF never joins
    the letters or digits after it. In both, the scanners are memoryless, so
    the pieces from p on are the same when scanning starts at p. A special
    token never straddles the cut, and the last max-special-length characters
    are not cut (a special could still be completed by text appended later).
    Scans from the end in growing windows: cheap when a cut is near the end.
    """
    cut = _CUTS[pattern]
    hi = len(buf) - max((len(s) for s in specials), default=1) + 1
    lo = max(1, lo)
    width = 4096
    while hi > lo:
        a = max(lo, hi - width)
        best = 0
        for m in cut.finditer(buf, a, hi + 1):
            p = m.start()
            if p < hi and not any(_straddles(buf, s, p) for s in specials):
                best = p
        if best:
            return best
        hi, width = a, width * 4
    return 0


def _stream_pieces(chunks, specials, pattern: str = "gpt2"):
    """Re-cut a stream of text chunks at safe cuts (see _safe_cut), so each
    piece encodes to exactly its share of the whole text's ids. Memory stays
    bounded by the chunk size plus the longest stretch of text without a safe
    cut (such as one line of text without spaces)."""
    tail = max((len(s) for s in specials), default=1)
    buf, scanned = "", 1
    for data in chunks:
        buf += data
        p = _safe_cut(buf, specials, scanned, pattern)
        if p:
            yield buf[:p]
            buf = buf[p:]
        scanned = max(1, len(buf) - tail)  # no valid cut before here; the tail is looked at again
    if buf:
        yield buf


def _straddles(buf: str, s: str, p: int) -> bool:
    start = max(0, p - len(s) + 1)
    while True:
        k = buf.find(s, start, p + len(s))
        if k < 0 or k >= p:
            return False
        if k + len(s) > p:
            return True
        start = k + 1


class _IdWriter:
    """Writes ids as text / .npy / raw u16|u32 to an open binary file, streaming."""

    NPY_HEADER = 128  # bytes: room for any shape; patched at the end

    def __init__(self, f, fmt: str, n_vocab: int):
        import numpy as np

        self.f, self.fmt, self.count, self.first = f, fmt, 0, True
        if fmt == "u16" and n_vocab > 65536:
            raise UserError(f"--format u16 cannot hold ids of a {n_vocab}-token vocabulary; use u32")
        self.dtype = np.dtype("<u2") if fmt == "u16" or (fmt == "npy" and n_vocab <= 65536) else np.dtype("<u4")
        if fmt == "npy":
            f.write(self._npy_header(0))

    def _npy_header(self, n: int) -> bytes:
        d = "{'descr': '%s', 'fortran_order': False, 'shape': (%d,), }" % (self.dtype.str, n)
        head = b"\x93NUMPY\x01\x00"
        body = d.encode("latin1")
        body += b" " * (self.NPY_HEADER - len(head) - 2 - len(body) - 1) + b"\n"
        return head + (len(body)).to_bytes(2, "little") + body

    def write(self, ids) -> None:
        import numpy as np

        if self.fmt == "text":
            if ids:
                self.f.write(((" " if not self.first else "") + " ".join(map(str, ids))).encode())
                self.first = False
        else:
            self.f.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self.count += len(ids)

    def close(self) -> None:
        if self.fmt == "text":
            self.f.write(b"\n")
        elif self.fmt == "npy":
            self.f.seek(0)
            self.f.write(self._npy_header(self.count))
            self.f.seek(0, 2)


def _open_out(path):
    """(context manager yielding a binary file): atomic file, or stdout."""
    import contextlib

    from gptlite.fileio import atomic_open

    if path and path != "-":
        return atomic_open(path, "wb")
    return contextlib.nullcontext(sys.stdout.buffer)


def _text_chunks(args):
    """The input text in pieces of about `chunk_chars` characters."""
    import contextlib

    if args.text is not None:
        if args.input:
            raise UserError("give either TEXT or --input, not both")
        yield args.text
        return
    from gptlite.fileio import iter_utf8

    if args.input and args.input != "-":
        f = open(args.input, "rb")
        name = args.input
    else:
        f = contextlib.nullcontext(sys.stdin.buffer)
        name = "<stdin>"
    with f as raw:
        yield from iter_utf8(raw, args.chunk_chars, name)  # a bad byte is reported at its offset in the input


def _cmd_encode(args) -> int:
    if args.allow_special and args.ordinary:
        raise UserError("--allow-special and --ordinary exclude each other")
    tok = _load_tokenizer(args.tokenizer)
    fmt = _format_of(args.format, args.output)
    if args.show and args.format not in (None, "text"):
        raise UserError("--show prints text; it cannot be combined with --format " + args.format)
    if args.show and args.output is None and args.format is None:
        fmt = "text"
    specials = list(tok.special_tokens)
    if args.ordinary:
        encode = tok.encode_ordinary
    elif args.allow_special:
        def encode(t):
            return tok.encode(t, allowed_special="all")
    else:
        encode = tok.encode

    def pieces():
        return _stream_pieces(_text_chunks(args), specials, tok.pattern)

    with _open_out(args.output) as f:
        if args.show:
            for part in pieces():
                ids = encode(part)
                lines = []
                for i in ids:
                    b = tok.token_bytes(i)
                    try:
                        shown = repr(b.decode("utf-8"))
                    except UnicodeDecodeError:
                        shown = repr(b)
                    lines.append(f"{i} {shown}\n")
                f.write("".join(lines).encode())
            return 0
        w = _IdWriter(f, fmt, tok.n_vocab)
        for part in pieces():
            w.write(encode(part))
        w.close()
        f.flush()
    return 0


def _id_chunks(args):
    """Token ids from the arguments or the input, in lists of at most `chunk_ids`."""
    import numpy as np

    if args.ids:
        if args.input:
            raise UserError("give either IDS or --input, not both")
        yield _parse_ids(" ".join(args.ids), "the arguments", 0)
        return
    fmt = _format_of(args.format, args.input)
    name = args.input if args.input and args.input != "-" else "<stdin>"
    if fmt == "npy":
        if name == "<stdin>":
            raise UserError("--format npy needs --input FILE")
        try:
            arr = np.load(name, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise UserError(f"{name}: not a .npy array of ids ({exc})") from None
        if arr.dtype.kind not in "iu":
            raise UserError(f"{name}: ids must be integers, found dtype {arr.dtype}")
        arr = arr.reshape(-1)
        for k in range(0, len(arr), args.chunk_ids):
            yield arr[k:k + args.chunk_ids].tolist()
        return
    f = open(name, "rb") if name != "<stdin>" else sys.stdin.buffer
    with f:
        if fmt in ("u16", "u32"):
            width = 2 if fmt == "u16" else 4
            dtype = "<u2" if fmt == "u16" else "<u4"
            while True:
                data = f.read(args.chunk_ids * width)
                if not data:
                    return
                if len(data) % width:
                    raise UserError(f"{name}: length is not a multiple of {width} bytes (is it {fmt}?)")
                yield np.frombuffer(data, dtype=dtype).tolist()
        else:
            rest, offset = b"", 0
            while True:
                data = f.read(args.chunk_ids * 6)
                if not data:
                    break
                data = rest + data
                cut = max(data.rfind(b" "), data.rfind(b"\n"), data.rfind(b"\t"))
                if cut < 0:
                    rest = data
                    continue
                ids = _parse_ids(data[:cut].decode("latin1"), name, offset)
                offset += len(ids)
                rest = data[cut:]
                yield ids
            if rest.strip():
                yield _parse_ids(rest.decode("latin1"), name, offset)


def _parse_ids(s: str, name: str, offset: int) -> list:
    out = []
    for k, w in enumerate(s.replace(",", " ").split()):
        try:
            out.append(int(w))
        except ValueError:
            raise UserError(f"{name}: id #{offset + k} is not an integer: {w!r}") from None
    return out


def _cmd_decode(args) -> int:
    import codecs

    tok = _load_tokenizer(args.tokenizer)
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    position = 0
    with _open_out(args.output) as f:
        for ids in _id_chunks(args):
            try:
                b = tok.decode_bytes(ids)
            except ValueError as exc:
                raise UserError(_shift_position(str(exc), position)) from None
            f.write(dec.decode(b).encode("utf-8"))
            position += len(ids)
        f.write(dec.decode(b"", final=True).encode("utf-8"))
        f.flush()
    return 0


def _shift_position(msg: str, offset: int) -> str:
    """Error messages name the position within a chunk; make it global."""
    import re

    return re.sub(r"at position (\d+)", lambda m: f"at position {int(m.group(1)) + offset}", msg)


# --- tokenizer training ------------------------------------------------------------
def _add_tokenizer_train_commands(sub) -> None:
    # `gptlite tokenizer train`: reuse a `tokenizer` group if another area made one.
    group = sub.choices.get("tokenizer")
    if group is None:
        group = sub.add_parser("tokenizer", help="tokenizer tools: train a byte-level BPE vocabulary")
    tsub = next((a for a in group._actions if isinstance(a, argparse._SubParsersAction)), None)
    if tsub is None:
        tsub = group.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
        tsub.required = True
    p = tsub.add_parser("train", help="train a byte-level BPE tokenizer on text files",
                        description="Train a byte-level BPE tokenizer (GPT-2 style) on UTF-8 text files.")
    p.add_argument("files", nargs="+", metavar="FILES", help="UTF-8 text files (each file is a separate document)")
    p.add_argument("--vocab-size", type=int, required=True,
                   help="total vocabulary: 256 bytes + merges + special tokens")
    p.add_argument("--out", required=True, help="output directory (created; files replaced atomically)")
    p.add_argument("--special", action="append", default=None, metavar="TOKEN",
                   help="special token appended after the merges (repeatable; default <|endoftext|>)")
    p.add_argument("--no-special", action="store_true", help="no special tokens at all")
    p.add_argument("--min-frequency", type=int, default=1, help="stop when the best pair occurs fewer times")
    p.add_argument("--pattern", choices=["gpt2", "cl100k"], default="gpt2", help="pre-tokenization pattern")
    p.add_argument("--format", action="append", choices=["gpt2", "hf", "tiktoken"], default=None,
                   help="output format(s) (repeatable; default: gpt2 and tiktoken)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="invalid UTF-8: fail naming file and offset (strict) or substitute U+FFFD")
    p.add_argument("--threads", type=int, default=None, help="counting threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_tokenizer_train)


def _cmd_tokenizer_train(args) -> int:
    from gptlite.runlock import RunLock

    with RunLock(args.out, "tokenizer training"):  # two trainings into one --out: the second is refused
        return _tokenizer_train(args)


def _tokenizer_train(args) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    from gptlite.tokenizer import bpe_train as trainer
    from gptlite.fileio import publish_modes, swap_dir

    specials = () if args.no_special else tuple(args.special or trainer.DEFAULT_SPECIAL_TOKENS)
    formats = list(dict.fromkeys(args.format or ["gpt2", "tiktoken"]))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    try:
        result = trainer.train_bpe(
            args.files, vocab_size=args.vocab_size, special_tokens=specials, min_frequency=args.min_frequency,
            pattern=args.pattern, errors=args.errors, num_threads=args.threads, progress=not args.quiet,
        )
    except ValueError as exc:  # the core's hint names the Python argument; here it is a flag
        raise UserError(str(exc).replace('errors="replace"', "--errors replace")) from None
    tok = result.to_tokenizer(name=out.name or "gptlite-bpe")
    # Save everything into a fresh sibling directory first, then move it into
    # place: an interrupted run leaves no half-written output behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for fmt in formats:
            tok.save(tmp, format=fmt)
        publish_modes(tmp)
        # an existing --out keeps its other files; the directory changes in one rename
        swap_dir(tmp, out, replaced={f.name for f in tmp.iterdir()})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    st = result.stats
    n_merged = len(result.tokens) - 256
    print(f"trained {args.pattern} byte-level BPE in {st['seconds']:.2f}s "
          f"(counting {st['count_seconds']:.2f}s, merging {st['merge_seconds']:.2f}s)")
    print(f"  corpus:       {st['corpus_bytes']:,} bytes in {len(args.files)} file(s)")
    print(f"  pre-tokens:   {st['pretokens']:,} ({st['unique_pretokens']:,} unique)")
    print(f"  vocabulary:   {result.n_vocab:,} = 256 bytes + {n_merged:,} merges + {len(specials)} special")
    if result.n_vocab < args.vocab_size:
        print(f"  note:         stopped before --vocab-size {args.vocab_size:,}: "
              f"no pair left with count >= {max(1, args.min_frequency)}")
    if st["training_tokens"]:
        print(f"  compression:  {st['corpus_bytes'] / st['training_tokens']:.3f} bytes/token on the training text "
              f"({st['training_tokens']:,} tokens)")
    print(f"  saved:        {out}/ ({', '.join(formats)}): {', '.join(sorted(f.name for f in out.iterdir()))}")
    return 0


# --- model: generate / check-reference ---------------------------------------------
def _add_model_commands(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a model, streaming the text")
    p.add_argument("prompt", nargs="?", default=None,
                   help="prompt text; '-' or absent reads stdin (absent on a terminal: start from <|endoftext|>)")
    p.add_argument("--model", default=None, help="model directory or hub name (default: the shipped default model)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when a GPU is visible")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
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


def _model_and_tokenizer(model_arg, device, dtype):
    from gptlite.engine import checkpoint

    d = checkpoint.resolve_model_dir(model_arg)
    model = checkpoint.load_model(d, device=device, dtype=dtype)
    tok = checkpoint.load_tokenizer(d)
    if tok is None:
        if model.config.vocab_size != 50257:
            raise UserError(f"{d} holds no tokenizer (encoder.json + vocab.bpe) and its vocab_size "
                            f"{model.config.vocab_size} is not GPT-2's 50257")
        from gptlite.tokenizer.encoding import Tokenizer

        tok = Tokenizer.gpt2()
    if tok.n_vocab > model.config.vocab_size:
        raise UserError(f"{d}: the tokenizer has {tok.n_vocab} tokens but the model only {model.config.vocab_size}")
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
    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
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
        for text in tok.decode_stream(tokens):  # whole characters only: a token may end inside one
            out.write(text)
            out.flush()
        out.write("\n")
        out.flush()
    return 0


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


# --- pre-training: prepare / train / plot ------------------------------------------
def _add_training_commands(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize text/JSONL files into train/val token shards")
    p.add_argument("files", nargs="+", help="text files (one document each) or .jsonl files (one document a line)")
    p.add_argument("-o", "--out", required=True, help="output directory (train.bin, val.bin, meta.json, tokenizer/)")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2', 'default' (the shipped model's) or a tokenizer directory")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of documents (or of the tail of a single document) held out")
    p.add_argument("--text-field", default=None, help="JSON field holding the text (treats every input as JSONL)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val document split")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="pre-train a model from a TOML config")
    p.add_argument("--config", required=True, help="TOML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in out_dir")
    p.add_argument("--steps", type=int, default=None, help="stop after this many more steps (the schedule still spans max_steps)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("plot", help="draw a run's train/val loss curves to PNG")
    p.add_argument("run_dir", help="a `gptlite train` output directory (holding metrics.jsonl)")
    p.add_argument("-o", "--out", default=None, help="PNG path (default RUN_DIR/loss.png)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("val-loss", help="a model's loss on a prepared split, next to a unigram baseline")
    p.add_argument("--model", required=True, help="model directory (e.g. RUN_DIR/ckpt)")
    p.add_argument("--data", required=True, help="`gptlite prepare` output directory")
    p.add_argument("--split", default="val")
    p.add_argument("--block-size", type=int, default=None, help="window length (default: the model's n_positions)")
    p.set_defaults(func=_cmd_val_loss)

    p = sub.add_parser("export", help="copy a checkpoint's model + tokenizer to a model directory (e.g. as float16)")
    p.add_argument("checkpoint", help="a checkpoint directory (RUN_DIR/ckpt)")
    p.add_argument("out", help="output model directory")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.set_defaults(func=_cmd_export)


def _cmd_val_loss(args) -> int:
    import json

    from gptlite.engine.checkpoint import load_model
    from gptlite.training.pretrain import evaluate_split

    model = load_model(args.model)
    print(json.dumps(evaluate_split(model, args.data, args.split, args.block_size), indent=2))
    return 0


def _cmd_export(args) -> int:
    from gptlite.engine.checkpoint import load_model, load_tokenizer, save_model

    model = load_model(args.checkpoint)
    tok = load_tokenizer(args.checkpoint)
    if tok is None:
        raise UserError(f"{args.checkpoint} holds no tokenizer (encoder.json + vocab.bpe)")
    save_model(model, args.out, tokenizer=tok, dtype=args.dtype)
    print(args.out)
    return 0


def _cmd_prepare(args) -> int:
    from gptlite.data import prepare

    meta = prepare(args.files, args.tokenizer, args.out, val_fraction=args.val_fraction,
                   text_field=args.text_field, seed=args.seed)
    sp = meta["splits"]
    print(f"{args.out}: train {sp['train']['tokens']:,} tokens ({sp['train']['documents']} docs), "
          f"val {sp['val']['tokens']:,} tokens ({sp['val']['documents']} docs), {meta['dtype']}, vocab {meta['n_vocab']}")
    return 0


def _cmd_train(args) -> int:
    from gptlite.training.pretrain import Trainer, TrainingError, load_config

    cfg = load_config(args.config, args.overrides)
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    try:
        result = Trainer(cfg, resume=args.resume).run(args.steps)
    except TrainingError as exc:
        raise UserError(str(exc)) from None
    val = f", val loss {result['val_loss']:.4f}" if result["val_loss"] is not None else ""
    print(f"step {result['step']}{val}; checkpoint {result['checkpoint']}")
    return 0


def _cmd_plot(args) -> int:
    from gptlite.training.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


# --- evaluation and fine-tuning ----------------------------------------------------
def _add_eval_commands(sub) -> None:
    def model_args(p):
        p.add_argument("--model", default=None, help="model directory or hub name (default: the shipped default model)")
        p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when a GPU is visible")
        p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--no-bos", dest="bos", action="store_false",
                       help="do not put <|endoftext|> before each sequence")
        p.add_argument("--json", action="store_true", help="print the result as one JSON object")
        p.add_argument("--no-progress", dest="progress", action="store_false")

    ev = sub.add_parser("eval", help="zero-shot evaluation: perplexity, LAMBADA, multiple choice")
    evs = ev.add_subparsers(dest="eval_command", metavar="TASK")
    evs.required = True
    p = evs.add_parser("perplexity", help="perplexity / bits per byte of a text file")
    p.add_argument("file")
    p.add_argument("--context", type=int, default=None, help="tokens per window (default: the model's n_positions)")
    p.add_argument("--stride", type=int, default=None,
                   help="window step; default = context (non-overlapping); smaller = sliding window")
    model_args(p)
    p.set_defaults(func=_cmd_eval_perplexity, batch_size=4)
    p = evs.add_parser("lambada", help="LAMBADA last-word accuracy and perplexity (jsonl of {\"text\": ...})")
    p.add_argument("file")
    p.add_argument("--limit", type=int, default=None, help="first N passages only")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of failing")
    model_args(p)
    p.set_defaults(func=_cmd_eval_lambada)
    p = evs.add_parser("choice", help="multiple choice by log-probability (jsonl/csv: context, choices, label)")
    p.add_argument("file")
    p.add_argument("--normalize", choices=["total", "mean"], default="total",
                   help="total log-prob, or mean per token (length-normalised)")
    p.add_argument("--sep", default=" ", help="text put between context and each choice (default: one space)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of failing")
    p.add_argument("--predictions", default=None, help="write one predicted index per line to this file")
    model_args(p)
    p.set_defaults(func=_cmd_eval_choice)

    pr = sub.add_parser("prompt", help="GPT-2-style zero-shot tasks by prompting: TL;DR summaries, translation")
    prs = pr.add_subparsers(dest="prompt_command", metavar="TASK")
    prs.required = True

    def prompt_args(p, max_new_tokens):
        p.add_argument("--model", default=None, help="model directory or hub name (default: the shipped default model)")
        p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when a GPU is visible")
        p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
        p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
        p.add_argument("--show-prompt", action="store_true", help="print the full prompt the model sees first")
        p.add_argument("--json", action="store_true", help="print prompt, completion and answer as one JSON object")

    p = prs.add_parser("tldr", help="summarise: the article, then 'TL;DR:'; sample with top-k 2, keep 3 sentences")
    p.add_argument("file", nargs="?", default="-", help="article text file ('-' or absent: stdin)")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--sentences", type=int, default=3, help="keep this many generated sentences")
    prompt_args(p, 100)
    p.set_defaults(func=_cmd_prompt_tldr)
    p = prs.add_parser("translate", help="few-shot translation: 'source = target' example lines, then the text")
    p.add_argument("text", help="one line to translate ('-': stdin)")
    p.add_argument("--examples", default=None,
                   help="file of 'source<TAB>target' example lines (default: built-in English = French pairs)")
    p.add_argument("--sep", default=" = ", help="what joins source and target in the prompt")
    prompt_args(p, 40)
    p.set_defaults(func=_cmd_prompt_translate)

    p = sub.add_parser("finetune", help="GPT-1 supervised fine-tuning (classification, entailment, similarity, choice)",
                       description="GPT-1 fine-tuning: special tokens, a linear head at the extract token, "
                                   "loss = task loss + lambda * LM loss. Defaults are the GPT-1 paper's.")
    p.add_argument("--task", required=True, choices=["classification", "entailment", "similarity", "choice"],
                   help="input transformation; records need text | premise,hypothesis | text_a,text_b | context,choices")
    p.add_argument("--train", required=True, help="training set (.jsonl or .csv)")
    p.add_argument("--valid", default=None, help="validation set, evaluated after every epoch")
    p.add_argument("--out", required=True, help="checkpoint directory (model + head + special tokens)")
    p.add_argument("--model", default=None, help="pre-trained model directory or hub name (default: the shipped default model)")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (the no-pre-training baseline)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run saved in --out exactly (give the same options again; --model is not used)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the fine-tuned model already in --out (never a directory that is not one)")
    p.add_argument("--labels", default=None, help="comma-separated label set (default: the labels seen in --train)")
    p.add_argument("--lr", type=float, default=6.25e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--warmup", type=float, default=0.002, help="warmup as a fraction of all steps (then linear decay)")
    p.add_argument("--lm-coef", type=float, default=0.5, help="lambda, weight of the auxiliary LM loss (0 = ablation)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout on the classifier input")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-len", type=int, default=None, help="longest transformed sequence (default: n_positions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) malformed lines instead of failing")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--json", action="store_true", help="print the per-epoch history as JSON")
    p.set_defaults(func=_cmd_finetune)


def _print_result(args, d: dict, title: str) -> None:
    import json

    if args.json:
        print(json.dumps(d))
        return
    print(title)
    for k, v in d.items():
        print(f"  {k:16s} {v:.6g}" if isinstance(v, float) else f"  {k:16s} {v}")


def _cmd_eval_perplexity(args) -> int:
    from gptlite.tasks import evaluate
    from gptlite.fileio import read_utf8

    text = read_utf8(args.file)
    if not text:
        raise UserError(f"{args.file} is empty: nothing to evaluate")
    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    r = evaluate.perplexity(model, tok, text, context=args.context, stride=args.stride, batch_size=args.batch_size,
                            bos=args.bos, progress=args.progress and None)
    _print_result(args, r.as_dict(), f"perplexity of {args.file}")
    return 0


def _cmd_eval_lambada(args) -> int:
    from gptlite.tasks import evaluate

    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    r = evaluate.lambada(model, tok, args.file, batch_size=args.batch_size, bos=args.bos, skip_bad=args.skip_bad,
                         limit=args.limit, progress=args.progress and None)
    for line, why in r.skipped:
        print(f"gptlite: skipped {args.file}:{line}: {why}", file=sys.stderr)
    _print_result(args, r.as_dict(), f"LAMBADA on {args.file}")
    return 0


def _cmd_eval_choice(args) -> int:
    from gptlite.tasks import evaluate
    from gptlite.fileio import atomic_write_text

    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    r = evaluate.choice(model, tok, args.file, normalize=args.normalize, sep=args.sep, batch_size=args.batch_size,
                        bos=args.bos, skip_bad=args.skip_bad, progress=args.progress and None)
    for line, why in r.skipped:
        print(f"gptlite: skipped {args.file}:{line}: {why}", file=sys.stderr)
    if args.predictions:
        atomic_write_text(args.predictions, "".join(f"{p}\n" for p in r.predictions))
    _print_result(args, r.as_dict(), f"multiple choice on {args.file}")
    return 0


def _read_arg_text(name: str) -> str:
    from gptlite.fileio import read_utf8

    return sys.stdin.read() if name == "-" else read_utf8(name)


def _print_prompt_result(args, r) -> None:
    import json

    if args.json:
        print(json.dumps({"prompt": r.prompt, "completion": r.completion, "output": r.output,
                          "prompt_tokens": r.prompt_tokens, "cropped": r.cropped}))
        return
    if r.cropped:
        print(f"gptlite: the prompt was longer than the model's context: kept its last {r.prompt_tokens} tokens",
              file=sys.stderr)
    if args.show_prompt:
        print(r.prompt + "\n" + "-" * 40)
    print(r.output)


def _cmd_prompt_tldr(args) -> int:
    from gptlite.tasks import prompting

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.sentences < 1:
        raise UserError(f"--sentences must be >= 1, got {args.sentences}")
    article = _read_arg_text(args.file)
    if not article.strip():
        raise UserError(f"{'stdin' if args.file == '-' else args.file} is empty: nothing to summarise")
    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    r = prompting.summarize(model, tok, article, args.max_new_tokens, top_k=args.top_k,
                            temperature=args.temperature, seed=args.seed, sentences=args.sentences)
    _print_prompt_result(args, r)
    return 0


def _cmd_prompt_translate(args) -> int:
    from gptlite.tasks import prompting

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise UserError("nothing to translate: the text is empty")
    examples = prompting.read_examples(args.examples) if args.examples else None
    model, tok = _model_and_tokenizer(args.model, args.device, args.dtype)
    r = prompting.translate(model, tok, text, examples, sep=args.sep, max_new_tokens=args.max_new_tokens)
    _print_prompt_result(args, r)
    return 0


def _cmd_finetune(args) -> int:
    from gptlite.tasks.finetune import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptlite", description="GPT-1/GPT-2 from first principles")
    from gptlite import __version__

    parser.add_argument("--version", action="version", version=f"gptlite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_tokenizer_commands(sub)
    _add_tokenizer_train_commands(sub)
    _add_model_commands(sub)
    _add_training_commands(sub)
    _add_eval_commands(sub)
    return parser


# What a user's input or environment causes (ValueError subclasses carry the
# file/field/id; OSError the path). KeyError, TypeError and the rest are bugs.
USER_ERRORS = (UserError, ValueError, OSError)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # an OSError too: before USER_ERRORS (`gptlite encode ... | head`)
        return 0
    except USER_ERRORS as exc:  # one line; anything else is a bug and keeps its traceback
        print(f"gptlite: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or runlock.Stopped by SIGTERM/SIGUSR1: exit 128 + the signal
        print("gptlite: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)


if __name__ == "__main__":
    sys.exit(main())
