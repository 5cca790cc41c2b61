"""Defaults shared by the Python API and the CLI (no heavy imports: the CLI's parser reads them)."""

# sampling: generate(), GPT.generate and `gptlite generate`
DEFAULT_TEMPERATURE = 0.8
DEFAULT_MAX_NEW_TOKENS = 100
