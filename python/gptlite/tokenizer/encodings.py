"""OpenAI's encodings as data, one definition each, behind tiktoken's API:
``get_encoding``, ``encoding_for_model``, ``list_encoding_names``.

Pattern strings come from the Rust core (``_core.patterns()``), which holds the
scanner for each; only file locations, hashes and special tokens live here.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"

_BLOB = "https://openaipublic.blob.core.windows.net"
GPT2_FILES = (
    (f"{_BLOB}/gpt-2/encodings/main/encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    (f"{_BLOB}/gpt-2/encodings/main/vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
)


@dataclass(frozen=True)
class EncodingSpec:
    name: str
    pattern: str  # a scanner name of the Rust core
    special_tokens: dict = field(hash=False)
    tiktoken_file: tuple | None = None  # (url, sha256) of a .tiktoken file
    gpt2_files: bool = False  # GPT-2's encoder.json + vocab.bpe (tried when tiktoken_file is not at hand)
    explicit_n_vocab: int | None = None


def _harmony_specials() -> dict[str, int]:
    # tiktoken_ext/openai_public.py's o200k_harmony, id for id.
    s = {
        ENDOFTEXT: 199999, ENDOFPROMPT: 200018,
        "<|startoftext|>": 199998, "<|reserved_200000|>": 200000, "<|reserved_200001|>": 200001,
        "<|return|>": 200002, "<|constrain|>": 200003, "<|reserved_200004|>": 200004,
        "<|channel|>": 200005, "<|start|>": 200006, "<|end|>": 200007, "<|message|>": 200008,
        "<|reserved_200009|>": 200009, "<|reserved_200010|>": 200010, "<|reserved_200011|>": 200011,
        "<|call|>": 200012,
    }
    s.update({f"<|reserved_{i}|>": i for i in range(200013, 201088)})
    return s


_O200K_FILE = (f"{_BLOB}/encodings/o200k_base.tiktoken", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d")

SPECS: dict[str, EncodingSpec] = {s.name: s for s in [
    EncodingSpec("gpt2", "gpt2", {ENDOFTEXT: 50256}, gpt2_files=True, explicit_n_vocab=50257),
    EncodingSpec("r50k_base", "gpt2", {ENDOFTEXT: 50256},
                 tiktoken_file=(f"{_BLOB}/encodings/r50k_base.tiktoken",
                                "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),
                 gpt2_files=True, explicit_n_vocab=50257),
    EncodingSpec("cl100k_base", "cl100k",
                 {ENDOFTEXT: 100257, FIM_PREFIX: 100258, FIM_MIDDLE: 100259, FIM_SUFFIX: 100260, ENDOFPROMPT: 100276},
                 tiktoken_file=(f"{_BLOB}/encodings/cl100k_base.tiktoken",
                                "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7")),
    EncodingSpec("o200k_base", "o200k", {ENDOFTEXT: 199999, ENDOFPROMPT: 200018}, tiktoken_file=_O200K_FILE),
    EncodingSpec("o200k_harmony", "o200k", _harmony_specials(), tiktoken_file=_O200K_FILE),
]}

# tiktoken's model.py tables (p50k models map to names this package cannot load).
MODEL_PREFIX_TO_ENCODING: dict[str, str] = {
    "o1-": "o200k_base", "o3-": "o200k_base", "o4-mini-": "o200k_base", "gpt-5": "o200k_base",
    "gpt-4.5-": "o200k_base", "gpt-4.1-": "o200k_base", "chatgpt-4o-": "o200k_base", "gpt-4o-": "o200k_base",
    "gpt-4-": "cl100k_base", "gpt-3.5-turbo-": "cl100k_base", "gpt-35-turbo-": "cl100k_base",
    "gpt-oss-": "o200k_harmony", "ft:gpt-4o": "o200k_base", "ft:gpt-4": "cl100k_base",
    "ft:gpt-3.5-turbo": "cl100k_base", "ft:davinci-002": "cl100k_base", "ft:babbage-002": "cl100k_base",
}
MODEL_TO_ENCODING: dict[str, str] = {
    "o1": "o200k_base", "o3": "o200k_base", "o4-mini": "o200k_base", "gpt-5": "o200k_base",
    "gpt-4.1": "o200k_base", "gpt-4o": "o200k_base", "gpt-oss": "o200k_harmony",
    "gpt-4": "cl100k_base", "gpt-3.5-turbo": "cl100k_base", "gpt-3.5": "cl100k_base", "gpt-35-turbo": "cl100k_base",
    "davinci-002": "cl100k_base", "babbage-002": "cl100k_base", "text-embedding-ada-002": "cl100k_base",
    "text-embedding-3-small": "cl100k_base", "text-embedding-3-large": "cl100k_base",
    "text-davinci-003": "p50k_base", "text-davinci-002": "p50k_base", "text-davinci-001": "r50k_base",
    "text-curie-001": "r50k_base", "text-babbage-001": "r50k_base", "text-ada-001": "r50k_base",
    "davinci": "r50k_base", "curie": "r50k_base", "babbage": "r50k_base", "ada": "r50k_base",
    "code-davinci-002": "p50k_base", "code-davinci-001": "p50k_base", "code-cushman-002": "p50k_base",
    "code-cushman-001": "p50k_base", "davinci-codex": "p50k_base", "cushman-codex": "p50k_base",
    "text-davinci-edit-001": "p50k_edit", "code-davinci-edit-001": "p50k_edit",
    "text-similarity-davinci-001": "r50k_base", "text-similarity-curie-001": "r50k_base",
    "text-similarity-babbage-001": "r50k_base", "text-similarity-ada-001": "r50k_base",
    "text-search-davinci-doc-001": "r50k_base", "text-search-curie-doc-001": "r50k_base",
    "text-search-babbage-doc-001": "r50k_base", "text-search-ada-doc-001": "r50k_base",
    "code-search-babbage-code-001": "r50k_base", "code-search-ada-code-001": "r50k_base",
    "gpt2": "gpt2", "gpt-2": "gpt2",
}
UNAVAILABLE = {"p50k_base", "p50k_edit"}

_ENCODINGS: dict = {}
_LOCK = threading.RLock()


def list_encoding_names() -> list[str]:
    return list(SPECS)


def _core_for(spec: EncodingSpec):
    from gptlite import _core
    from gptlite.tokenizer.load import cache_path, cached_file

    # o200k_harmony names id 200018 twice (<|endofprompt|> and <|reserved_200018|>):
    # both encode to it; it decodes to the first in tiktoken's order.
    specials = list(spec.special_tokens.items())
    if spec.tiktoken_file and (not spec.gpt2_files or cache_path(spec.tiktoken_file[0]).is_file()):
        try:
            path = cached_file(*spec.tiktoken_file)
            return _core.CoreBPE.from_tiktoken_file(str(path), specials, spec.pattern)
        except RuntimeError:  # a DownloadError (or a bad cached file): for gpt2 / r50k_base GPT-2's own files serve as well
            if not spec.gpt2_files:
                raise
    enc, bpe = (cached_file(url, sha) for url, sha in GPT2_FILES)
    core = _core.CoreBPE.from_gpt2_files(str(enc), str(bpe), spec.pattern)
    if sorted(core.special_tokens()) != sorted(specials):
        raise ValueError(f"{enc}: special tokens {core.special_tokens()} differ from {spec.name}'s {specials}")
    return core


def get_encoding(encoding_name: str):
    """The encoding named ``encoding_name`` (loaded once, then shared)."""
    from gptlite.tokenizer.encoding import Encoding

    with _LOCK:
        if encoding_name in _ENCODINGS:
            return _ENCODINGS[encoding_name]
        spec = SPECS.get(encoding_name)
        if spec is None:
            if encoding_name in UNAVAILABLE:
                raise ValueError(f"encoding {encoding_name!r} is not available in gptlite "
                                 f"(available: {list_encoding_names()})")
            raise ValueError(f"Unknown encoding {encoding_name}. Plugins found: ['gptlite']\n"
                             f"Available encodings: {list_encoding_names()}")
        enc = Encoding._from_core(spec.name, _core_for(spec), spec.special_tokens)
        _ENCODINGS[encoding_name] = enc
        return enc


def encoding_name_for_model(model_name: str) -> str:
    name = MODEL_TO_ENCODING.get(model_name)
    if name is None:
        for prefix, enc in MODEL_PREFIX_TO_ENCODING.items():
            if model_name.startswith(prefix):
                name = enc
                break
    if name is None:
        raise KeyError(f"Could not automatically map {model_name} to a tokeniser. "
                       "Please use `tiktoken.get_encoding` to explicitly get the tokeniser you expect.")
    return name


def encoding_for_model(model_name: str):
    name = encoding_name_for_model(model_name)
    if name in UNAVAILABLE:
        raise ValueError(f"model {model_name!r} uses {name}, which is not available in gptlite "
                         f"(its vocabulary is not shipped or cached here; available: {list_encoding_names()})")
    return get_encoding(name)
