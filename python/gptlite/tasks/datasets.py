"""Dataset readers for the papers' tasks: JSONL / CSV records with line numbers.

Every reader returns ``Record`` objects that remember where they came from, so
a problem found later (a label outside the label set, a choice index out of
range) can still be reported as ``file:line``.  Malformed lines are errors;
with ``skip_bad=True`` they are skipped and counted instead (the caller reports
the count).  An input with no usable record is always an error.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from gptlite.fileio import read_utf8


class DatasetError(ValueError):
    """A problem with an input file, message prefixed with ``path:line``."""


@dataclass
class Record:
    data: dict
    line: int  # 1-based line number in the file (CSV: the line the row starts on)


@dataclass
class Dataset:
    path: str
    records: list[Record]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason) of skipped bad lines

    def __len__(self) -> int:
        return len(self.records)


# A field spec: name -> check(value) returning an error string or None.
def _is_str(v):
    return None if isinstance(v, str) else f"expected a string, got {type(v).__name__}"


def _is_str_list(v):
    if not isinstance(v, list) or not v:
        return "expected a non-empty list of strings"
    if not all(isinstance(c, str) for c in v):
        return "expected a list of strings"
    return None


def _is_label(v):
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        return f"expected an int or string label, got {type(v).__name__}"
    return None


def _is_int(v):
    if isinstance(v, bool) or not isinstance(v, int):
        return f"expected an integer, got {v!r}"
    return None


def _check(obj, schema: dict, optional: dict) -> str | None:
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for key, check in schema.items():
        if key not in obj:
            return f"missing key {key!r}"
        err = check(obj[key])
        if err:
            return f"key {key!r}: {err}"
    for key, check in optional.items():
        if key in obj and obj[key] is not None:
            err = check(obj[key])
            if err:
                return f"key {key!r}: {err}"
    return None


def _dataset(path: Path, rows, schema: dict, optional: dict | None, skip_bad: bool) -> Dataset:
    """Check each (line number, object or parse error) of a file into a Dataset."""
    records, skipped = [], []
    for lineno, obj, err in rows:
        if err is None:
            err = _check(obj, schema, optional or {})
        if err:
            if not skip_bad:
                raise DatasetError(f"{path}:{lineno}: {err} (use --skip-bad / skip_bad=True to skip bad lines)")
            skipped.append((lineno, err))
            continue
        records.append(Record(obj, lineno))
    if not records:
        what = "is empty" if not skipped else f"has no valid record ({len(skipped)} bad lines skipped)"
        raise DatasetError(f"{path} {what}: nothing to evaluate")
    return Dataset(str(path), records, skipped)


def read_jsonl(path, schema: dict, optional: dict | None = None, skip_bad: bool = False) -> Dataset:
    """Read one JSON object per line; blank lines are ignored."""
    path = Path(path)

    def rows(f):
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, None, f"not valid UTF-8 (byte {exc.start} of the line)"
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield lineno, None, f"malformed JSON ({exc.msg} at column {exc.colno})"

    with open(path, "rb") as f:
        return _dataset(path, rows(f), schema, optional, skip_bad)


def read_csv(path, schema: dict, optional: dict | None = None, skip_bad: bool = False) -> Dataset:
    """Read a CSV file with a header row.

    Cells are strings; a ``label`` that looks like an integer becomes an int,
    and ``choices`` is assembled from ``choice_0, choice_1, ...`` columns (or a
    ``choices`` column holding a JSON list).
    """
    path = Path(path)

    def rows(reader, choice_cols):
        start = 2  # line the next row starts on (header is line 1)
        for row in reader:
            lineno, start = start, reader.line_num + 1
            try:
                if None in row:
                    raise ValueError(f"{len(row[None])} more cells than header columns")
                if any(v is None for v in row.values()):
                    raise ValueError("fewer cells than header columns")
                obj = dict(row)
                if choice_cols:
                    obj["choices"] = [obj.pop(c) for c in choice_cols if obj.get(c, "") != ""]
                elif isinstance(obj.get("choices"), str):
                    obj["choices"] = json.loads(obj["choices"])
                lab = obj.get("label")
                if isinstance(lab, str) and lab.strip().lstrip("-").isdigit():
                    obj["label"] = int(lab)
            except (ValueError, json.JSONDecodeError) as exc:
                yield lineno, None, str(exc)
                continue
            yield lineno, obj, None

    with io.StringIO(read_utf8(path), newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise DatasetError(f"{path} is empty: nothing to evaluate")
        choice_cols = sorted((c for c in reader.fieldnames if c.startswith("choice_") and c[7:].isdigit()), key=lambda c: int(c[7:]))
        return _dataset(path, rows(reader, choice_cols), schema, optional, skip_bad)


def read_records(path, schema: dict, optional: dict | None = None, skip_bad: bool = False) -> Dataset:
    """JSONL or CSV, chosen by extension (.csv / .tsv is CSV; anything else JSONL)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file")
    if str(path).lower().endswith(".csv"):
        return read_csv(path, schema, optional, skip_bad)
    return read_jsonl(path, schema, optional, skip_bad)


# Schemas of the evaluation / fine-tuning inputs.
LAMBADA_SCHEMA = {"text": _is_str}
CHOICE_SCHEMA = {"context": _is_str, "choices": _is_str_list}
CHOICE_OPTIONAL = {"label": _is_int}

FINETUNE_SCHEMAS = {
    "classification": {"text": _is_str, "label": _is_label},
    "entailment": {"premise": _is_str, "hypothesis": _is_str, "label": _is_label},
    "similarity": {"text_a": _is_str, "text_b": _is_str, "label": _is_label},
    "choice": {"context": _is_str, "choices": _is_str_list, "label": _is_int},
}


def read_lambada(path, skip_bad: bool = False) -> Dataset:
    """LAMBADA jsonl: ``{"text": ...}``; the target is the last space-separated word."""
    ds = read_jsonl(path, LAMBADA_SCHEMA, skip_bad=skip_bad)
    return _keep_valid(ds, path, skip_bad, lambda d: None if " " in d["text"].strip()
                       else "text has no space: cannot split off a last word")


def _keep_valid(ds: Dataset, path, skip_bad: bool, problem) -> Dataset:
    """Drop records for which ``problem(data)`` names an error (or raise on the
    first one unless skip_bad); an evaluation needs at least one record left."""
    good = []
    for r in ds.records:
        err = problem(r.data)
        if err is not None:
            if not skip_bad:
                raise DatasetError(f"{path}:{r.line}: {err}")
            ds.skipped.append((r.line, err))
            continue
        good.append(r)
    if not good:
        raise DatasetError(f"{path} has no valid record: nothing to evaluate")
    ds.records = good
    return ds


def read_choice(path, skip_bad: bool = False) -> Dataset:
    """Multiple choice: ``{"context": str, "choices": [str, ...], "label": int (optional)}``."""
    ds = read_records(path, CHOICE_SCHEMA, CHOICE_OPTIONAL, skip_bad=skip_bad)

    def problem(d):
        lab = d.get("label")
        if lab is not None and not (0 <= lab < len(d["choices"])):
            return f"label {lab} out of range for {len(d['choices'])} choices"
        return None

    return _keep_valid(ds, path, skip_bad, problem)
