"""Token shards on disk and a reproducible, memory-mapped batch sampler.

``prepare(...)`` tokenizes documents (text files, or JSONL with a text field)
with the Rust tokenizer and writes::

    out_dir/train.bin  out_dir/val.bin    raw little-endian uint16 (n_vocab <= 65536) or uint32
    out_dir/meta.json                     dtype, token/document counts, tokenizer info
    out_dir/tokenizer/                    the tokenizer (encoder.json + vocab.bpe)

Documents are joined with ``<|endoftext|>`` (one before each document, as
GPT-2's training data marks document starts). The validation split is chosen by
document, deterministically from ``seed``; when there is a single document
(one text file), its last ``val_fraction`` of tokens is held out instead.

``Batches`` draws (B, T+1) windows uniformly from a split. Batch ``k`` depends
only on (seed, k), so the data position is one integer: save it, restore it,
and the sampler continues exactly where it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlite.fileio import atomic_open, atomic_write_text, read_utf8

META = "meta.json"
FORMAT = "gptlite-tokens"


# --- reading inputs ---------------------------------------------------------------------
def read_documents(paths, text_field: str | None = None) -> list[tuple[str, str]]:
    """[(source, text)] from text files (one document each) or JSONL files.

    A ``.jsonl`` file (or any file when ``text_field`` is given) holds one JSON object
    a line; each object's ``text_field`` (default "text") is one document.
    """
    if not paths:
        raise ValueError("no input files given")
    docs: list[tuple[str, str]] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"input file not found: {p}")
        if p.is_dir():
            raise ValueError(f"input {p} is a directory: pass the text files inside it")
        is_jsonl = text_field is not None or p.suffix.lower() in (".jsonl", ".ndjson")
        raw = read_utf8(p)
        if is_jsonl:
            field = text_field or "text"
            n = 0
            for lineno, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{p}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or field not in obj:
                    raise ValueError(f"{p}:{lineno}: no {field!r} field in this JSON line")
                text = obj[field]
                if not isinstance(text, str):
                    raise ValueError(f"{p}:{lineno}: field {field!r} is {type(text).__name__}, expected a string")
                if text:
                    docs.append((f"{p}:{lineno}", text))
                    n += 1
            if n == 0:
                raise ValueError(f"{p}: no non-empty documents in field {field!r}")
        else:
            if not raw.strip():
                raise ValueError(f"input file is empty: {p}")
            docs.append((str(p), raw))
    return docs


def load_tokenizer(spec):
    """A Tokenizer from "gpt2", "default" (the shipped model's) or a directory/file."""
    from gptlite.tokenizer.encoding import Tokenizer

    if not isinstance(spec, str):
        return spec  # already a Tokenizer
    if spec == "gpt2":
        return Tokenizer.gpt2()
    if spec == "default":
        from gptlite.engine.checkpoint import DEFAULT_MODEL_DIR

        return Tokenizer.from_files(DEFAULT_MODEL_DIR)
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"tokenizer not found: {spec} (expected 'gpt2', 'default' or a directory with encoder.json + vocab.bpe)")
    return Tokenizer.from_files(p)


def token_dtype(n_vocab: int):
    return np.dtype("<u2") if n_vocab <= 65536 else np.dtype("<u4")


# --- prepare ------------------------------------------------------------------------------
def prepare(paths, tokenizer, out_dir, val_fraction: float = 0.1, text_field: str | None = None,
            seed: int = 1337, batch_docs: int = 256, num_threads: int | None = None) -> dict:
    """Tokenize ``paths`` into train/val token shards in ``out_dir``; returns the meta dict."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    tok = load_tokenizer(tokenizer)
    eot = tok.eot_token
    if eot is None:
        raise ValueError("the tokenizer has no <|endoftext|> token to separate documents")
    docs = read_documents(paths, text_field)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tok.n_vocab)

    n = len(docs)
    is_val = np.zeros(n, dtype=bool)
    tail_split = n == 1 and val_fraction > 0
    if n > 1 and val_fraction > 0:
        k = max(1, int(round(n * val_fraction)))
        if k >= n:
            raise ValueError(f"val_fraction {val_fraction} leaves no training documents out of {n}")
        rng = np.random.default_rng(seed)
        is_val[rng.choice(n, size=k, replace=False)] = True

    counts = {"train": [0, 0], "val": [0, 0]}  # tokens, documents
    max_id = {"train": -1, "val": -1}  # recorded so `train` can check a shard against its vocabulary at start
    with atomic_open(out / "train.bin", "wb") as ftrain, atomic_open(out / "val.bin", "wb") as fval:
        files = {"train": ftrain, "val": fval}
        for start in range(0, n, batch_docs):
            chunk = docs[start:start + batch_docs]
            ids_batch = tok.encode_ordinary_batch([t for _, t in chunk], num_threads=num_threads)
            for j, ids in enumerate(ids_batch):
                arr = np.empty(len(ids) + 1, dtype=dtype)
                arr[0] = eot
                arr[1:] = ids
                if tail_split:
                    cut = len(arr) - int(round(len(arr) * val_fraction))
                    if cut <= 1 or cut >= len(arr):
                        raise ValueError(f"{chunk[j][0]}: too short ({len(arr)} tokens) to hold out {val_fraction:.0%} for validation")
                    parts = {"train": arr[:cut], "val": np.concatenate([[eot], arr[cut:]]).astype(dtype)}
                else:
                    parts = {"val" if is_val[start + j] else "train": arr}
                for split, a in parts.items():
                    files[split].write(a.tobytes())
                    counts[split][0] += len(a)
                    if len(a):
                        max_id[split] = max(max_id[split], int(a.max()))
                    counts[split][1] += 1
    if counts["train"][0] == 0:
        raise ValueError("no training tokens were produced")
    tok_dir = out / "tokenizer"
    tok.save(tok_dir, format="gpt2")
    meta = {
        "format": FORMAT,
        "version": 1,
        "dtype": dtype.name,
        "n_vocab": int(tok.n_vocab),
        "eot_token": int(eot),
        "tokenizer": {"dir": "tokenizer", "pattern": getattr(tok, "pattern", "gpt2"), "source": str(tokenizer) if isinstance(tokenizer, (str, Path)) else getattr(tok, "name", "custom")},
        "val_fraction": val_fraction,
        "seed": seed,
        "split_method": "tail" if tail_split else "documents",
        "sources": [str(p) for p in paths],
        "splits": {s: {"file": f"{s}.bin", "tokens": c[0], "documents": c[1], "max_id": max_id[s]} for s, c in counts.items()},
        "bytes": int(sum(len(t.encode("utf-8")) for _, t in docs)),
    }
    atomic_write_text(out / META, json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(data_dir) -> dict:
    d = Path(data_dir)
    path = d / META
    if not path.exists():
        raise FileNotFoundError(f"{d} is not a prepared data directory (no {META}); run `gptlite prepare` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a gptlite token-data meta file")
    return meta


# --- loading ------------------------------------------------------------------------------
class TokenData:
    """One split of a prepared directory, memory-mapped (read-only)."""

    def __init__(self, data_dir, split: str = "train"):
        self.dir = Path(data_dir)
        self.meta = read_meta(self.dir)
        if split not in self.meta["splits"]:
            raise ValueError(f"{self.dir}: no split {split!r} (have {', '.join(self.meta['splits'])})")
        info = self.meta["splits"][split]
        path = self.dir / info["file"]
        if not path.exists():
            raise FileNotFoundError(f"token file missing: {path}")
        dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        size = path.stat().st_size
        if size != info["tokens"] * dtype.itemsize:
            raise ValueError(f"{path}: {size} bytes, but {META} says {info['tokens']} tokens of {dtype.name}")
        self.split = split
        self.n_vocab = int(self.meta["n_vocab"])
        self.tokens = np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class Batches:
    """Reproducible (B, T+1) windows from a TokenData: batch ``k`` depends on (seed, k) only."""

    data: TokenData
    batch_size: int
    block_size: int
    seed: int = 0
    position: int = 0  # index of the next batch `next()` returns

    def __post_init__(self):
        if self.batch_size < 1 or self.block_size < 1:
            raise ValueError("batch_size and block_size must be >= 1")
        if len(self.data) < self.block_size + 1:
            raise ValueError(
                f"{self.data.split} split of {self.data.dir} has {len(self.data)} tokens, fewer than one window "
                f"of block_size+1 = {self.block_size + 1}: use more data or a shorter context"
            )

    def batch(self, k: int):
        """(x, y): int64 arrays of shape (B, T); y is x shifted by one token."""
        T = self.block_size
        rng = np.random.default_rng([self.seed, k])
        starts = rng.integers(0, len(self.data) - T, size=self.batch_size)
        win = np.stack([np.asarray(self.data.tokens[s:s + T + 1], dtype=np.int64) for s in starts])
        return win[:, :-1], win[:, 1:]

    def next(self):
        x, y = self.batch(self.position)
        self.position += 1
        return x, y

    def state(self) -> dict:
        return {"seed": self.seed, "position": self.position}

    def load_state(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.position = int(state["position"])
