"""The pre-training config: one dataclass with the engine's model config nested.

``TrainConfig.model`` is a :class:`ModelConfig`, the engine's ``GPTConfig``
with the training defaults, so every model field (``activation_function``
and ``layer_norm_epsilon`` included, and any field GPTConfig gains) is a key
of the TOML ``[model]`` table and of ``--set model.KEY=...``. Two values
mean "decide later": ``vocab_size = 0`` is the data's tokenizer size and
``n_inner = 0`` is 4 * n_embd (GPTConfig's None; TOML has no null).
:meth:`ModelConfig.resolve` gives the engine's GPTConfig.

A config is built whole, then judged: construction never raises, and
``TrainConfig.validate()`` checks everything (the model through GPTConfig's
own checks), each problem a one-line ValueError ``config: ...``.

Flat model keys stay accepted: ``TrainConfig(n_layer=2)``, a top-level
``n_layer = 2`` in TOML and ``--set n_layer=2`` all set ``model.n_layer``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from gptlite.engine.model import GPTConfig
from gptlite.training import optim


@dataclass
class ModelConfig(GPTConfig):
    """GPTConfig as a training config holds it (see the module docstring)."""

    vocab_size: int = 0  # 0: the data's tokenizer size
    n_positions: int = 256
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4

    def __post_init__(self):
        # checked by TrainConfig.validate() through resolve(), not here: a config is read whole first
        if self.n_inner == 0:
            self.n_inner = None

    def resolve(self, n_vocab: int) -> GPTConfig:
        """The engine's config, ``vocab_size`` 0 replaced by ``n_vocab``; GPTConfig's checks apply."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(GPTConfig)}
        d["vocab_size"] = self.vocab_size or n_vocab
        try:
            return GPTConfig(**d)
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith("config: ") else f"config: {msg}") from None


MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))


@dataclass
class TrainConfig:
    # [run]
    out_dir: str = "runs/default"
    device: str = "auto"  # "cpu" | "cuda" | "auto" (cuda when CuPy sees a GPU)
    dtype: str = "float32"
    seed: int = 1337
    init_from: str = "scratch"  # "scratch" or a model directory to continue from
    # [data]
    data_dir: str = ""
    # [model]: every field of the engine's GPTConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    # [train]
    batch_size: int = 8  # sequences per micro-batch
    block_size: int = 256  # context length of training windows
    batch_tokens: int = 0  # tokens per optimizer step; 0: one micro-batch (no accumulation)
    max_steps: int = 1000
    eval_interval: int = 100
    eval_batches: int = 20
    log_interval: int = 10
    ckpt_interval: int = 500
    ckpt_minutes: float = 0.0  # also checkpoint when this much wall time passed since the last one; 0: off
    max_bad_steps: int = 5  # consecutive non-finite steps before stopping
    peak_flops: float = 0.0  # FLOP/s of the device, for MFU; 0: MFU not reported
    progress: bool = True
    # [optim]
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0: no clipping
    tf32: bool = True  # float32 matmuls on TF32 tensor cores on the GPU (ignored on the CPU)

    @property
    def grad_accum(self) -> int:
        per_micro = self.batch_size * self.block_size
        return 1 if not self.batch_tokens else self.batch_tokens // per_micro

    def validate(self) -> None:
        def need(cond, msg):
            if not cond:
                raise ValueError(f"config: {msg}")

        m = self.model
        need(self.device in ("cpu", "cuda", "auto"), f"device must be cpu, cuda or auto, got {self.device!r}")
        need(self.dtype in ("float32", "float64", "bfloat16"), f"dtype must be float32, float64 or bfloat16, got {self.dtype!r}")
        need(self.dtype != "bfloat16" or self.device != "cpu",
             "dtype bfloat16 is mixed precision on the GPU (bf16 tensor-core matmuls, float32 weights): "
             "set device = cuda, or dtype = float32 on the CPU")
        need(m.layout in ("gpt2", "gpt1"), f"layout must be gpt2 or gpt1, got {m.layout!r}")
        for k in ("n_layer", "n_head", "n_embd", "n_positions"):
            v = getattr(m, k)
            need(not isinstance(v, (int, float)) or v >= 1, f"{k} must be >= 1, got {v}")
        for k in ("vocab_size", "n_inner"):
            v = getattr(m, k)
            need(v is None or not isinstance(v, (int, float)) or v >= 0, f"{k} must be >= 0, got {v}")
        m.resolve(1)  # the rest of the model: GPTConfig's checks (types, upper bounds, activation, epsilon)
        for k in ("batch_size", "block_size", "max_steps", "eval_interval", "log_interval", "ckpt_interval", "max_bad_steps"):
            need(getattr(self, k) >= 1, f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("batch_tokens", "eval_batches", "warmup_steps"):
            need(getattr(self, k) >= 0, f"{k} must be >= 0, got {getattr(self, k)}")
        need(self.block_size <= m.n_positions,
             f"block_size={self.block_size} is longer than the model's n_positions={m.n_positions}")
        per_micro = self.batch_size * self.block_size
        need(self.batch_tokens % per_micro == 0,
             f"batch_tokens={self.batch_tokens} is not a multiple of batch_size*block_size={per_micro}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr], got {self.min_lr}")
        need(self.schedule in optim.Schedule.KINDS, f"schedule must be one of {', '.join(optim.Schedule.KINDS)}, got {self.schedule!r}")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, f"beta1/beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        need(self.eps > 0, f"eps must be > 0, got {self.eps}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        need(self.peak_flops >= 0, f"peak_flops must be >= 0, got {self.peak_flops}")
        need(math.isfinite(self.ckpt_minutes) and self.ckpt_minutes >= 0, f"ckpt_minutes must be >= 0, got {self.ckpt_minutes}")
        need(bool(self.data_dir), "data.data_dir is not set: point it at a `gptlite prepare` output directory")

    def flat(self) -> dict:
        """Every key with its value, the model's keys at the top level (what TOML sections and --set address)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        d.update({k: getattr(self.model, k) for k in MODEL_KEYS})
        return d


_dataclass_init = TrainConfig.__init__


def _init(self, *args, **kw):
    """The dataclass's __init__, also taking ``model`` as a dict (``asdict``'s
    output, a saved config) and the model's keys flat."""
    model = kw.pop("model", None)
    if isinstance(model, dict):
        model = ModelConfig(**model)
    flat = {k: kw.pop(k) for k in MODEL_KEYS if k in kw}
    if flat:
        model = dataclasses.replace(model or ModelConfig(), **flat)
    _dataclass_init(self, *args, model=model if model is not None else ModelConfig(), **kw)


_init.__doc__ = _dataclass_init.__doc__
TrainConfig.__init__ = _init

# TOML sections group the fields; keys are the field names.
SECTIONS = {
    "run": ("out_dir", "device", "dtype", "seed", "init_from"),
    "data": ("data_dir",),
    "model": MODEL_KEYS,
    "train": ("batch_size", "block_size", "batch_tokens", "max_steps", "eval_interval", "eval_batches",
              "log_interval", "ckpt_interval", "ckpt_minutes", "max_bad_steps", "peak_flops", "progress"),
    "optim": ("lr", "min_lr", "warmup_steps", "schedule", "weight_decay", "beta1", "beta2", "eps", "grad_clip", "tf32"),
}
_DEFAULTS = TrainConfig().flat()
assert sorted(k for ks in SECTIONS.values() for k in ks) == sorted(_DEFAULTS)


def _coerce(key: str, value, where: str):
    """Check/convert a value to the field's type (TOML ints are fine for floats)."""
    default = _DEFAULTS[key]
    typ = int if default is None else type(default)  # n_inner: None (TOML: 0) = 4 * n_embd
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{where}: {key} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _toml_loads(text: str, where: str) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - older Pythons
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise RuntimeError("reading TOML configs needs Python 3.11+ or the tomli package: "
                               "pip install 'gptlite[toml]'") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: invalid TOML: {exc}") from None


def config_from_dict(d: dict, where: str = "config", base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from ``{section: {key: value}}`` (or flat keys); unknown keys are errors."""
    values = base.flat() if base is not None else {}
    for sec, body in d.items():
        if isinstance(body, dict):
            if sec not in SECTIONS:
                raise ValueError(f"{where}: unknown section [{sec}] (known: {', '.join(SECTIONS)})")
            for k, v in body.items():
                if k not in SECTIONS[sec]:
                    raise ValueError(f"{where}: unknown key {k!r} in [{sec}] (known: {', '.join(SECTIONS[sec])})")
                values[k] = _coerce(k, v, where)
        else:
            if sec not in _DEFAULTS:
                raise ValueError(f"{where}: unknown key {sec!r}")
            values[sec] = _coerce(sec, body, where)
    return TrainConfig(**values)


PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"  # shipped in the wheel


def presets() -> list[str]:
    """Names of the shipped configs (``gptlite train --config tiny``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_config(path, overrides=()) -> TrainConfig:
    """Read a TOML config (a file, or a shipped preset's name such as "tiny")
    and apply ``key=value`` overrides (``optim.lr=3e-4`` or ``lr=3e-4``)."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1 and (PRESETS_DIR / f"{path}.toml").is_file():
        path = PRESETS_DIR / f"{path}.toml"
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path} (presets: {', '.join(presets())})")
    cfg = config_from_dict(_toml_loads(path.read_text(encoding="utf-8"), str(path)), str(path))
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: TrainConfig, overrides) -> TrainConfig:
    values = cfg.flat()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if "." in key:
            sec, k = key.split(".", 1)
            if sec not in SECTIONS or k not in SECTIONS[sec]:
                raise ValueError(f"--set: unknown key {key!r}")
            key = k
        elif key not in _DEFAULTS:
            raise ValueError(f"--set: unknown key {key!r}")
        try:  # a TOML value (number, bool, quoted string) ...
            value = _toml_loads(f"v = {raw}", f"--set {key}")["v"]
        except ValueError:  # ... or a bare string
            value = raw
        values[key] = _coerce(key, value, f"--set {key}")
    return TrainConfig(**values)
