"""Record loaders: JSONL, Parquet, Hugging Face `datasets` from local files, tensorflow-datasets from a data_dir.

Every loader returns a list of records {"prompt": str, "completion": str, "answer": str} restricted to the fields
the `RecordFormat` asks for, read from configurable keys. A malformed record (bad JSON, missing key, wrong type)
raises a one-line ValueError naming the file and line or row, or with `on_error="skip"` is skipped and counted in a
warning at the end; nothing is dropped silently.
"""

import dataclasses
import json
import os
import pathlib
import warnings
from typing import Any, Iterable, Iterator

from jaxpost.errors import JaxpostError

ON_ERROR = ("raise", "skip")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecordFormat:
  """Source keys of the record fields (None: field not wanted) and what to do with malformed records."""

  prompt_key: str = "prompt"
  completion_key: str | None = "completion"
  answer_key: str | None = None
  on_error: str = "raise"

  def __post_init__(self):
    if self.on_error not in ON_ERROR:
      raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
    if not self.prompt_key:
      raise ValueError("prompt_key must be a non-empty string")

  def fields(self) -> dict[str, str]:
    """Output field name -> source key."""
    keys = {"prompt": self.prompt_key, "completion": self.completion_key, "answer": self.answer_key}
    return {name: key for name, key in keys.items() if key is not None}


class _BadRecord(Exception):
  pass


def _as_text(value: Any, key: str, allow_number: bool) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, str):
    return value
  if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  raise _BadRecord(f"key {key!r} must be a string, got {type(value).__name__}")


def _record(raw: Any, fmt: RecordFormat) -> dict[str, str]:
  if not isinstance(raw, dict):
    raise _BadRecord(f"expected an object, got {type(raw).__name__}")
  out = {}
  for name, key in fmt.fields().items():
    if key not in raw:
      raise _BadRecord(f"missing key {key!r}")
    out[name] = _as_text(raw[key], key, allow_number=name == "answer")
  return out


def _collect(rows: Iterable[tuple[str, Any]], fmt: RecordFormat, source: str) -> list[dict[str, str]]:
  """Validates (location, raw record) pairs; raw may be a `_BadRecord` raised while reading."""
  records, skipped, first = [], 0, ""
  for where, raw in rows:
    try:
      if isinstance(raw, _BadRecord):
        raise raw
      records.append({**_record(raw, fmt), "source": where})
    except _BadRecord as e:
      if fmt.on_error == "raise":
        raise ValueError(f"{where}: {e}") from None
      skipped, first = skipped + 1, first or f"{where}: {e}"
  if skipped:
    warnings.warn(f"{source}: skipped {skipped} malformed records of {skipped + len(records)} (first: {first})",
                  stacklevel=3)
  if not records:
    raise JaxpostError(f"{source}: no records" + (f" (all {skipped} malformed; first: {first})" if skipped else ""))
  return records


def _jsonl_rows(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
  with open(path, "rb") as f:
    for lineno, raw_line in enumerate(f, start=1):
      try:
        line = raw_line.decode("utf-8")
      except UnicodeDecodeError as e:
        raise JaxpostError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line)") from None
      if not line.strip():
        continue  # Blank lines hold no record.
      try:
        yield f"{path}:{lineno}", json.loads(line)
      except json.JSONDecodeError as e:
        yield f"{path}:{lineno}", _BadRecord(f"invalid JSON ({e.msg} at column {e.colno})")


def load_jsonl(path: str | os.PathLike, fmt: RecordFormat = RecordFormat()) -> list[dict[str, str]]:
  """One JSON object per line."""
  return _collect(_jsonl_rows(pathlib.Path(path)), fmt, str(path))


def _table_rows(rows: Iterable[Any], source: str) -> Iterator[tuple[str, Any]]:
  for i, row in enumerate(rows):
    yield f"{source}: row {i}", row


def load_parquet(path: str | os.PathLike, fmt: RecordFormat = RecordFormat()) -> list[dict[str, str]]:
  """A Parquet file, one record per row."""
  import pyarrow.parquet as pq

  return _collect(_table_rows(pq.read_table(path).to_pylist(), str(path)), fmt, str(path))


def load_hf_dataset(path: str | os.PathLike, fmt: RecordFormat = RecordFormat(), *, split: str = "train",
                    cache_dir: str | None = None) -> list[dict[str, str]]:
  """Hugging Face `datasets` from local files: a `save_to_disk` directory, or JSON/JSONL/Parquet file(s)."""
  import datasets

  path = pathlib.Path(path)
  if path.is_dir():
    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
      dataset = dataset[split]
  else:
    kinds = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
    if path.suffix not in kinds:
      raise ValueError(f"{path}: unsupported file type {path.suffix!r} (expected one of {sorted(kinds)})")
    dataset = datasets.load_dataset(kinds[path.suffix], data_files=str(path), split=split, cache_dir=cache_dir)
  return _collect(_table_rows(dataset, str(path)), fmt, str(path))


def load_tfds(name: str, *, data_dir: str | os.PathLike, split: str = "train",
              fmt: RecordFormat = RecordFormat()) -> list[dict[str, str]]:
  """A tensorflow-datasets dataset prepared in `data_dir` (array_record format; no TensorFlow needed)."""
  import tensorflow_datasets as tfds

  source = tfds.data_source(name, data_dir=str(data_dir), split=split, download=False)
  where = f"tfds {name}/{split} in {data_dir}"
  return _collect(_table_rows((source[i] for i in range(len(source))), where), fmt, where)


def load_records(path: str | os.PathLike, fmt: RecordFormat = RecordFormat()) -> list[dict[str, str]]:
  """Picks the loader from the path: .jsonl / .parquet files, or a `datasets.save_to_disk` directory."""
  path = pathlib.Path(path)
  if path.suffix == ".jsonl":
    return load_jsonl(path, fmt)
  if path.suffix == ".parquet":
    return load_parquet(path, fmt)
  if path.is_dir():
    return load_hf_dataset(path, fmt)
  raise ValueError(f"{path}: cannot tell the format (expected .jsonl, .parquet or a datasets directory)")
