"""Checkpoints: safetensors on NumPy, the HF directory layout, from_pretrained.

A model directory is what ``transformers``' ``save_pretrained`` writes:
``config.json`` + ``model.safetensors`` (+ optionally the tokenizer files), so
checkpoints move both ways between gptlite and transformers.

The safetensors format (https://github.com/huggingface/safetensors):

    [8 bytes: N, little-endian u64][N bytes: JSON header][byte buffer]
    header = {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
              "__metadata__": {str: str}}      # offsets relative to the byte buffer

We read it ourselves (no torch, no safetensors package) through a memory map,
so a 500 MB checkpoint is never read into one Python bytes object, and we
validate everything the reference implementation validates: a bad file raises
ValueError naming the file and the tensor. Pickled PyTorch ``.bin`` files are
never opened: unpickling runs arbitrary code.
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
from pathlib import Path

import numpy as np

from gptlite.fileio import atomic_open, atomic_write_text, publish_modes, staged_dir, swap_dir

# --------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------
# safetensors dtype name -> numpy dtype (little-endian). BF16 has no NumPy dtype:
# it is stored as uint16 and widened to float32 on read (bf16 is the top half of
# an f32, so a 16-bit left shift is exact).
_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("u1"), "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"), "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"), "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}
# Valid in the format but with no lossless NumPy representation here.
_UNSUPPORTED_DTYPES = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "I4", "U4"}
_NP_TO_ST = {
    np.dtype(np.bool_): "BOOL",
    np.dtype("u1"): "U8", np.dtype("i1"): "I8", np.dtype("u2"): "U16", np.dtype("i2"): "I16",
    np.dtype("u4"): "U32", np.dtype("i4"): "I32", np.dtype("u8"): "U64", np.dtype("i8"): "I64",
    np.dtype("f2"): "F16", np.dtype("f4"): "F32", np.dtype("f8"): "F64",
}
# The reference implementation refuses headers above 100 MB (a denial-of-service guard).
MAX_HEADER_SIZE = 100_000_000


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bit patterns, rounding to nearest even (as torch does)."""
    x = np.asarray(x, dtype=np.float32)
    bits = np.require(x, requirements="C").view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    # NaN must stay NaN: rounding could carry a NaN's payload into the exponent.
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def _parse_header(path: Path, buf) -> tuple[dict, dict, int]:
    """Validate the header of a safetensors file held in ``buf``.

    Returns (entries: name -> (dtype_name, shape, begin, end), metadata, data_start).
    """
    size = len(buf)
    if size < 8:
        raise ValueError(f"{path}: not a safetensors file: {size} bytes, too short for the 8-byte header length (truncated?)")
    n = int.from_bytes(buf[:8], "little")
    if n > MAX_HEADER_SIZE:
        raise ValueError(f"{path}: corrupt safetensors header: header length {n} exceeds the {MAX_HEADER_SIZE}-byte limit")
    if 8 + n > size:
        raise ValueError(f"{path}: corrupt or truncated safetensors file: header length {n} but the file has only {size - 8} bytes after it")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: corrupt safetensors header: JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: corrupt safetensors header: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header: expected a JSON object, found {type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(f"{path}: corrupt safetensors header: __metadata__ must map strings to strings")
    data_start = 8 + n
    buf_len = size - data_start
    entries = {}
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise ValueError(f"{where}: corrupt header entry (needs dtype, shape, data_offsets): {info!r}")
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dt in _UNSUPPORTED_DTYPES:
            raise ValueError(f"{where}: dtype {dt} is not supported by gptlite (supported: {', '.join(_DTYPES)})")
        if dt not in _DTYPES:
            raise ValueError(f"{where}: unknown dtype {dt!r} (supported: {', '.join(_DTYPES)})")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"{where}: corrupt shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise ValueError(f"{where}: corrupt data_offsets {offs!r}")
        begin, end = offs
        if not 0 <= begin <= end <= buf_len:
            raise ValueError(f"{where}: data_offsets [{begin}, {end}] out of range: the data buffer holds {buf_len} bytes (truncated file?)")
        nbytes = math.prod(shape) * _DTYPES[dt].itemsize  # Python ints: a forged shape cannot overflow int64
        if nbytes != end - begin:
            raise ValueError(f"{where}: shape {shape} x {dt} needs {nbytes} bytes but data_offsets [{begin}, {end}] span {end - begin}")
        entries[name] = (dt, tuple(shape), begin, end)
    # As the reference: the buffer is covered exactly, no overlaps, no holes (no polyglot files).
    pos, prev = 0, None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin < pos:
            raise ValueError(f"{path}: tensor {name!r} data_offsets [{begin}, {end}] overlap tensor {prev!r} (which ends at {pos})")
        if begin > pos:
            raise ValueError(f"{path}: tensor {name!r} starts at {begin} but the previous data ends at {pos}: a hole in the data buffer")
        pos, prev = end, name
    if pos != buf_len:
        raise ValueError(f"{path}: the tensors cover {pos} bytes of a {buf_len}-byte data buffer: trailing bytes (corrupt file)")
    return entries, metadata, data_start


def _open_map(path: Path):
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_safetensors_metadata(path) -> dict:
    """The ``__metadata__`` dict of a safetensors file (strings to strings)."""
    path = Path(path)
    buf = _open_map(path)
    return _parse_header(path, buf)[1]


def read_safetensors(path, names=None) -> dict:
    """Read a safetensors file into a dict of NumPy arrays.

    Arrays are read-only views of a memory map (no copy) except BF16 tensors,
    which are widened to float32. ``names`` restricts the tensors returned.
    """
    path = Path(path)
    buf = _open_map(path)
    entries, _, start = _parse_header(path, buf)
    out = {}
    for name, (dt, shape, begin, end) in entries.items():
        if names is not None and name not in names:
            continue
        count = (end - begin) // _DTYPES[dt].itemsize
        if count == 0:
            arr = np.zeros(shape, dtype=_DTYPES[dt])
        else:
            arr = np.frombuffer(buf, dtype=_DTYPES[dt], count=count, offset=start + begin).reshape(shape)
        out[name] = bf16_to_float32(arr) if dt == "BF16" else arr
    return out


def _as_storable(name, arr, dtype):
    """(safetensors dtype name, contiguous little-endian numpy array) for one tensor."""
    from gptlite.engine.backend import to_numpy

    a = to_numpy(arr) if not isinstance(arr, np.ndarray) else arr
    a = np.asarray(a)
    if dtype is not None and a.dtype.kind == "f":
        if dtype in ("bfloat16", "bf16"):
            return "BF16", float32_to_bf16(a.astype(np.float32, copy=False))
        a = a.astype(np.dtype(dtype), copy=False)
    st = _NP_TO_ST.get(a.dtype.newbyteorder("=") if a.dtype.byteorder not in "=|" else a.dtype)
    if st is None:
        raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be stored in safetensors")
    # (not ascontiguousarray: it turns 0-d scalars into 1-d arrays)
    return st, np.require(a.astype(a.dtype.newbyteorder("<"), copy=False), requirements="C")


def write_safetensors(path, tensors: dict, metadata: dict | None = None, dtype: str | None = None) -> None:
    """Write ``tensors`` (name -> array, NumPy or CuPy) to ``path`` atomically.

    ``dtype`` ("float16" | "bfloat16" | "float32" | None) converts floating
    tensors on the way out. The header is padded with spaces to a multiple of
    8 bytes, like the reference, so every tensor stays 8-byte aligned when mapped.
    """
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("safetensors metadata must map strings to strings")
    stored = {}
    for name, arr in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        stored[name] = _as_storable(name, arr, dtype)
    # Largest alignment first, then by name (the reference's order): keeps every tensor aligned.
    order = sorted(stored, key=lambda k: (-stored[k][1].dtype.itemsize, k))
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    pos = 0
    for name in order:
        st, a = stored[name]
        header[name] = {"dtype": st, "shape": list(a.shape), "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    with atomic_open(path, "wb") as f:
        f.write(len(hbytes).to_bytes(8, "little"))
        f.write(hbytes)
        for name in order:
            a = stored[name][1]
            if a.nbytes:
                f.write(memoryview(a.reshape(-1)).cast("B"))


# --------------------------------------------------------------------------------
# HF model directories
# --------------------------------------------------------------------------------
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_TOKENIZER_FILES = ("encoder.json", "vocab.bpe", "vocab.json", "merges.txt")
# GPT-1 (openai-gpt) names -> ours. Everything else is named as GPT-2.
_GPT1_TO_GPT2 = {"tokens_embed.weight": "wte.weight", "positions_embed.weight": "wpe.weight"}
_GPT2_TO_GPT1 = {v: k for k, v in _GPT1_TO_GPT2.items()}


def expected_shapes(config) -> dict:
    """Our parameter names -> shapes for ``config`` (the contract in docs/design.md)."""
    from gptlite.engine.model import param_shapes

    return {k: tuple(v) for k, v in param_shapes(config).items()}


def _is_attn_buffer(name: str) -> bool:
    # HF's causal-mask buffers (h.{i}.attn.bias of shape (1,1,P,P), attn.masked_bias): not parameters.
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "h" and parts[2] == "attn" and parts[3] in ("bias", "masked_bias")


def _check_hf_config(cfg: dict, config_path: Path) -> None:
    """Refuse config.json options that describe a model gptlite does not implement."""
    def bad(key, why):
        raise ValueError(f"{config_path}: {key}={cfg.get(key)!r} {why}")

    # model_type and the activation are checked by GPTConfig.from_hf_dict
    if cfg.get("tie_word_embeddings", True) is False:
        bad("tie_word_embeddings", "is not supported: gptlite's LM head is tied to wte")
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if cfg.get(key):
            bad(key, "is not supported by gptlite")
    if cfg.get("scale_attn_weights", True) is False:
        bad("scale_attn_weights", "is not supported: gptlite scales attention by 1/sqrt(head size)")


def _normalize_names(raw: dict, weights_path: Path, layout: str, wants_gpt1: bool) -> dict:
    """Map the names found in a checkpoint to ours; drop buffers and a tied lm_head."""
    out = {}
    lm_head = None
    has_gpt1 = has_gpt2 = False
    for name, arr in raw.items():
        short = name[len("transformer."):] if name.startswith("transformer.") else name
        if short == "lm_head.weight":
            lm_head = (name, arr)
            continue
        if _is_attn_buffer(short):
            continue
        if short in _GPT1_TO_GPT2:
            has_gpt1 = True
            short = _GPT1_TO_GPT2[short]
        elif short in _GPT2_TO_GPT1:
            has_gpt2 = True
        if short in out:
            raise ValueError(f"{weights_path}: tensor {name!r} appears twice (with and without the 'transformer.' prefix)")
        out[short] = arr
    if has_gpt1 and has_gpt2:
        raise ValueError(f"{weights_path}: mixes GPT-1 (tokens_embed/positions_embed) and GPT-2 (wte/wpe) tensor names")
    if has_gpt1 and not wants_gpt1:
        raise ValueError(f"{weights_path}: tensors use GPT-1 names (tokens_embed) but config.json says model_type 'gpt2'")
    if has_gpt2 and wants_gpt1:
        raise ValueError(f"{weights_path}: tensors use GPT-2 names (wte/wpe) but config.json says model_type 'openai-gpt'")
    if lm_head is not None:
        name, head = lm_head
        wte = out.get("wte.weight")
        if wte is None or head.shape != wte.shape or not np.array_equal(head, wte):
            raise ValueError(f"{weights_path}: tensor {name!r} differs from the token embedding: "
                             "untied LM heads are not supported (gptlite ties the head to wte)")
    return out


def _read_config(path: Path) -> dict:
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (a model directory holds config.json + {WEIGHTS_NAME})")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{cfg_path}: not valid JSON (nested too deeply)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object")
    return cfg


def read_vocab_size(path) -> int:
    """The vocabulary size in a model directory's config.json (no weights read)."""
    from gptlite.engine.model import GPTConfig

    return GPTConfig.from_hf_dict(_read_config(Path(path))).vocab_size


def _weights_path(path: Path) -> Path:
    wp = path / WEIGHTS_NAME
    if wp.is_file():
        return wp
    bins = sorted(p.name for p in path.glob("*.bin"))
    if bins:
        raise ValueError(
            f"{path}: only {', '.join(bins)} found, which gptlite refuses to load: PyTorch .bin files are pickles and "
            f"unpickling can run arbitrary code. Convert it once where you trust it "
            f"(transformers: AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)) to get {WEIGHTS_NAME}")
    if list(path.glob("model-*-of-*.safetensors")):
        raise ValueError(f"{path}: sharded safetensors checkpoints are not supported; save with a larger max_shard_size")
    raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME}")


def load_params(path, dtype="float32"):
    """(GPTConfig, params: name -> numpy array of ``dtype``) from a model directory, validated."""
    config, params, wp = _checked_tensors(path)
    expected = expected_shapes(config)
    np_dtype = np.dtype(dtype)
    out = {}
    for name in expected:
        a = params[name]
        # One copy out of the memory map, upcasting f16/bf16 storage: params are owned and writable.
        out[name] = np.array(a, dtype=np_dtype, copy=True)
        if not np.isfinite(out[name]).all():
            raise ValueError(f"{wp}: tensor {name!r} holds NaN or infinite values")
    return config, out


def _checked_tensors(path):
    """(GPTConfig, memory-mapped tensors, weights path): config.json and the
    safetensors header validated against each other, nothing copied -- cheap
    enough to vet a download before it enters the cache."""
    from gptlite.engine.model import GPTConfig

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a model directory")
    cfg = _read_config(path)
    cfg_path = path / CONFIG_NAME
    _check_hf_config(cfg, cfg_path)
    try:
        config = GPTConfig.from_hf_dict(cfg)
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{cfg_path}: invalid model config: {exc}") from None
    wp = _weights_path(path)
    raw = read_safetensors(wp)
    params = _normalize_names(raw, wp, config.layout, wants_gpt1=config.layout == "gpt1")
    expected = expected_shapes(config)
    for name, shape in expected.items():
        if name not in params:
            raise ValueError(f"{wp}: missing tensor {name!r} (expected shape {shape} for the model in {CONFIG_NAME})")
        found = params[name].shape
        if found != shape:
            raise ValueError(f"{wp}: tensor {name!r} has shape {tuple(found)} but {CONFIG_NAME} implies {shape} "
                             "(config.json does not match the tensors)")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise ValueError(f"{wp}: unexpected tensor {extra[0]!r}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
                         + f" for the model described by {CONFIG_NAME} (n_layer={config.n_layer}, layout={config.layout})")
    for name in expected:
        if params[name].dtype.kind != "f":
            raise ValueError(f"{wp}: tensor {name!r} has dtype {params[name].dtype}, expected a floating dtype (F32/F16/BF16/F64)")
    return config, params, wp


def load_model(path, device=None, dtype="float32", quantize=None):
    """A GPT from an HF-layout directory (config.json + model.safetensors).

    ``quantize="int8"``: per-channel int8 weights for every linear layer and
    the tied head, quantized at load time (CPU, float32 activations; see
    gptlite.engine.quant)."""
    from gptlite.engine.model import GPT

    if quantize is not None:
        from gptlite.engine.quant import QUANTIZE_CHOICES

        if quantize not in QUANTIZE_CHOICES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)} or None, got {quantize!r}")
        if device not in (None, "cpu"):
            raise ValueError(f"quantize={quantize!r} runs on the CPU only, got device={device!r}")
        if dtype == "bfloat16" or np.dtype(dtype) != np.float32:
            raise ValueError(f"quantize={quantize!r} computes in float32, got dtype={dtype!r}")
        device = "cpu"
    # bfloat16 is mixed precision: float32 weights under bf16 matmuls
    config, params = load_params(path, dtype="float32" if dtype == "bfloat16" else dtype)
    model = GPT(config, params=params, device=device, dtype=dtype)
    if quantize is not None:
        from gptlite.engine.quant import quantize_model

        del params  # the float copies go as each weight is replaced
        quantize_model(model, quantize)
    return model


def load_tokenizer(path):
    """The tokenizer saved in a model directory ("default" or a hub name are
    resolved as in from_pretrained), or None when it holds none."""
    path = Path(path) if Path(path).is_dir() else resolve_model_dir(path)
    if (path / "encoder.json").is_file() or (path / "vocab.json").is_file():
        from gptlite.tokenizer.encoding import Tokenizer

        return Tokenizer.from_files(path)
    return None


GPT2_VOCAB_SIZE = 50257


def model_tokenizer(path, vocab_size: int):
    """The tokenizer that goes with the model in directory ``path``: its own
    files, else GPT-2's when the model has GPT-2's vocabulary size.

    ValueError when there is none, or when it has more tokens than the model."""
    tok = load_tokenizer(path)
    if tok is None:
        if vocab_size != GPT2_VOCAB_SIZE:
            raise ValueError(f"{path} holds no tokenizer (encoder.json + vocab.bpe) and its vocab_size "
                             f"{vocab_size} is not GPT-2's {GPT2_VOCAB_SIZE}")
        from gptlite.tokenizer.encoding import Tokenizer

        tok = Tokenizer.gpt2()
    if tok.n_vocab > vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tok.n_vocab} tokens but the model only {vocab_size}")
    return tok


def _model_files(model, dtype):
    """{"model.safetensors": (params, metadata), "config.json": text} for ``model``."""
    layout = model.config.layout
    tensors = {}
    for name, arr in model.params.items():
        if layout == "gpt1":
            name = _GPT2_TO_GPT1.get(name, name)
        tensors["transformer." + name] = arr
    cfg = model.config.to_hf_dict()
    if dtype is not None:
        cfg["dtype"] = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "bf16": "bfloat16"}.get(dtype, dtype)
    return tensors, json.dumps(cfg, indent=2, sort_keys=True) + "\n"


def save_model(model, path, tokenizer=None, dtype=None, metadata=None) -> Path:
    """Save ``model`` (and ``tokenizer``) into directory ``path`` in the HF layout.

    The directory is built under a temporary name next to ``path`` and then
    swapped in, so an interrupted save leaves the previous checkpoint whole.
    Files in an existing directory that we do not write (logs, plots) are kept.
    ``dtype`` ("float16" | "bfloat16" | None = as the model) sets the stored dtype.
    """
    path = Path(path)
    tensors, cfg_text = _model_files(model, dtype)
    meta = {"format": "pt", "producer": "gptlite"}
    meta.update(metadata or {})
    with staged_dir(path) as tmp:
        write_safetensors(tmp / WEIGHTS_NAME, tensors, metadata=meta, dtype=dtype)
        atomic_write_text(tmp / CONFIG_NAME, cfg_text)
        written = {WEIGHTS_NAME, CONFIG_NAME}
        if tokenizer is not None:
            tokenizer.save(tmp, format="gpt2")
            written |= {p.name for p in tmp.iterdir()}
        publish_modes(tmp, written)
        # keep what we do not write (logs, plots, an older tokenizer when none is given now)
        swap_dir(tmp, path, replaced=written | (set(_TOKENIZER_FILES) if tokenizer is not None else set()))
    return path


# --------------------------------------------------------------------------------
# from_pretrained: a local directory or a hub name, with a cache
# --------------------------------------------------------------------------------
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default"  # the model shipped in the wheel
HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-gpt")
HUB_INSTALL = "pip install 'gptlite[hub]'"
_HUB_TOKENIZER_FILES = ("vocab.json", "merges.txt")


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(f"hub model names need huggingface_hub, which is not installed: {HUB_INSTALL} "
                          "(or pass a local model directory)") from None
    return huggingface_hub


def download_model(name: str, quiet: bool = False) -> Path:
    """The local directory of hub model ``name``, downloaded once through
    huggingface_hub: its cache is transformers' (HF_HOME), downloads resume,
    HF_TOKEN reaches private repos and HF_HUB_OFFLINE=1 uses the cache only."""
    if name not in HUB_MODELS:
        raise ValueError(f"unknown model {name!r}: not a directory and not one of {', '.join(HUB_MODELS)}")
    hub = _hub()
    if quiet:
        hub.utils.disable_progress_bars()
    try:
        config = Path(hub.hf_hub_download(name, CONFIG_NAME))
        hub.hf_hub_download(name, WEIGHTS_NAME)
    except (OSError, ValueError) as exc:  # offline, not cached, HTTP errors: all OSError/ValueError subclasses
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = ("HF_HUB_OFFLINE is set and the model is not in the hub cache" if offline else
                "are you offline? Download the model directory elsewhere and pass its path instead")
        raise OSError(f"could not get {name} from the Hugging Face hub ({type(exc).__name__}): {hint}") from None
    for file in _HUB_TOKENIZER_FILES:  # nice to have; the model loads without them
        try:
            hub.hf_hub_download(name, file)
        except (OSError, ValueError):
            pass
    try:  # a proxy's error page or a cut-off file must not pass for a model
        _checked_tensors(config.parent)
    except (ValueError, OSError) as exc:
        raise OSError(f"download of {name} from the hub is not a valid model ({exc}); delete it from the hub cache "
                      f"({config.parent}) and try again") from None
    return config.parent  # the snapshot directory: every file of the revision side by side


def resolve_model_dir(name_or_path) -> Path:
    """A local model directory for ``name_or_path`` ("default": the shipped model),
    downloading hub models when needed."""
    if name_or_path is None or str(name_or_path) == "default":
        if not (DEFAULT_MODEL_DIR / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"the default model is not installed ({DEFAULT_MODEL_DIR}); "
                                    "pass a model directory or a hub name such as gpt2")
        return DEFAULT_MODEL_DIR
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if str(name_or_path) in HUB_MODELS:
        return download_model(str(name_or_path))
    if p.exists():
        raise ValueError(f"{p}: expected a model directory (config.json + {WEIGHTS_NAME}), found a file")
    raise FileNotFoundError(f"model {str(name_or_path)!r}: no such directory, and not one of {', '.join(HUB_MODELS)}")


def from_pretrained(name_or_path, device=None, dtype="float32", quantize=None):
    """A GPT from a local directory, "default" (the shipped model) or a hub name
    (gpt2, gpt2-medium, gpt2-large, gpt2-xl); ``quantize="int8"`` as load_model."""
    return load_model(resolve_model_dir(name_or_path), device=device, dtype=dtype, quantize=quantize)
