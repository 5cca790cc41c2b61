"""`gptlite encode` / `decode` (streamed tokenizer I/O) and `gptlite tokenizer train`."""
from __future__ import annotations

import argparse  # noqa: F401
import re  # noqa: F401
import sys

from gptlite.cli.common import UserError, _check_out_dir  # noqa: F401
from gptlite.defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE  # noqa: F401


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
    if spec == "default":  # the shipped model's own tokenizer, as `gptlite prepare --tokenizer default`
        return Tokenizer.from_pretrained("default")
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


def _safe_cut(buf: str, specials, lo: int = 1, pattern: str = "gpt2") -> int:
    """The largest position p >= lo where ``buf`` can be cut so that encoding
    buf[:p] and buf[p:] separately gives the same ids as encoding buf, and
    that stays so whatever text is appended to buf later (0: none).

    Where a pattern's pre-tokenization may be cut is the Rust core's rule
    (``_core.safe_cut``, rust/pretokenize.rs ``is_safe_cut``), the same one its
    trainer streams files by. On top of it: a special token never straddles
    the cut, and the last max-special-length characters are not cut (a special
    could still be completed by text appended later).
    """
    from gptlite import _core

    hi = len(buf) - max((len(s) for s in specials), default=1) + 1
    lo = max(1, lo)
    try:
        buf.encode("utf-8")
    except UnicodeEncodeError:
        # lone surrogates (from argv): U+FFFD in their place keeps the indices,
        # and is what the encoder makes of them
        buf = re.sub("[\ud800-\udfff]", "\ufffd", buf)
    while hi > lo:
        p = _core.safe_cut(buf, lo, hi, pattern)
        if not p or not any(_straddles(buf, s, p) for s in specials):
            return p
        hi = p
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
        _check_out_dir(path)
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
        def encode(t):
            try:
                return tok.encode(t)
            except ValueError as exc:  # the library's message names Python arguments, not our flags
                m = re.search(r"disallowed special token ('[^']*')", str(exc))
                if m is None:
                    raise
                raise UserError(f"the input contains the special token {m.group(1)}: pass --allow-special to encode "
                                "it as that token, or --ordinary to encode it as plain text") from None

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
def _trainer_patterns() -> tuple:
    from gptlite.tokenizer.bpe_train import PATTERNS

    return PATTERNS


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
    p.add_argument("--pattern", choices=_trainer_patterns(), default="gpt2",
                   help="pre-tokenization pattern (gpt2: GPT-2's; cl100k, o200k: those of cl100k_base, o200k_base)")
    p.add_argument("--format", action="append", choices=["gpt2", "hf", "tiktoken"], default=None,
                   help="output format(s) (repeatable; default: gpt2 and tiktoken)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="invalid UTF-8: fail naming file and offset (strict) or substitute U+FFFD")
    p.add_argument("--threads", type=int, default=None, help="counting threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a tokenizer an earlier `gptlite tokenizer train` wrote into --out (other files stay)")
    p.set_defaults(func=_cmd_tokenizer_train)


def _cmd_tokenizer_train(args) -> int:
    from gptlite.runlock import RunLock

    with RunLock(args.out, "tokenizer training"):  # two trainings into one --out: the second is refused
        return _tokenizer_train(args)


def _tokenizer_train(args) -> int:
    from pathlib import Path

    from gptlite.tokenizer import bpe_train as trainer
    from gptlite.fileio import publish_modes, staged_dir, swap_dir

    _check_out_dir(args.out, "--out")
    specials = () if args.no_special else tuple(args.special or trainer.DEFAULT_SPECIAL_TOKENS)
    formats = list(dict.fromkeys(args.format or ["gpt2", "tiktoken"]))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    _check_tokenizer_out(out, getattr(args, "overwrite", False))
    from gptlite.training import distributed

    world = distributed.world()
    try:
        if world.size > 1:
            result = _tokenizer_train_sharded(world, trainer, args, specials)
            if result is None:  # not rank 0: its counts went to rank 0
                return 0
        else:
            result = trainer.train_bpe(
                args.files, vocab_size=args.vocab_size, special_tokens=specials, min_frequency=args.min_frequency,
                pattern=args.pattern, errors=args.errors, num_threads=args.threads, progress=not args.quiet,
            )
    except ValueError as exc:  # the core's hint names the Python argument; here it is a flag
        raise UserError(str(exc).replace('errors="replace"', "--errors replace")) from None
    tok = result.to_tokenizer(name=out.name or "gptlite-bpe")
    # Save everything into a fresh sibling directory first, then move it into
    # place: an interrupted run leaves no half-written output behind.
    with staged_dir(out) as tmp:
        for fmt in formats:
            tok.save(tmp, format=fmt)
        written = sorted(f.name for f in tmp.iterdir())
        _write_train_record(tmp, args, formats, specials, written)
        publish_modes(tmp)
        # an earlier training's files go (a format not asked for again included); anything
        # else in --out stays; the directory changes in one rename
        swap_dir(tmp, out, replaced=set(written) | _earlier_outputs(out) | {TRAIN_RECORD})
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
    if args.pattern != "gpt2" and not set(formats) & {"gpt2", "hf"}:
        print(f"  note:         .tiktoken files do not record the pattern: load with pattern={args.pattern!r}")
    return 0


# Written beside the vocabulary files by every `tokenizer train`: how it was trained,
# and what marks the directory as ours to replace (with --overwrite).
TRAIN_RECORD = "tokenizer_train.json"


def _earlier_outputs(out) -> set:
    try:
        rec = _read_train_record(out)
    except UserError:
        return set()
    return set(rec.get("files", [])) if rec else set()


def _read_train_record(out):
    import json
    from pathlib import Path

    path = Path(out) / TRAIN_RECORD
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not a readable tokenizer training record ({exc})") from None
    if not (isinstance(rec, dict) and rec.get("kind") == "gptlite tokenizer train"
            and isinstance(rec.get("files"), list) and all(isinstance(f, str) and "/" not in f for f in rec["files"])):
        raise UserError(f"{path}: not a gptlite tokenizer training record")
    return rec


def _check_tokenizer_out(out, overwrite: bool) -> None:
    """--out must be new, empty, or an earlier `tokenizer train` output (replaced only
    with --overwrite): a directory holding someone's own vocab.bpe is never written over."""
    from gptlite.runlock import OutDirError, check_out_dir

    try:
        is_ours = _read_train_record(out) is not None
    except UserError:
        is_ours = False
    try:
        check_out_dir(out, is_ours, resume=False, overwrite=overwrite, what="trained tokenizer")
    except OutDirError as exc:
        raise UserError(str(exc).replace("pass --resume to continue it, --overwrite", "pass --overwrite")) from None


def _write_train_record(directory, args, formats, specials, files) -> None:
    import json
    from pathlib import Path

    from gptlite import __version__

    rec = {
        "kind": "gptlite tokenizer train", "gptlite": __version__, "files": files,
        "vocab_size": args.vocab_size, "pattern": args.pattern, "special_tokens": list(specials),
        "min_frequency": args.min_frequency, "formats": formats, "errors": args.errors,
        "corpus": [str(f) for f in args.files],
    }
    (Path(directory) / TRAIN_RECORD).write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")


def _tokenizer_train_sharded(world, trainer, args, specials):
    """Under mpiexec: each rank counts the pre-tokens of its share of the files, rank 0
    sums the counts (a gather) and learns the merges. Counts add up, so the merges are
    those of one process counting every file."""
    import os
    import time

    from gptlite.engine import cpu
    from gptlite.training.distributed import shard

    t0 = time.perf_counter()
    mine = [args.files[i] for i in shard(len(args.files), world)]
    counts = (trainer.count_pretokens(mine, pattern=args.pattern, errors=args.errors,
                                      num_threads=args.threads or cpu.workers()) if mine else {})
    gathered = world.gather(counts)
    if not world.is_main:
        return None
    counted = time.perf_counter() - t0
    result = trainer.train_bpe(word_counts=trainer.merge_counts(gathered), vocab_size=args.vocab_size,
                               special_tokens=specials, min_frequency=args.min_frequency, pattern=args.pattern,
                               errors=args.errors, num_threads=args.threads, progress=not args.quiet)
    result.stats["corpus_bytes"] = sum(os.path.getsize(f) for f in args.files)
    result.stats["count_seconds"] += counted  # the ranks' counting and the gather
    result.stats["seconds"] += counted
    return result
