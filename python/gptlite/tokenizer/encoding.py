"""GPT-2's byte-level BPE tokenizer: a thin Python API over the Rust core.

The API mirrors ``tiktoken.Encoding``::

    tok = Tokenizer.gpt2()
    ids = tok.encode("Hello world")          # [15496, 995]
    tok.decode(ids)                          # 'Hello world'

The Rust side (``gptlite._core.CoreBPE``) does pre-tokenization, merging and
file parsing with the GIL released; this module checks arguments, handles
special tokens the way tiktoken does, and finds/caches GPT-2's files.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import AbstractSet, Collection, Iterable, Literal, Sequence

import numpy as np

from gptlite import _core
from gptlite.fileio import atomic_write_bytes, atomic_write_text
from gptlite.validate import token_id

# The Rust core holds every pattern next to its scanner; these are views of it.
PATTERNS = {name: regex for name, _tiktoken_regex, regex in _core.patterns()}
TIKTOKEN_PATTERNS = {name: tk for name, tk, _regex in _core.patterns()}
GPT2_PATTERN = PATTERNS["gpt2"]
CL100K_PATTERN = PATTERNS["cl100k"]
O200K_PATTERN = PATTERNS["o200k"]

ENDOFTEXT = "<|endoftext|>"

GPT2_URLS = {
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
}
GPT2_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def _check_text(text, what: str = "text") -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be str, not {type(text).__name__} (decode it first, e.g. data.decode('utf-8'))")
    raise TypeError(f"{what} must be str, not {type(text).__name__}")


def _fix_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8: replace them with U+FFFD, as tiktoken does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _utf8_safe(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _fix_surrogates(text)


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Tokenizer:
    """A byte-level BPE tokenizer (GPT-2's, or one with the same design)."""

    # A compiled general regex when the pattern has no built-in scanner (Encoding only).
    _regex = None

    def __init__(self, core: "_core.CoreBPE", name: str = "gpt2"):
        self._core = core
        self.name = name
        self._special_tokens = dict(core.special_tokens())
        self._core_specials = frozenset(self._special_tokens)

    # --- construction -------------------------------------------------------------
    @classmethod
    def gpt2(cls, cache_dir=None) -> "Tokenizer":
        """GPT-2's tokenizer from its official files.

        Looked up in ``$GPTLITE_GPT2_DIR`` if set, else in ``cache_dir`` (default
        ``$XDG_CACHE_HOME/gptlite/gpt2`` or ``~/.cache/gptlite/gpt2``), where they are
        downloaded (sha256-checked) on first use.
        """
        env = os.environ.get("GPTLITE_GPT2_DIR")
        if env:
            d = Path(env)
            for name in GPT2_URLS:
                if not (d / name).is_file():
                    raise FileNotFoundError(f"GPTLITE_GPT2_DIR={env} has no {name}")
            return cls.from_files(d, name="gpt2")
        d = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        for name, url in GPT2_URLS.items():
            path = d / name
            if path.is_file() and _sha256(path.read_bytes()) == GPT2_SHA256[name]:
                continue
            data = _download(url)
            got = _sha256(data)
            if got != GPT2_SHA256[name]:
                from gptlite.tokenizer.load import DownloadError

                raise DownloadError(f"{url}: sha256 {got} does not match the expected {GPT2_SHA256[name]}")
            atomic_write_bytes(path, data)
        return cls.from_files(d, name="gpt2")

    @classmethod
    def from_pretrained(cls, name_or_path) -> "Tokenizer":
        """The tokenizer of a model: a model directory, "default" (the shipped
        model's own 2,048-token vocabulary) or a hub name; GPT-2's for a model
        that stores none but has GPT-2's vocabulary size."""
        from gptlite.engine import checkpoint

        d = checkpoint.resolve_model_dir(name_or_path)
        return checkpoint.model_tokenizer(d, checkpoint.read_vocab_size(d))

    @classmethod
    def from_files(cls, path_or_dir, special_tokens=None, pattern: str | None = None,
                   name: str | None = None) -> "Tokenizer":
        """Load ``encoder.json`` + ``vocab.bpe``, ``vocab.json`` + ``merges.txt``, or a ``.tiktoken`` file.

        ``path_or_dir``: a directory holding one of these, or the path of one file
        of the pair (its partner is looked up next to it), or a ``.tiktoken`` file.
        ``special_tokens`` (``.tiktoken`` only, which stores none): default
        ``{"<|endoftext|>": <one past the last rank>}``, as GPT-2 and our trainer have.
        ``pattern``: the pre-tokenization pattern; by default the one ``vocab.bpe``
        names (``save`` records it for a pattern other than GPT-2's), else GPT-2's.
        A ``.tiktoken`` file names none: pass the pattern it was made with.
        """
        p = Path(path_or_dir)
        if pattern is not None:
            _check_pattern(pattern)
        if p.is_dir():
            pairs = [("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")]
            for enc, bpe in pairs:
                if (p / enc).is_file() and (p / bpe).is_file():
                    core = _core.CoreBPE.from_gpt2_files(str(p / enc), str(p / bpe), pattern)
                    return cls(core, name or p.name or "gpt2")
            tk = sorted(p.glob("*.tiktoken"))
            if len(tk) == 1:
                return cls.from_files(tk[0], special_tokens, pattern, name)
            raise FileNotFoundError(
                f"{p}: no tokenizer files (expected encoder.json + vocab.bpe, vocab.json + merges.txt, or one *.tiktoken)"
            )
        if p.suffix == ".tiktoken":
            if special_tokens is None:
                # capped so an out-of-range rank is reported by the file's parser, with its line
                special_tokens = {ENDOFTEXT: min(_max_rank(p) + 1, 2**32 - 2)}
            specials = _checked_specials(special_tokens, f"{p}: special_tokens")
            core = _core.CoreBPE.from_tiktoken_file(str(p), specials, pattern or "gpt2")
            return cls(core, name or p.stem)
        partner = {"encoder.json": "vocab.bpe", "vocab.bpe": "encoder.json",
                   "vocab.json": "merges.txt", "merges.txt": "vocab.json"}.get(p.name)
        if partner is None:
            if not p.exists():
                raise FileNotFoundError(f"tokenizer file not found: {p}")
            raise ValueError(f"{p}: not a tokenizer file (expected encoder.json, vocab.bpe, vocab.json, merges.txt or *.tiktoken)")
        enc, bpe = (p, p.parent / partner) if p.name in ("encoder.json", "vocab.json") else (p.parent / partner, p)
        core = _core.CoreBPE.from_gpt2_files(str(enc), str(bpe), pattern)
        return cls(core, name or p.parent.name or "gpt2")

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict, special_tokens: dict | None = None, pattern: str = "gpt2",
                   name: str = "custom") -> "Tokenizer":
        """From tiktoken-style ``{token bytes: rank}`` (rank == id) and ``{special: id}``."""
        _check_pattern(pattern)
        ranks = [(bytes(b), token_id(r, "from_ranks", f"rank of {bytes(b)!r}")) for b, r in mergeable_ranks.items()]
        specials = _checked_specials(special_tokens or {}, "from_ranks: special_tokens")
        return cls(_core.CoreBPE.from_ranks(ranks, specials, pattern), name)

    # --- properties ---------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self._core.n_vocab

    @property
    def eot_token(self) -> int | None:
        return self._special_tokens.get(ENDOFTEXT)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self._special_tokens)

    @property
    def pattern(self) -> str:
        return self._core.pattern

    @property
    def pat_str(self) -> str:
        return PATTERNS[self._core.pattern]

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        return {b: i for b, i in self._core.tokens()}

    def __repr__(self) -> str:
        return f"<Tokenizer {self.name!r} n_vocab={self.n_vocab} pattern={self.pattern!r}>"

    # --- encoding -----------------------------------------------------------------
    def _allowed(self, text: str, allowed_special, disallowed_special) -> list[str]:
        """tiktoken's rule: raise on disallowed special text; return the allowed ones."""
        if allowed_special == "all":
            allowed = set(self._special_tokens)
        else:
            allowed = set(allowed_special)
        if disallowed_special == "all":
            disallowed = set(self._special_tokens) - allowed
        else:
            disallowed = set(disallowed_special)
        if disallowed:
            hits = [(text.find(s), s) for s in disallowed if s in text]
            if hits:
                _, tok = min(hits)
                raise ValueError(
                    f"Encountered text corresponding to disallowed special token {tok!r}.\n"
                    f"If you want this text to be encoded as a special token, pass it to `allowed_special`, "
                    f"e.g. `allowed_special={{{tok!r}, ...}}`.\n"
                    f"If you want this text to be encoded as normal text, disable the check for this token "
                    f"by passing `disallowed_special=(enc.special_tokens_set - {{{tok!r}}})`.\n"
                    f"To disable this check for all special tokens, pass `disallowed_special=()`.\n"
                )
        return sorted(s for s in allowed if s in self._core_specials)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text``; special-token text is encoded as ordinary text."""
        # The hottest call of all (one per document): the type is checked only
        # when the core refuses the argument.
        try:
            return self._core.encode_ordinary(text)
        except UnicodeEncodeError:
            return self._core.encode_ordinary(_fix_surrogates(text))
        except TypeError:
            _check_text(text)
            raise

    def encode(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
               disallowed_special: Literal["all"] | Collection[str] = "all") -> list[int]:
        """Encode ``text`` (as tiktoken: special-token text raises unless allowed or not disallowed)."""
        _check_text(text)
        allowed = self._allowed(text, allowed_special, disallowed_special)
        try:
            return self._core.encode(text, allowed)
        except UnicodeEncodeError:
            return self._core.encode(_fix_surrogates(text), allowed)

    def encode_with_unstable(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
                             disallowed_special: Literal["all"] | Collection[str] = "all"
                             ) -> tuple[list[int], list[list[int]]]:
        """tiktoken's ``encode_with_unstable``: ``(stable, completions)``.

        ``stable`` encodes a prefix of ``text`` that no text appended later can
        change; each completion is a token sequence the rest of ``text`` may
        start as once more text follows (``decode_bytes(stable + c)`` starts
        with ``text``'s bytes). The same set of completions as tiktoken (sorted
        here; tiktoken returns them in hash order). Special tokens are treated
        as in ``encode``; like tiktoken, a lone surrogate raises
        UnicodeEncodeError.
        """
        _check_text(text)
        allowed = self._allowed(text, allowed_special, disallowed_special)
        return self._core.encode_with_unstable(text, allowed, self._regex)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None, *,
                     allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
                     disallowed_special: Literal["all"] | Collection[str] = "all") -> list[list[int]]:
        """Encode many texts over ``num_threads`` threads (default: all cores); order kept."""
        texts = self._check_batch(texts)
        allowed: set[str] = set()
        for t in texts:
            allowed.update(self._allowed(t, allowed_special, disallowed_special))
        return self._core_batch(texts, sorted(allowed), num_threads)

    def encode_ordinary_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        return self._core_batch(self._check_batch(texts), [], num_threads)

    def _core_batch(self, texts: list[str], allowed: list[str], num_threads: int | None) -> list[list[int]]:
        threads = num_threads or _default_threads()
        try:
            return self._core.encode_batch(texts, allowed, threads)
        except UnicodeEncodeError:  # a lone surrogate somewhere (rare): fix those texts, then encode
            return self._core.encode_batch([_utf8_safe(t) for t in texts], allowed, threads)

    @staticmethod
    def _check_batch(texts) -> list[str]:
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be a sequence of str, not a single " + type(texts).__name__)
        texts = list(texts)
        for i, t in enumerate(texts):
            if type(t) is not str:
                _check_text(t, f"texts[{i}]")
        return texts

    def encode_to_numpy(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
                        disallowed_special: Literal["all"] | Collection[str] = "all") -> np.ndarray:
        """Encode to a NumPy array: uint16 when every id fits (n_vocab <= 65536), else uint32."""
        _check_text(text)
        allowed = self._allowed(text, allowed_special, disallowed_special)
        width = 2 if self.n_vocab <= 65536 else 4
        try:
            raw = self._core.encode_to_bytes(text, allowed, width)
        except UnicodeEncodeError:
            raw = self._core.encode_to_bytes(_fix_surrogates(text), allowed, width)
        return np.frombuffer(raw, dtype="<u2" if width == 2 else "<u4").astype(np.uint16 if width == 2 else np.uint32, copy=False)

    # --- decoding -----------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids`` concatenated (raises ValueError naming a bad id and its position)."""
        if isinstance(ids, np.ndarray):
            ids = ids.ravel().tolist() if ids.dtype.kind in "iu" else list(ids.ravel())
        return self._core.decode_bytes(ids)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decode to str; incomplete UTF-8 (a token boundary inside a character) follows ``errors``."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_stream(self, ids: Iterable[int]) -> Iterable[str]:
        """Text of a stream of ids as it comes, whole characters only: a token
        that ends inside a UTF-8 character is held back until the character is
        complete (invalid UTF-8 becomes U+FFFD, as in ``decode``)."""
        import codecs

        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for t in ids:
            text = dec.decode(self.decode_bytes([t]))
            if text:
                yield text
        tail = dec.decode(b"", final=True)
        if tail:
            yield tail

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self.token_bytes(token)

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token id (regular or special)."""
        return self._core.token_bytes(token)

    def decode_tokens_bytes(self, ids: Iterable[int]) -> list[bytes]:
        return [self.token_bytes(t) for t in ids]

    def split(self, text: str) -> list[str]:
        """Pre-tokenization alone: the pieces BPE merges within."""
        _check_text(text)
        try:
            return self._core.split(text)
        except UnicodeEncodeError:
            return self._core.split(_fix_surrogates(text))

    # --- saving and pickling ------------------------------------------------------
    def save(self, directory, format: str = "gpt2") -> list[Path]:
        """Write the vocabulary into ``directory``; returns the paths written.

        ``gpt2``: encoder.json + vocab.bpe; ``hf``: vocab.json + merges.txt (the same
        formats under HF's names); ``tiktoken``: ``<name>.tiktoken`` (regular tokens
        only: such files hold no special tokens, nor the pattern).
        ``vocab.bpe`` / ``merges.txt`` name the pre-tokenization pattern on their
        ``#version`` line when it is not GPT-2's, so ``from_files`` uses it again.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if format in ("gpt2", "hf"):
            enc, bpe = self._core.gpt2_files()
            names = ("encoder.json", "vocab.bpe") if format == "gpt2" else ("vocab.json", "merges.txt")
            atomic_write_text(d / names[0], enc)
            atomic_write_text(d / names[1], bpe)
            return [d / names[0], d / names[1]]
        if format == "tiktoken":
            path = d / f"{self.name or 'tokenizer'}.tiktoken"
            atomic_write_text(path, self._core.tiktoken_file())
            return [path]
        raise ValueError(f"unknown format {format!r} (use 'gpt2', 'hf' or 'tiktoken')")

    def __getstate__(self):
        return {
            "name": self.name,
            "pattern": self.pattern,
            "tokens": self._core.tokens(),
            "merges": self._core.merges(),
            "special_tokens": self._core.special_tokens(),
        }

    def __setstate__(self, state):
        core = _core.CoreBPE.from_parts(state["tokens"], state["merges"], state["special_tokens"], state["pattern"])
        self.__init__(core, state["name"])


def _check_pattern(pattern: str) -> None:
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pre-tokenization pattern {pattern!r} (use one of {sorted(PATTERNS)})")


def _pattern_name(pat_str: str) -> str | None:
    """The scanner that reproduces regex ``pat_str`` exactly, or None (general regex)."""
    for name in PATTERNS:
        if pat_str in (PATTERNS[name], TIKTOKEN_PATTERNS[name]):
            return name
    return None


class Encoding(Tokenizer):
    """tiktoken's ``Encoding``, name for name: ``import gptlite as tiktoken`` works.

    The same object as ``Tokenizer`` underneath (one Rust core); this class adds
    tiktoken's constructor, its exceptions (KeyError for unknown single tokens)
    and its semi-private members (``_pat_str``, ``_mergeable_ranks``,
    ``_special_tokens``, ``_encode_single_piece``).
    """

    def __init__(self, name: str, *, pat_str: str, mergeable_ranks: dict, special_tokens: dict,
                 explicit_n_vocab: int | None = None):
        pattern = _pattern_name(pat_str)
        # No scanner for this pattern: a general regex engine splits, the core merges.
        regex = _core.Regex(pat_str) if pattern is None else None
        max_token_value = max(max(mergeable_ranks.values()), max(special_tokens.values(), default=0))
        if explicit_n_vocab:
            if len(mergeable_ranks) + len(special_tokens) != explicit_n_vocab or max_token_value != explicit_n_vocab - 1:
                raise ValueError(
                    f"{name}: explicit_n_vocab={explicit_n_vocab} but there are {len(mergeable_ranks)} ranks + "
                    f"{len(special_tokens)} special tokens and the largest id is {max_token_value}")
        ranks = [(bytes(b), int(r)) for b, r in mergeable_ranks.items()]
        # in the order given: of names sharing an id, the first is what the id decodes to
        specials = [(str(k), int(v)) for k, v in special_tokens.items()]
        core = _core.CoreBPE.from_ranks(ranks, specials, pattern or "gpt2")
        Tokenizer.__init__(self, core, name)
        self._special_tokens = dict(special_tokens)
        self._pat_str = pat_str
        self._regex = regex
        self._ranks_dict = mergeable_ranks
        if regex is not None:
            # shadows Tokenizer.encode_ordinary, which the scanner patterns call
            # without a detour (it is the per-document hot path)
            self.encode_ordinary = self._encode_ordinary_regex

    @classmethod
    def _from_core(cls, name: str, core, special_tokens: dict) -> "Encoding":
        self = cls.__new__(cls)
        Tokenizer.__init__(self, core, name)
        self._special_tokens = dict(special_tokens)  # tiktoken's order
        self._pat_str = TIKTOKEN_PATTERNS[core.pattern]
        self._ranks_dict = None
        self._regex = None
        return self

    def __repr__(self) -> str:
        return f"<Encoding {self.name!r}>"

    @property
    def _mergeable_ranks(self) -> dict[bytes, int]:
        if self._ranks_dict is None:
            self._ranks_dict = self.mergeable_ranks
        return self._ranks_dict

    @property
    def max_token_value(self) -> int:
        return self._core.n_vocab - 1

    @property
    def eot_token(self) -> int:
        return self._special_tokens["<|endoftext|>"]

    def is_special_token(self, token: int) -> bool:
        return token in self._special_tokens.values()

    # --- a custom pattern without a scanner: the general regex path -------------
    def _regex_encode(self, text: str, allowed: list[str]) -> list[int]:
        return self._core.encode_regex(_utf8_safe(text), self._regex, allowed)

    def _encode_ordinary_regex(self, text: str) -> list[int]:
        return self._regex_encode(_check_text(text), [])

    def encode(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
               disallowed_special: Literal["all"] | Collection[str] = "all") -> list[int]:
        if self._regex is None:
            return Tokenizer.encode(self, text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        _check_text(text)
        return self._regex_encode(text, self._allowed(text, allowed_special, disallowed_special))

    def encode_to_numpy(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
                        disallowed_special: Literal["all"] | Collection[str] = "all") -> np.ndarray:
        if self._regex is None:
            return Tokenizer.encode_to_numpy(self, text, allowed_special=allowed_special,
                                             disallowed_special=disallowed_special)
        ids = self.encode(text, allowed_special=allowed_special, disallowed_special=disallowed_special)
        return np.asarray(ids, dtype=np.uint16 if self.n_vocab <= 65536 else np.uint32)

    def split(self, text: str) -> list[str]:
        if self._regex is None:
            return Tokenizer.split(self, text)
        return self._regex.split(_utf8_safe(_check_text(text)))

    def encode_ordinary_batch(self, text: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        if self._regex is not None:
            return [self.encode_ordinary(t) for t in self._check_batch(text)]
        return Tokenizer.encode_ordinary_batch(self, text, num_threads)

    def encode_batch(self, text: Sequence[str], *, num_threads: int = 8,
                     allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
                     disallowed_special: Literal["all"] | Collection[str] = "all") -> list[list[int]]:
        if self._regex is not None:
            return [self.encode(t, allowed_special=allowed_special, disallowed_special=disallowed_special)
                    for t in self._check_batch(text)]
        return Tokenizer.encode_batch(self, text, num_threads, allowed_special=allowed_special,
                                      disallowed_special=disallowed_special)

    def _lookup(self) -> dict[bytes, int]:
        table = self.__dict__.get("_by_bytes")
        if table is None:
            table = {b: i for b, i in self._core.tokens()}
            table.update((s.encode("utf-8"), i) for s, i in self._special_tokens.items())
            self.__dict__["_by_bytes"] = table
        return table

    def encode_single_token(self, text_or_bytes: str | bytes) -> int:
        """The id of the token whose bytes are exactly ``text_or_bytes`` (special tokens too); KeyError if none."""
        key = text_or_bytes.encode("utf-8") if isinstance(text_or_bytes, str) else bytes(text_or_bytes)
        try:
            return self._lookup()[key]
        except KeyError:
            raise KeyError(key) from None

    def _encode_single_piece(self, text_or_bytes: str | bytes) -> list[int]:
        """BPE of one piece without the pattern split (tiktoken's private helper)."""
        data = text_or_bytes.encode("utf-8") if isinstance(text_or_bytes, str) else bytes(text_or_bytes)
        key = self._lookup()
        if data in key and data.decode("utf-8", "replace") not in self._special_tokens:
            return [key[data]]
        # Merge by rank over the piece's bytes, as BPE defines it.
        parts = [bytes([c]) for c in data]
        while len(parts) > 1:
            best = None
            for i in range(len(parts) - 1):
                r = key.get(parts[i] + parts[i + 1])
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [key[p] for p in parts]

    def decode_single_token_bytes(self, token: int) -> bytes:
        try:
            return self._core.token_bytes(token)
        except ValueError:
            raise KeyError(token) from None

    def decode_tokens_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        return [self.decode_single_token_bytes(t) for t in tokens]

    def decode_with_offsets(self, tokens: Sequence[int]) -> tuple[str, list[int]]:
        token_bytes = self.decode_tokens_bytes(tokens)
        text_len = 0
        offsets = []
        for token in token_bytes:
            offsets.append(max(0, text_len - (0x80 <= token[0] < 0xC0)))
            text_len += sum(1 for c in token if not 0x80 <= c < 0xC0)
        return b"".join(token_bytes).decode("utf-8", errors="strict"), offsets

    def decode_batch(self, batch: Sequence[Sequence[int]], *, errors: str = "replace", num_threads: int = 8) -> list[str]:
        return [self.decode(t, errors=errors) for t in batch]

    def decode_bytes_batch(self, batch: Sequence[Sequence[int]], *, num_threads: int = 8) -> list[bytes]:
        return [self.decode_bytes(t) for t in batch]

    def token_byte_values(self) -> list[bytes]:
        return [b for b, _ in self._core.tokens()]

    def __getstate__(self):
        from gptlite.tokenizer import encodings

        # Registered encodings pickle by name, as in tiktoken.
        if encodings._ENCODINGS.get(self.name) is self:
            return self.name
        return {"name": self.name, "pat_str": self._pat_str, "mergeable_ranks": self._mergeable_ranks,
                "special_tokens": self._special_tokens}

    def __setstate__(self, value):
        if isinstance(value, str):
            from gptlite.tokenizer.encodings import get_encoding

            self.__dict__ = get_encoding(value).__dict__
            return
        self.__init__(**value)


def _checked_specials(special_tokens: dict, where: str) -> list:
    # PyO3 would raise OverflowError (or TypeError) for an id that is not a u32
    return sorted((str(s), token_id(i, where, f"id of {s!r}")) for s, i in special_tokens.items())


def _max_rank(path: Path) -> int:
    best = -1
    try:
        with open(path, "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    best = max(best, int(parts[1]))
    except FileNotFoundError:
        raise FileNotFoundError(f"vocabulary file not found: {path}") from None
    return best


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gptlite" / "gpt2"


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.read()
    except (urllib.error.URLError, OSError) as exc:
        from gptlite.tokenizer.load import DownloadError

        raise DownloadError(
            f"could not download GPT-2's tokenizer files ({url}: {exc}). If you are offline, put encoder.json "
            f"and vocab.bpe in a directory and set GPTLITE_GPT2_DIR to it (or pass cache_dir=...)."
        ) from exc
